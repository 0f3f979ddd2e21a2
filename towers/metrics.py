"""Retrieval metrics over the full catalogue: Recall@K and NDCG@K with warm/cold slices.

Legacy single-target helpers (ties counted in the target's favour, the target never excluded), kept for
callers written before ``semrec.towers.evaluation``; new code evaluates with ``evaluate_scores`` on a
``semrec.data.make_split`` query set (docs/protocols.md), which every retrieval table uses.

Shape letters: Q queries (one per held-out positive interaction), N catalogue items, d width.

Each query has one held-out target item. Recall@K is 1 if the target is among the top K items
(the hit rate of a single-target query) and NDCG@K is 1 / log2(rank + 2) for a hit at 0-based
``rank``, else 0; both are averaged over the queries of a slice. Items the user interacted with
before the query (``exclude``) are removed from the ranking first, since a recommender would not
re-recommend them; the target itself is never excluded.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

DEFAULT_KS = (10, 50, 100)


def rank_of_targets(query_embeddings: np.ndarray, candidate_embeddings: np.ndarray, target_rows: np.ndarray,
                    exclude: Optional[Sequence[np.ndarray]] = None, max_k: int = 100,
                    batch_size: int = 512) -> np.ndarray:
  """[Q] int64: 0-based rank of each target among all N candidates (max_k if not in the top max_k).

  Args:
    query_embeddings: [Q, d] float32.
    candidate_embeddings: [N, d] float32 (full catalogue).
    target_rows: [Q] int row of each query's target in ``candidate_embeddings``.
    exclude: Optional length-Q list of int arrays of candidate rows to drop from query i's ranking.
    max_k: Ranks at or beyond this are reported as ``max_k``.
  """
  import tensorflow as tf
  q = np.asarray(query_embeddings, np.float32)
  c = tf.constant(np.asarray(candidate_embeddings, np.float32))
  t = np.asarray(target_rows, np.int64)
  if len(q) != len(t):
    raise ValueError(f"{len(q)} queries but {len(t)} targets")
  ranks = np.full(len(q), max_k, np.int64)
  n = int(c.shape[0])
  for s in range(0, len(q), batch_size):
    e = min(s + batch_size, len(q))
    scores = tf.linalg.matmul(tf.constant(q[s:e]), c, transpose_b=True).numpy()
    if exclude is not None:
      rr, cc = [], []
      for i in range(s, e):
        ex = np.asarray(exclude[i], np.int64)
        ex = ex[(ex != t[i]) & (ex >= 0) & (ex < n)]
        rr.append(np.full(len(ex), i - s))
        cc.append(ex)
      if rr:
        scores[np.concatenate(rr), np.concatenate(cc)] = -np.inf
    target_scores = scores[np.arange(e - s), t[s:e]]
    # rank = number of candidates scoring strictly higher than the target (ties resolved in its favour).
    higher = (scores > target_scores[:, None]).sum(axis=1)
    ranks[s:e] = np.minimum(higher, max_k)
  return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS, ndcg_k: int = 10) -> dict:
  """{"recall@K": ..., "ndcg@10": ..., "num_queries": Q} from 0-based target ranks [Q]."""
  ranks = np.asarray(ranks)
  out = {"num_queries": int(len(ranks))}
  if len(ranks) == 0:
    out.update({f"recall@{k}": float("nan") for k in ks})
    out[f"ndcg@{ndcg_k}"] = float("nan")
    return out
  for k in ks:
    out[f"recall@{k}"] = float(np.mean(ranks < k))
  gains = np.where(ranks < ndcg_k, 1.0 / np.log2(ranks + 2.0), 0.0)
  out[f"ndcg@{ndcg_k}"] = float(np.mean(gains))
  return out


def sliced_metrics(ranks: np.ndarray, slices: Mapping[str, np.ndarray], ks: Sequence[int] = DEFAULT_KS,
                   ndcg_k: int = 10) -> dict:
  """slice name -> metrics; ``slices`` maps a name to a [Q] bool mask (e.g. overall / warm / cold)."""
  return {name: metrics_from_ranks(np.asarray(ranks)[np.asarray(mask, bool)], ks, ndcg_k)
          for name, mask in slices.items()}
