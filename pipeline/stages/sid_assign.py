"""The sid-assign stage: SIDs for every item of the embedding store with the frozen SID model."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_sid_assign(run: Run) -> dict:
  """Assigns SIDs to every item of the embedding store with the frozen SID model (resumable batch job)."""
  from semrec.encoders import EmbeddingStore
  from semrec.sid import SidModel, assign_sids
  sid_model = SidModel.load(run.path("sid", "model"))
  out = run.path("sid", "assigned")
  table = assign_sids(EmbeddingStore(run.path("encode", "store")), sid_model.assigner, out,
                      suffix=run.config.sid.unique_suffix)
  return {"output": out, "num_items": len(table), "unique_ratio": table.unique_ratio()}


# ----------------------------------------------------------------------------------------------------
