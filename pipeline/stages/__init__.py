"""The stages of `semrec run`, one module each, and their registry.

Each stage is a function ``stage_<name>(run) -> dict`` that wires the run's config to library calls and
returns the metrics recorded in ``<run_dir>/<stage>/_DONE.json``.
"""
from __future__ import annotations

from typing import Optional

from semrec.pipeline.stages.encode import stage_encode
from semrec.pipeline.stages.export import stage_export
from semrec.pipeline.stages.index import stage_index
from semrec.pipeline.stages.ranking import stage_ranking
from semrec.pipeline.stages.ranking_sweep import stage_ranking_sweep
from semrec.pipeline.stages.retrieval import stage_retrieval
from semrec.pipeline.stages.sid import stage_sid
from semrec.pipeline.stages.sid_assign import stage_sid_assign
from semrec.pipeline.stages.verify import stage_verify, verify_changes

STAGE_ORDER = ("encode", "sid", "retrieval", "index", "ranking", "export", "verify")


class _Stages:
  """The stage registry, each stage's prerequisites (what `semrec <stage>` runs first) and the config
  sections it reads (``Run.config_sections`` hashes them to detect stale stages)."""

  def __init__(self):
    self.registry = {
        "encode": stage_encode, "sid": stage_sid, "sid-assign": stage_sid_assign,
        "retrieval": stage_retrieval, "index": stage_index, "ranking": stage_ranking,
        "ranking-sweep": stage_ranking_sweep, "export": stage_export, "verify": stage_verify,
    }
    self.requires = {"encode": (), "sid": ("encode",), "sid-assign": ("sid",), "retrieval": ("sid",),
                     "index": ("retrieval",), "ranking": ("retrieval",), "ranking-sweep": ("sid",), "export": ("sid",),
                     "verify": ("export",)}
    # "ranking" is the cascade (candidates from every trained retriever -> the SID ranker), part of `semrec run`;
    # "ranking-sweep" the impression-AUC representation sweep (`semrec experiment ranking`), not in STAGE_ORDER.
    # RunConfig sections each stage reads itself (besides `seed`). The export stage exports the SID
    # assigner (the other models are exported by the stages that train them); verify checks every
    # SavedModel of the run and writes models.config (export.base_path_prefix), so it reads everything.
    # "split" = the retrieval protocol fields of `data` (pipeline.config.SPLIT_FIELDS): changing the
    # protocol re-runs retrieval, not encoding.
    everything = ("data", "split", "encoder", "sid", "retrieval", "ranking", "export")
    self.reads = {"encode": ("data", "encoder"), "sid": ("sid",), "sid-assign": (), "retrieval": ("retrieval", "split"),
                  "index": ("retrieval",), "ranking": ("ranking",), "ranking-sweep": ("ranking",),
                  "export": ("sid",), "verify": everything}
    # What clearing a stale stage's directory keeps: the served models (TF Serving loads new versions
    # beside the old ones; a rerun must never delete what a server may be serving).
    self.keep = {"export": ("models",)}
    # Finished stages whose result is re-checked against the files on every run.
    self.rechecks = {"verify": verify_changes}

  def recheck(self, run, stage: str) -> Optional[str]:
    """Why a finished, up-to-date ``stage`` must still be recomputed (None when its files still hold)."""
    check = self.rechecks.get(stage)
    return check(run) if check is not None else None

  def sections_read(self, stage: str) -> Optional[set]:
    """RunConfig sections ``stage`` and its prerequisites read; None for a stage outside the registry."""
    if stage not in self.reads:
      return None
    return {n for s in [stage] + self.dependencies(stage) for n in self.reads[s]}

  def dependencies(self, stage: str) -> list[str]:
    """Prerequisites of ``stage``, transitively, in the order they must run."""
    out = []
    def visit(s):
      for d in self.requires.get(s, ()):
        visit(d)
        if d not in out:
          out.append(d)
    visit(stage)
    return out


STAGES = _Stages()
