"""Apache Beam drivers of semrec's batch jobs (the ``[beam]`` extra); the in-process path needs no Beam.

Each pipeline calls the same per-shard functions as the in-process driver, so its output equals it:
  ``encode_pipeline``      -> ``encoders.encode_shard`` (same store files and manifest as ``encode_corpus``)
  ``assign_pipeline``      -> ``sid.assign_shard`` (same codes files and SID table as ``assign_sids``)
  ``embed_pipeline``       -> ``RunInference`` over the exported candidate-tower SavedModel
  ``refine_kmeans_pipeline`` -> ``sid.lloyd_statistics`` in a ``CombineFn`` (full-data Lloyd passes)
  ``fit_rqkmeans_pipeline`` -> RQ-KMeans level by level (sample fit + Lloyd combines per level) = ``train_sid_model``
Runner selection: ``make_pipeline(runner, num_workers, beam_options)`` (see ``semrec.beam.options``).

Importing ``semrec.beam`` does not import Beam; the pipelines import it on first use.
"""
from semrec.beam.options import RUNNERS, check_runner, make_pipeline, parse_beam_options, require_beam

_LAZY = {
    "encode_pipeline": "semrec.beam.encode", "EncodeShardFn": "semrec.beam.encode",
    "assign_pipeline": "semrec.beam.assign", "AssignShardFn": "semrec.beam.assign",
    "read_store_rows": "semrec.beam.assign",
    "embed_pipeline": "semrec.beam.embed", "SavedModelHandler": "semrec.beam.embed",
    "refine_kmeans_pipeline": "semrec.beam.kmeans", "LloydCombineFn": "semrec.beam.kmeans",
    "fit_kmeans_pipeline": "semrec.beam.kmeans",
    "fit_rqkmeans_pipeline": "semrec.beam.rqkmeans", "rqkmeans_assigner": "semrec.beam.rqkmeans",
    "level_residuals": "semrec.beam.rqkmeans",
}

__all__ = ["RUNNERS", "check_runner", "make_pipeline", "parse_beam_options", "require_beam"] + sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    require_beam()
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'semrec.beam' has no attribute {name!r}")
