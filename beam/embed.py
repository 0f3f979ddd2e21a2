"""Candidate embeddings for the index with ``apache_beam.ml.inference.RunInference``.

The model is the exported candidate-tower SavedModel (``semrec.export.export_candidate_tower``: flat item
features -> ``embedding`` [B, d]); ``SavedModelHandler`` is a Beam ``ModelHandler`` that loads it once per
worker and calls its serving signature on batches of item-feature rows. The result equals
``semrec.towers.embed_candidates`` on the same model (same graph, float32).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from semrec.beam.inprocess import call_signature, write_embeddings
from semrec.beam.options import make_pipeline


class SavedModelHandler(ModelHandler[Dict[str, np.ndarray], PredictionResult, Any]):
  """RunInference handler for a SavedModel signature over dicts of per-example features.

  Args:
    model_dir: SavedModel directory (a TF Serving version directory, e.g. ``.../candidate_tower/1``).
    signature: Signature name.
    output: Output key of the signature to return (e.g. "embedding").
    min_batch_size, max_batch_size: Beam's batching of examples per model call.
  """

  def __init__(self, model_dir: str, signature: str = "serving_default", output: str = "embedding",
               min_batch_size: int = 1, max_batch_size: int = 1024):
    super().__init__()
    self.model_dir, self.signature, self.output = model_dir, signature, output
    self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

  def load_model(self):
    import tensorflow as tf
    loaded = tf.saved_model.load(self.model_dir)
    if self.signature not in loaded.signatures:
      raise ValueError(f"{self.model_dir}: no signature {self.signature!r} (has {sorted(loaded.signatures)})")
    return loaded

  def run_inference(self, batch: Sequence[Dict[str, np.ndarray]], model, inference_args=None
                    ) -> Iterable[PredictionResult]:
    rows = {k: np.stack([ex[k] for ex in batch]) for k in batch[0]}
    out = call_signature(model.signatures[self.signature], rows, self.model_dir, self.output)
    return [PredictionResult(ex, out[i]) for i, ex in enumerate(batch)]

  def batch_elements_kwargs(self) -> Mapping[str, Any]:
    return self._batch


def _write(results, item_ids, out_path: str):
  rows = dict(results)
  if sorted(rows) != list(range(len(item_ids))):
    raise ValueError(f"RunInference returned {len(rows)} of {len(item_ids)} rows")
  write_embeddings(out_path, item_ids, np.stack([np.asarray(rows[i].inference) for i in range(len(item_ids))]))


def embed_pipeline(model_dir: str, item_ids, features: Mapping[str, np.ndarray], out_path: str,
                   signature: str = "serving_default", output: str = "embedding", max_batch_size: int = 1024,
                   runner: str = "direct", num_workers: int = 1, beam_options: Optional[Sequence[str]] = None
                   ) -> np.ndarray:
  """[N, d] float32 embeddings of N items (input order) through the SavedModel, with RunInference.

  Args:
    model_dir: The candidate-tower SavedModel version directory.
    item_ids: [N] item ids (stored with the result).
    features: {flat feature name: [N, ...] array}, the signature's inputs (e.g. item_id, sid, content).
    out_path: ``.npz`` written atomically with ``item_ids`` and ``embeddings`` (shared by the workers).
    runner, num_workers, beam_options: see ``semrec.beam.make_pipeline``.
  """
  ids = [str(i) for i in item_ids]
  feats = {k: np.asarray(v) for k, v in features.items()}
  bad = [k for k, v in feats.items() if len(v) != len(ids)]
  if bad:
    raise ValueError(f"features {bad} do not have one row per item ({len(ids)} items)")
  rows = [(i, {k: v[i] for k, v in feats.items()}) for i in range(len(ids))]
  handler = KeyedModelHandler(SavedModelHandler(model_dir, signature, output, max_batch_size=max_batch_size))
  with make_pipeline(runner, num_workers, beam_options) as p:
    _ = (p | "rows" >> beam.Create(rows) | "spread" >> beam.Reshuffle()
         | "infer" >> RunInference(handler)
         | "gather" >> beam.combiners.ToList()
         | "write" >> beam.Map(_write, ids, out_path))
  with np.load(out_path, allow_pickle=False) as f:
    return f["embeddings"]
