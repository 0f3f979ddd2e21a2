"""Full-ranking evaluation of any scorer on a protocol's ``Queries`` (docs/protocols.md).

Shape letters: Q queries, q queries in a batch, N catalogue items (``item_ids``), T targets per
query.

Ranking: each query's items are ordered by descending score; equal scores are ordered by catalogue
position (the item listed first in ``item_ids`` ranks first), so results never depend on sort internals.
Items outside ``candidates`` and, by default, the user's earlier items (``Queries.exclude``) are removed
first. A target the user already had earlier (a repeat) is removed with the rest and counts as a miss, as in
the public leave-one-out benchmarks' full-sort evaluation (a recommender that hides seen items cannot show
it); with ``exclude_history=False`` nothing but non-candidates is removed. For a query with targets T_q and 0-based ranks r_t:

  Recall@K = |{t : r_t < K}| / |T_q|                   (the hit rate when |T_q| = 1)
  NDCG@K   = sum_{t : r_t < K} 1 / log2(r_t + 2)  /  sum_{i < min(|T_q|, K)} 1 / log2(i + 2)

averaged over the queries of a slice: "overall", and "warm" / "cold" (``Queries.cold``) for each kind that
has at least one query (with a single kind, that slice equals "overall").
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import Queries

DEFAULT_KS = (5, 10, 20, 50, 100)
NDCG_KS = (5, 10)
_BATCH_CELLS = 1 << 23  # q * N score cells per batch (64 MB of float64)


def _rows_of(index: pd.Index, ids) -> np.ndarray:
  return index.get_indexer(np.asarray(ids, dtype=object).reshape(-1)).astype(np.int64)


def _target_matrix(index: pd.Index, targets: Sequence[np.ndarray], user_ids) -> np.ndarray:
  """[Q, T] int64 catalogue rows of each query's targets, -1 padded; empty or unknown targets raise."""
  lens = np.array([len(t) for t in targets], np.int64)
  if (lens == 0).any():
    i = int(np.argmax(lens == 0))
    raise ValueError(f"query {i} (user {user_ids[i]!r}) has no target")
  flat = np.concatenate([np.asarray(t, dtype=object) for t in targets]) if len(targets) else np.zeros(0, object)
  rows = _rows_of(index, flat)
  if (rows < 0).any():
    bad = int(np.argmax(rows < 0))
    i = int(np.searchsorted(np.cumsum(lens), bad, side="right"))
    raise ValueError(f"query {i} (user {user_ids[i]!r}): target item {flat[bad]!r} is not in item_ids")
  out = np.full((len(targets), max(int(lens.max(initial=1)), 1)), -1, np.int64)
  qrow = np.repeat(np.arange(len(targets)), lens)
  out[qrow, np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)] = rows
  return out


def dot_scores(queries: np.ndarray, candidates: np.ndarray, dtype=np.float32) -> np.ndarray:
  """[q, N] ``dtype`` dot-product scores of queries against candidates [N, d].

  ``queries`` is [q, d], or [q, K, d] for a multi-interest query (``TwoTowerRetriever.multi_interest``): a
  candidate's score is then its best dot product with any of the K vectors.
  """
  q, c = np.asarray(queries, dtype), np.asarray(candidates, dtype)
  if q.ndim == 2:
    return q @ c.T
  if q.ndim != 3:
    raise ValueError(f"queries must be [q, d] or [q, K, d], got shape {q.shape}")
  out = q[:, 0] @ c.T
  for k in range(1, q.shape[1]):
    np.maximum(out, q[:, k] @ c.T, out=out)
  return out


def target_ranks(scores: np.ndarray, targets: np.ndarray, removed: np.ndarray) -> np.ndarray:
  """[q, T] int64 0-based rank of each target (-1 where ``targets`` is padding).

  Args:
    scores: [q, N] float scores.
    targets: [q, T] int64 target columns, -1 = padding.
    removed: [q, N] bool, items not ranked (never a target of its row).
  """
  cols = np.arange(scores.shape[1])[None, :]
  kept = ~removed
  ranks = np.full(targets.shape, -1, np.int64)
  for j in range(targets.shape[1]):
    t = targets[:, j]
    has = t >= 0
    ts = scores[np.arange(len(t)), np.maximum(t, 0)][:, None]
    ahead = (scores > ts) | ((scores == ts) & (cols < t[:, None]))
    ranks[:, j] = np.where(has, (ahead & kept).sum(axis=1), -1)
  return ranks


def metrics_from_target_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS,
                              ndcg_ks: Sequence[int] = NDCG_KS) -> dict:
  """Per-query metrics {"recall@K": [Q], "ndcg@K": [Q]} from [Q, T] ranks (-1 = padding)."""
  ranks = np.asarray(ranks).reshape(len(ranks), -1)
  valid = ranks >= 0
  n_t = valid.sum(axis=1)
  out = {}
  for k in ks:
    out[f"recall@{k}"] = ((ranks < k) & valid).sum(axis=1) / np.maximum(n_t, 1)
  for k in ndcg_ks:
    gain = np.where(valid & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0).sum(axis=1)
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))[np.clip(np.minimum(n_t, k) - 1, 0, k - 1)]
    out[f"ndcg@{k}"] = gain / ideal
  return out


