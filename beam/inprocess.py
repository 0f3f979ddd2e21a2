"""Pieces the Beam pipelines share with their in-process (``--runner inprocess``) path; no Beam import."""
from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np

from semrec.atomic import save_npz


def cluster_layers(centroids: Optional[Mapping[str, np.ndarray]]) -> dict:
  """{name: [k, D] centroids} -> {name: ``ClusterIdLayer``} (named as ``fit_cluster_granularities`` names them)."""
  from semrec.sid.kmeans import ClusterIdLayer
  return {k: ClusterIdLayer(np.asarray(v, np.float32), name=f"cluster_id_{k}") for k, v in (centroids or {}).items()}


def call_signature(fn, rows: Mapping[str, np.ndarray], model_dir: str = "", output: str = "embedding") -> np.ndarray:
  """Runs a SavedModel signature ``fn`` on a batch {input name: [B, ...] array} -> the ``output`` array [B, ...].

  Raises:
    KeyError: a signature input missing from ``rows`` (named).
    ExportError: the model's in-graph input checks refused the batch (NaN/inf values, a wrong width or
      length), naming the input.
  """
  import tensorflow as tf
  from semrec.export import ExportError, refused_request_message
  specs = fn.structured_input_signature[1]
  missing = [k for k in specs if k not in rows]
  if missing:
    raise KeyError(f"{model_dir}: the signature needs features {missing}, got {sorted(rows)}")
  try:
    return fn(**{k: tf.constant(np.asarray(rows[k]), dtype=specs[k].dtype) for k in specs})[output].numpy()
  except tf.errors.InvalidArgumentError as e:
    raise ExportError(f"{model_dir}: the model refused the input features: {refused_request_message(e)}") from e


def write_embeddings(path: str, item_ids, embeddings: np.ndarray):
  """Writes ``{item_ids, embeddings}`` .npz atomically; refuses NaN/inf rows (naming the first item), so a model
  exported without input checks cannot leave NaN embeddings behind."""
  emb = np.asarray(embeddings, np.float32)
  bad = ~np.isfinite(emb.reshape(len(emb), -1)).all(axis=1)
  if bad.any():
    raise ValueError(f"{path}: the embedding of item {str(list(item_ids)[int(np.argmax(bad))])!r} has NaN/inf "
                     f"values ({int(bad.sum())} of {len(emb)} rows); nothing was written")
  save_npz(path, item_ids=np.asarray([str(i) for i in item_ids], dtype=str),
           embeddings=np.asarray(embeddings, np.float32))


def embed_in_process(model_dir: str, item_ids, features: Mapping[str, np.ndarray], out_path: str,
                     signature: str = "serving_default", output: str = "embedding", batch_size: int = 1024
                     ) -> np.ndarray:
  """The in-process path of ``embed_pipeline``: the same SavedModel signature over batches of rows."""
  import tensorflow as tf
  fn = tf.saved_model.load(model_dir).signatures[signature]
  n = len(item_ids)
  out = [call_signature(fn, {k: v[s:s + batch_size] for k, v in features.items()}, model_dir, output)
         for s in range(0, n, batch_size)]
  emb = np.concatenate(out)
  write_embeddings(out_path, item_ids, emb)
  return emb
