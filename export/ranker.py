"""Exporting a ranker for TF Serving (the one ``export_ranker``).

A ``semrec.ranking.Ranker`` is wrapped in the ranking package's serving module
(``semrec.ranking.RankerServingModule``: flat raw features, in-graph input checks, one-user broadcast);
export imports ranking, never the reverse. Any other ``tf.Module`` with a ``serve`` tf.function is exported
as is, and any other Keras model is wrapped in a ``KerasServingModule`` (called on the feature dict).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from semrec.config import to_dict
from semrec.export import serving_layout as sl
from semrec.export.serving_module import ExampleInputs, ExportResult, export_keras_module, export_serving_module


def export_ranker(base_dir: str, ranker, example_features: ExampleInputs, *, name: str = "ranker",
                  output_names: Optional[Sequence[str]] = None, **kwargs) -> ExportResult:
  """Writes a ranker as ``<base_dir>/<name>/<next integer version>/`` for TF Serving.

  The version appears atomically, an existing version is never modified,
  ``assets.extra/tf_serving_warmup_requests`` holds PredictionLog warm-up records, and a manifest records
  inputs, outputs, library versions, metrics and file hashes.

  Args:
    base_dir: Export base directory.
    ranker: A trained ``semrec.ranking.Ranker``, a serving module, or a Keras model.
    example_features: Warm-up batch(es) of raw serving features. For a semrec Ranker, one dict in the
      serving format (e.g. ``RankingFeaturizer.features(examples)``); a one-user request (the first row's
      user-side features broadcast over all candidates) is added to the warm-up requests.
    name: TF Serving model name.
    output_names: For a Keras model returning a tensor or tuple.
    **kwargs: ``metrics``, ``data_fingerprint``, ``extra``, ... (for a semrec Ranker also ``sid_length``,
      ``codebook_size``, ``content_dim``: L, K, D, by default from its item-representation config, and
      ``item_cache``: a catalogue ``{"item_id": [N], "sid": [N, L]}`` whose item vectors are precomputed in
      the SavedModel, see ``semrec.ranking.ItemVectorCache``).

  Returns:
    :class:`ExportResult` (``.path`` is the version directory).
  """
  from semrec.ranking import Ranker
  if isinstance(ranker, Ranker):
    return _export_semrec_ranker(base_dir, ranker, example_features, name=name, **kwargs)
  kwargs.setdefault("artefact", "ranker")
  if isinstance(ranker, tf.Module) and hasattr(getattr(ranker, "serve", None), "get_concrete_function"):
    return export_serving_module(ranker, base_dir, name, example_features, **kwargs)
  kwargs.setdefault("description", "raw features -> ranking scores")
  return export_keras_module(ranker, base_dir, name, example_features, output_names=output_names, **kwargs)


def _export_semrec_ranker(base_dir: str, model, example_features: Mapping[str, np.ndarray], name: str,
                          sid_length: Optional[int] = None, codebook_size: Optional[int] = None,
                          content_dim: Optional[int] = None, item_cache: Optional[Mapping[str, np.ndarray]] = None,
                          metrics: Optional[dict] = None,
                          data_fingerprint: Optional[str] = None, extra: Optional[dict] = None) -> ExportResult:
  from semrec.ranking import RankerServingModule
  if not isinstance(example_features, Mapping):
    raise sl.ExportError(f"model {name!r}: a semrec Ranker export takes one dict of example features")
  rep = model.config.item_representation
  L = int(sid_length or getattr(rep, "num_levels"))
  K = int(codebook_size or getattr(rep, "codebook_size"))
  D = content_dim or (getattr(rep, "content_dim", None) if model.uses_content else None)
  module = RankerServingModule(model, L, K, content_dim=D, item_cache=item_cache)
  req = {k: np.asarray(v) for k, v in example_features.items() if k in module.input_specs}
  missing = sorted(set(module.input_specs) - set(req))
  if missing:
    raise ValueError(f"export_ranker: example_features lack serving inputs {missing}")
  one_user = {k: (v[:1] if not k.startswith("candidate_") else v) for k, v in req.items()}
  info = {"tasks": list(model.config.tasks), "sid_length": L, "codebook_size": K,
          "ranker_config": to_dict(model.config),
          "item_cache_items": module.item_cache.size if module.item_cache is not None else 0, **dict(extra or {})}
  return export_serving_module(module, base_dir, name, [req, one_user], artefact="ranker",
                               data_fingerprint=data_fingerprint, metrics=metrics,
                               description="SID ranker: raw item ids + SID codes -> task probabilities",
                               extra=info, needs_scann_ops=False)