def query_metrics(score_fn: Callable[[np.ndarray], np.ndarray], queries: Queries, item_ids, *,
                  candidates=None, ks: Sequence[int] = DEFAULT_KS, ndcg_ks: Sequence[int] = NDCG_KS,
                  exclude_history: bool = True, batch_size: int = 1024) -> dict:
  """Per-query metrics {"recall@K": [Q] float, "ndcg@K": [Q] float, "rank": [Q, T] int64}.

  Args: as ``evaluate_scores``.
  """
  index = pd.Index(np.asarray(item_ids, dtype=object))
  if not index.is_unique:
    raise ValueError("item_ids has duplicates")
  n = len(index)
  cands = candidates if candidates is not None else queries.candidates
  base_removed = np.zeros(n, bool)
  if cands is not None:
    base_removed[:] = True
    rows = _rows_of(index, cands)
    base_removed[rows[rows >= 0]] = False
  targets = _target_matrix(index, queries.targets, queries.user_ids)
  ranks = np.full(targets.shape, -1, np.int64)
  step = max(1, min(int(batch_size), _BATCH_CELLS // max(n, 1)))
  for s in range(0, len(queries), step):
    e = min(s + step, len(queries))
    scores = np.asarray(score_fn(np.arange(s, e)), np.float64)
    if scores.shape != (e - s, n):
      raise ValueError(f"score_fn returned shape {scores.shape}, expected {(e - s, n)}")
    bad = ~np.isfinite(scores).all(axis=1)
    if bad.any():
      raise ValueError(f"score_fn returned NaN/inf scores for query {s + int(np.argmax(bad))} "
                       f"(user {queries.user_ids[s + int(np.argmax(bad))]!r})")
    removed = np.repeat(base_removed[None], e - s, axis=0)
    if exclude_history:
      lens = [len(x) for x in queries.exclude[s:e]]
      if sum(lens):
        cols = _rows_of(index, np.concatenate([np.asarray(x, dtype=object) for x in queries.exclude[s:e]]))
        qrow = np.repeat(np.arange(e - s), lens)
        removed[qrow[cols >= 0], cols[cols >= 0]] = True
    tb = targets[s:e]
    tr, tc = np.nonzero(tb >= 0)
    removed_target = removed[tr, tb[tr, tc]]
    r = target_ranks(scores, tb, removed)
    r[tr[removed_target], tc[removed_target]] = n  # an excluded or non-candidate target is never found
    ranks[s:e] = r
  return {**metrics_from_target_ranks(ranks, ks, ndcg_ks), "rank": ranks}


def evaluate_scores(score_fn: Callable[[np.ndarray], np.ndarray], queries: Queries, item_ids, *,
                    candidates=None, ks: Sequence[int] = DEFAULT_KS, ndcg_ks: Sequence[int] = NDCG_KS,
                    exclude_history: bool = True, batch_size: int = 1024) -> dict:
  """Recall@K / NDCG@K of a scorer, overall and on warm / cold targets.

  Args:
    score_fn: ``score_fn(query_rows [q] int64) -> [q, N] float`` scores over ``item_ids`` for the queries
      ``queries[query_rows]``; called once per batch of at most ``batch_size`` queries.
    queries: ``Queries`` of a stage (``EvalSplit.queries(stage)``).
    item_ids: [N] catalogue item ids, the column order of ``score_fn``'s output.
    candidates: Item ids to rank (default ``queries.candidates``; None = all N).
    ks, ndcg_ks: Cut-offs of Recall and NDCG.
    exclude_history: Remove each user's earlier items (``queries.exclude``) from the ranking.
    batch_size: Queries per ``score_fn`` call (lowered so a batch holds at most 8M scores).

  Returns:
    {"overall": {"recall@5": ..., "ndcg@10": ..., "queries": Q}, "warm": {...}, "cold": {...}}
    ("warm" / "cold" present when that slice has at least one query).
  """
  per_query = query_metrics(score_fn, queries, item_ids, candidates=candidates, ks=ks, ndcg_ks=ndcg_ks,
                            exclude_history=exclude_history, batch_size=batch_size)
  return slice_metrics(per_query, np.asarray(queries.cold, bool))


def slice_metrics(per_query: dict, cold: np.ndarray) -> dict:
  """Means of ``query_metrics`` output over overall / warm / cold queries."""
  names = [k for k in per_query if k != "rank"]
  slices = {"overall": np.ones(len(cold), bool), "warm": ~cold, "cold": cold}
  out = {}
  for name, mask in slices.items():
    if name != "overall" and not mask.any():
      continue
    count = int(mask.sum())
    out[name] = {k: (float(np.mean(per_query[k][mask])) if count else float("nan")) for k in names}
    out[name]["queries"] = count
  return out


__all__ = ["DEFAULT_KS", "NDCG_KS", "evaluate_scores", "query_metrics", "slice_metrics", "target_ranks",
           "metrics_from_target_ranks"]
