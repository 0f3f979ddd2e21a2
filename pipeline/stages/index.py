"""The index stage: the served index over the production candidate embeddings, plus a ScaNN searcher."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from semrec.pipeline.artefacts import export_dir

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_index(run: Run) -> dict:
  """Builds the served index over the production candidate embeddings (+ a ScaNN searcher artefact).

  ``auto`` is brute force below 20,000 items (ScaNN's own guidance) and ScaNN above; a ScaNN searcher
  is always built too, and exported with its item-ID mapping. The served query embeddings of the retrieval
  stage's test sample (multi-interest [Q, K, d] when the served model has them) are split: the even rows
  calibrate ScaNN's leaves to search (``semrec.towers.calibrate_leaves_to_search``), the odd rows measure its
  recall@10 against brute force and its speed-up over it (both reported).
  """
  from semrec.export import export_scann_searcher
  from semrec.towers import build_and_save_index
  rcfg = run.config.retrieval
  with np.load(run.path("retrieval", "embeddings.npz")) as f:
    ids, cands, queries = f["item_ids"].astype(object), f["candidates"], f["queries"]
  k = min(rcfg.top_k, len(ids))
  served = build_and_save_index(cands, ids, run.path("index", "served"), kind=rcfg.index_kind, k=k, queries=queries)
  scann = served if served["kind"] == "scann" else build_and_save_index(
      cands, ids, run.path("index", "scann"), kind="scann", k=k, queries=queries)
  res = export_scann_searcher(export_dir(run), run.path("index", "served" if served is scann else "scann"),
                              queries[:8].reshape(-1, cands.shape[1]), k=10, data_fingerprint=run.data_fingerprint,
                              metrics={"recall@10_vs_brute_force": scann.get("recall@10"),
                                       "speedup_vs_brute_force": scann.get("speedup_vs_brute_force")})
  return {"kind": served["kind"], "recall_at_10": served.get("recall@10"),
          "scann_recall_at_10": scann.get("recall@10"),
          "scann_speedup_vs_brute_force": scann.get("speedup_vs_brute_force"),
          "scann_leaves_to_search": scann["params"].get("num_leaves_to_search"),
          "scann_num_leaves": scann["params"].get("num_leaves"),
          "num_items": len(ids), "served": served, "scann": scann, "searcher_export": res.path}


# ----------------------------------------------------------------------------------------------------
