"""The SID stage's artefacts for a retriever comparison driven outside ``semrec run`` (the benchmarks).

``semrec.towers.run_retrieval_comparison`` fits nothing but towers: cluster IDs, SIDs and the SID-piece SPM
are inputs. In ``semrec run`` the SID stage fits the cluster IDs and SIDs (and the retrieval stage trains the
SPM on them, ``interaction_spm``); a benchmark calls ``fit_sid_artefacts`` instead, which fits them the same
way on the catalogue's content rows.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd


def interaction_spm(codes: np.ndarray, item_ids, train_item_ids: Iterable, vocab_size: int, codebook_size: int):
  """A ``SidSpm`` over the SID ``codes`` [N, L] (catalogue order), each item weighted by its number of rows in
  ``train_item_ids`` (the interaction-weighted SID corpus), with ``vocab_size`` pieces."""
  from semrec.sid.spm import train_sid_spm
  ids = np.asarray(item_ids).astype(str)
  weights = pd.Series(np.asarray(list(train_item_ids)).astype(str)).value_counts().reindex(ids).fillna(0).to_numpy()
  return train_sid_spm(np.asarray(codes, np.int32), weights=weights, vocab_size=vocab_size,
                       codebook_size=codebook_size, item_ids=ids.astype(object))


def fit_sid_artefacts(content: np.ndarray, item_ids, needs: Iterable[str], train_item_ids: Optional[Iterable] = None,
                      num_clusters: int = 256, sid_levels: int = 3, codebook_size: int = 64, sid_mode: str = "rqkmeans",
                      spm_vocab_size: int = 1024, seed: int = 0) -> dict:
  """The keyword arguments of ``run_retrieval_comparison`` named in ``needs`` (``ComparisonConfig.sid_needs()``).

  Args:
    content: [N, D] content rows, catalogue order.
    item_ids: [N] catalogue ids.
    needs: Subset of {"cluster_ids", "sid_codes", "spm"}.
    train_item_ids: The split's train rows' item ids (the SPM's corpus weights; needed for "spm").
    num_clusters: k of the k-means cluster IDs (clipped to N).
    sid_levels, codebook_size, sid_mode: The SID model (``semrec.sid.RQVAEConfig``).
    spm_vocab_size: Pieces of the SPM.
    seed: Seeds k-means and the SID model.

  Returns:
    {"cluster_ids": [N] int32} and / or {"sid_codes": [N, L] int32, "sid_codebook_size": K} and / or
    {"spm": SidSpm}.
  """
  needs = set(needs)
  bad = needs - {"cluster_ids", "sid_codes", "spm"}
  if bad:
    raise ValueError(f"fit_sid_artefacts: unknown needs {sorted(bad)}")
  x = np.asarray(content, np.float32)
  ids = np.asarray(item_ids).astype(str).astype(object)
  out = {}
  if "cluster_ids" in needs:
    from semrec.sid.kmeans import fit_kmeans, nearest_centroid
    out["cluster_ids"] = nearest_centroid(x, fit_kmeans(x, min(num_clusters, len(ids)), seed=seed)).astype(np.int32)
  if needs & {"sid_codes", "spm"}:
    from semrec.sid import RQVAEConfig, train_sid_model
    codes = train_sid_model(x, RQVAEConfig(mode=sid_mode, num_levels=sid_levels, codebook_size=codebook_size,
                                           seed=seed), item_ids=ids).codes(x)
    out.update(sid_codes=np.asarray(codes, np.int32), sid_codebook_size=codebook_size)
    if "spm" in needs:
      if train_item_ids is None:
        raise ValueError("fit_sid_artefacts: the SPM needs train_item_ids (its corpus weights)")
      out["spm"] = interaction_spm(codes, ids, train_item_ids, spm_vocab_size, codebook_size)
  return out


__all__ = ["fit_sid_artefacts", "interaction_spm"]
