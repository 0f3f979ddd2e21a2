"""The end-to-end job (`semrec run`): one config, stages in data-flow order, a resumable run directory.

- :mod:`semrec.pipeline.config`: :class:`RunConfig` and its per-stage sections.
- :mod:`semrec.pipeline.run`: the run directory (:class:`Run`), ``_DONE.json`` records, stale-config
  detection, :func:`run_stages` / :func:`run_all`.
- :mod:`semrec.pipeline.stages`: one module per stage and the registry (``STAGES``, ``STAGE_ORDER``).
- :mod:`semrec.pipeline.artefacts`: what earlier stages wrote, read back (embeddings, SID table, item features).
- :mod:`semrec.pipeline.report`: ``metrics.json``, ``report.md``, the console table and plots.
"""
from semrec.pipeline.artefacts import cluster_ids, export_dir, item_features, load_embeddings, load_sid_table
from semrec.pipeline.config import (DataConfig, EffectiveConfig, EncoderStageConfig, ExportStageConfig,
                                    RankingStageConfig, RetrievalStageConfig, RunConfig, SidStageConfig,
                                    SyntheticWorldConfig, build_run_config, load_dataset)
from semrec.pipeline.report import write_report
from semrec.pipeline.run import Run, preflight, run_all, run_stages, write_config
from semrec.pipeline.stages import STAGE_ORDER, STAGES

__all__ = [
    "DataConfig", "EffectiveConfig", "EncoderStageConfig", "ExportStageConfig", "RankingStageConfig",
    "RetrievalStageConfig", "Run", "RunConfig", "STAGES", "STAGE_ORDER", "SidStageConfig", "SyntheticWorldConfig",
    "build_run_config", "cluster_ids", "export_dir", "item_features", "load_dataset", "load_embeddings",
    "load_sid_table", "preflight", "run_all", "run_stages", "write_config", "write_report",
]
