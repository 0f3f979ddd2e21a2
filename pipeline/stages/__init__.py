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
from semrec.pipeline.stages.retrieval import stage_retrieval
from semrec.pipeline.stages.sid import stage_sid
from semrec.pipeline.stages.sid_assign import stage_sid_assign
from semrec.pipeline.stages.verify import stage_verify

STAGE_ORDER = ("encode", "sid", "retrieval", "index", "ranking", "export", "verify")


class _Stages:
  """The stage registry, each stage's prerequisites (what `semrec <stage>` runs first) and the config
  sections it reads (``Run.config_sections`` hashes them to detect stale stages)."""

  def __init__(self):
    self.registry = {
        "encode": stage_encode, "sid": stage_sid, "sid-assign": stage_sid_assign,
        "retrieval": stage_retrieval, "index": stage_index, "ranking": stage_ranking,
        "export": stage_export, "verify": stage_verify,
    }
    self.requires = {"encode": (), "sid": ("encode",), "sid-assign": ("sid",), "retrieval": ("sid",),
                     "index": ("retrieval",), "ranking": ("sid",), "export": ("sid",),
                     "verify": ("export",)}
    # RunConfig sections each stage reads itself (besides `seed`). export and verify cover every
    # SavedModel the run wrote, so they depend on the whole config.
    everything = ("data", "encoder", "sid", "retrieval", "ranking", "export")
    self.reads = {"encode": ("data", "encoder"), "sid": ("sid",), "sid-assign": (), "retrieval": ("retrieval",),
                  "index": ("retrieval",), "ranking": ("ranking",), "export": everything, "verify": everything}

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
