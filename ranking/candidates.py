"""Candidate sources and their merge: the first stage of the cascade (sources -> merge -> ranker).

Shape letters: Q queries, q queries in a batch, N catalogue items, k candidates per source, M merged
candidates per query, S sources.

A *source* turns a ``semrec.data.Queries`` set into each query's top-k catalogue rows with a score and its
own name (``SourceResult``). Every source here is a ``ScoreSource``: any full-catalogue scorer (a trained
two-tower's dot products, next-item transition counts, popularity, content kNN) plus an optional per-query
item filter (the fresh-item source keeps only items not seen before the request). Before the top-k, each
source removes what the evaluation removes (``removed_items``: the user's earlier items and, on
``cold_items``, every non-candidate), so no candidate slot is spent on an item that can never be shown.

``merge_candidates`` builds the ranker's candidate set: a union with dedupe, a guaranteed quota per source
(its best ``quota`` items not already taken, sources in order), then the remaining slots filled round-robin
by rank across sources. The per-source rank and score of every merged candidate are kept (``-1`` rank / 0
score where the source did not return it): they are features of the ranker. ``candidate_recall`` is the
share of targets inside a candidate list, the ceiling of any ranker over it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import Queries

ScoreFn = Callable[[Queries, np.ndarray], np.ndarray]


@dataclasses.dataclass
class SourceResult:
  """One source's candidates.

  Attributes:
    name: The source's name.
    rows: [Q, k] int64 catalogue rows, best first; -1 where the source had fewer than k items to offer.
    scores: [Q, k] float32 the source's scores of ``rows`` (0 where ``rows`` is -1).
  """
  name: str
  rows: np.ndarray
  scores: np.ndarray


def catalogue_index(item_ids) -> pd.Index:
  """A unique ``pd.Index`` over the catalogue item ids (row r = ``item_ids[r]``)."""
  index = pd.Index(np.asarray(item_ids, dtype=object))
  if not index.is_unique:
    raise ValueError("item_ids has duplicates")
  return index


def removed_items(queries: Queries, rows: np.ndarray, index: pd.Index, exclude_history: bool = True) -> np.ndarray:
  """[q, N] bool: the items the evaluation removes for ``queries[rows]``: non-candidates
  (``queries.candidates``, e.g. the held-out items of ``cold_items``) and, with ``exclude_history``, every item
  the user interacted with before the request (``queries.exclude``)."""
  rows = np.asarray(rows, np.int64)
  out = np.zeros((len(rows), len(index)), bool)
  if queries.candidates is not None:
    keep = index.get_indexer(np.asarray(queries.candidates, dtype=object))
    out[:] = True
    out[:, keep[keep >= 0]] = False
  if exclude_history:
    for i, r in enumerate(rows):
      cols = index.get_indexer(np.asarray(queries.exclude[r], dtype=object))
      out[i, cols[cols >= 0]] = True
  return out


def top_k_rows(scores: np.ndarray, k: int) -> tuple:
  """(rows [q, k] int64, scores [q, k] float32) of the k best finite scores per row, best first; ties go to
  the lower catalogue row (as in ``semrec.towers.evaluate_scores``). Rows with fewer than k finite scores are
  padded with row -1 and score 0."""
  scores = np.asarray(scores, np.float64)
  q, n = scores.shape
  k = int(min(k, n))
  if k <= 0 or q == 0:
    return np.full((q, max(k, 0)), -1, np.int64), np.zeros((q, max(k, 0)), np.float32)
  # -score then column: np.lexsort is stable on ties; argpartition first bounds the sort to k columns + ties.
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (q, 1))
  kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
  out_rows = np.full((q, k), -1, np.int64)
  out_scores = np.zeros((q, k), np.float32)
  for i in range(q):
    cand = np.flatnonzero(scores[i] >= kth[i])  # the k best and every item tied with the k-th
    cand = cand[np.isfinite(scores[i, cand])]
    order = np.lexsort((cand, -scores[i, cand]))[:k]
    top = cand[order]
    out_rows[i, :len(top)] = top
    out_scores[i, :len(top)] = scores[i, top]
  return out_rows, out_scores


class ScoreSource:
  """A candidate source from a full-catalogue scorer.

  Args:
    name: The source's name (a ranker feature block and a column of the candidate-recall table).
    score_fn: ``score_fn(queries, rows [q] int64) -> [q, N]`` float scores over the catalogue (higher first).
    item_filter: Optional ``item_filter(queries, rows) -> [q, N] bool``: the items this source may return for
      each query (e.g. the fresh items at the request time); None = all.
  """

  def __init__(self, name: str, score_fn: ScoreFn, item_filter: Optional[ScoreFn] = None):
    self.name, self.score_fn, self.item_filter = str(name), score_fn, item_filter

  def retrieve(self, queries: Queries, k: int, index: pd.Index, exclude_history: bool = True,
               batch_size: int = 512) -> SourceResult:
    """The top-``k`` items per query of ``queries`` (see ``SourceResult``); removed items (``removed_items``)
    and items outside ``item_filter`` are never returned, so a query may get fewer than k (padded with -1)."""
    if k < 1:
      raise ValueError(f"source {self.name!r}: k must be >= 1, got {k}")
    rows_out, scores_out = [], []
    for s in range(0, len(queries), batch_size):
      rows = np.arange(s, min(s + batch_size, len(queries)))
      sc = np.array(self.score_fn(queries, rows), np.float64)
      if sc.shape != (len(rows), len(index)):
        raise ValueError(f"source {self.name!r}: score_fn returned shape {sc.shape}, expected "
                         f"{(len(rows), len(index))}")
      bad = ~np.isfinite(sc).all(axis=1)
      if bad.any():
        raise ValueError(f"source {self.name!r}: NaN/inf scores for query {s + int(np.argmax(bad))} "
                         f"(user {queries.user_ids[s + int(np.argmax(bad))]!r})")
      drop = removed_items(queries, rows, index, exclude_history)
      if self.item_filter is not None:
        drop |= ~np.asarray(self.item_filter(queries, rows), bool)
      sc[drop] = -np.inf
      r, v = top_k_rows(sc, k)
      rows_out.append(r)
      scores_out.append(v)
    k = min(k, len(index))
    return SourceResult(self.name, np.concatenate(rows_out) if rows_out else np.zeros((0, k), np.int64),
                        np.concatenate(scores_out) if scores_out else np.zeros((0, k), np.float32))


class ListSource:
  """A candidate source from a top-k list function instead of full-catalogue scores (generative retrieval's
  beam search, an approximate index).

  Args:
    name: The source's name.
    list_fn: ``list_fn(queries, rows [q] int64, k) -> (rows [q, k] int64 catalogue rows, -1 padded; scores
      [q, k] float)``, best first.
    max_k: At most this many items are asked of ``list_fn`` whatever k the merge wants (bounds e.g. the beam).

  Removed items (``removed_items``) are dropped from the returned lists afterwards, so a query may get fewer
  than k (padded with -1), as with ``ScoreSource``.
  """

  def __init__(self, name: str, list_fn, max_k: Optional[int] = None):
    self.name, self.list_fn, self.max_k = str(name), list_fn, max_k

  def retrieve(self, queries: Queries, k: int, index: pd.Index, exclude_history: bool = True,
               batch_size: int = 512) -> SourceResult:
    if k < 1:
      raise ValueError(f"source {self.name!r}: k must be >= 1, got {k}")
    kk = int(min(k, self.max_k or k, len(index)))
    out_rows = np.full((len(queries), k), -1, np.int64)
    out_scores = np.zeros((len(queries), k), np.float32)
    for s in range(0, len(queries), batch_size):
      rows = np.arange(s, min(s + batch_size, len(queries)))
      r, v = self.list_fn(queries, rows, kk)
      r, v = np.asarray(r, np.int64), np.asarray(v, np.float32)
      if r.shape != (len(rows), kk) or v.shape != r.shape:
        raise ValueError(f"source {self.name!r}: list_fn returned shapes {r.shape} / {v.shape}, expected "
                         f"{(len(rows), kk)}")
      if not np.isfinite(v[r >= 0]).all():
        raise ValueError(f"source {self.name!r}: NaN/inf scores in a returned list")
      drop = removed_items(queries, rows, index, exclude_history)
      for i in range(len(rows)):
        keep = [j for j in range(kk) if r[i, j] >= 0 and not drop[i, r[i, j]]]
        out_rows[s + i, :len(keep)] = r[i, keep]
        out_scores[s + i, :len(keep)] = v[i, keep]
    return SourceResult(self.name, out_rows, out_scores)


def history_list_source(source, index: pd.Index, max_history: int = 20, max_k: Optional[int] = 50) -> ListSource:
  """A ``ListSource`` over a duck-typed history source (``source.name``; ``source.retrieve(histories [q, H]
  object item ids ("" padding, most recent last), k) -> (item_ids [q, k] object, scores [q, k])``, e.g.
  ``semrec.generative.GenerativeSource``); returned ids outside the catalogue (or "") become padding."""

  def list_fn(queries: Queries, rows: np.ndarray, k: int) -> tuple:
    ids, scores = source.retrieve(queries.subset(rows).padded_histories(max_history), k)
    ids = np.asarray(ids, dtype=object)
    r = index.get_indexer(ids.reshape(-1)).reshape(ids.shape).astype(np.int64)
    scores = np.where(r >= 0, np.asarray(scores, np.float32), 0.0)
    return r, scores

  return ListSource(source.name, list_fn, max_k)


def first_seen_times(train: pd.DataFrame, index: pd.Index) -> np.ndarray:
  """[N] int64 time of each item's first train interaction (int64 max for items never seen in ``train``)."""
  out = np.full(len(index), np.iinfo(np.int64).max, np.int64)
  first = train.groupby("item_id", sort=False)["timestamp"].min()
  rows = index.get_indexer(first.index.to_numpy().astype(object))
  out[rows[rows >= 0]] = first.to_numpy(np.int64)[rows >= 0]
  return out


def fresh_item_filter(first_seen: np.ndarray, window: int = 0) -> ScoreFn:
  """The fresh items at each request: never seen before ``timestamp - window`` (``first_seen`` [N] from
  ``first_seen_times``), i.e. items without a train interaction and items first seen in the ``window`` time
  units before the request. ``window=0``: only items not seen before the request."""
  if window < 0:
    raise ValueError(f"fresh window must be >= 0, got {window}")
  first_seen = np.asarray(first_seen, np.int64)

  def item_filter(queries: Queries, rows: np.ndarray) -> np.ndarray:
    t = np.asarray(queries.timestamps, np.int64)[np.asarray(rows, np.int64)]
    return first_seen[None, :] >= (t - int(window))[:, None]

  return item_filter


def available_item_filter(first_seen: np.ndarray, horizon: int) -> ScoreFn:
  """The catalogue as it stood at each training request: items first seen no later than ``timestamp +
  horizon`` (``first_seen`` [N] from ``first_seen_times``).

  A test request ranks every catalogue item, including items first seen up to one evaluated period after it
  (the test part's new items). A training request cut from the train log would otherwise rank items that only
  appear years later; as negatives they teach the ranker that a fresh item is never the answer. Bounding the
  training catalogue by the same horizon keeps fresh candidates alike in training and at test.
  """
  if horizon < 0:
    raise ValueError(f"catalogue horizon must be >= 0, got {horizon}")
  first_seen = np.asarray(first_seen, np.int64)

  def item_filter(queries: Queries, rows: np.ndarray) -> np.ndarray:
    t = np.asarray(queries.timestamps, np.int64)[np.asarray(rows, np.int64)]
    limit = np.minimum(t, np.iinfo(np.int64).max - int(horizon)) + int(horizon)
    return first_seen[None, :] <= limit[:, None]

  return item_filter


def all_of(*filters: Optional[ScoreFn]) -> Optional[ScoreFn]:
  """The conjunction of item filters (None entries ignored; None when there is none)."""
  fs = [f for f in filters if f is not None]
  if len(fs) <= 1:
    return fs[0] if fs else None

  def item_filter(queries: Queries, rows: np.ndarray) -> np.ndarray:
    out = np.asarray(fs[0](queries, rows), bool).copy()
    for f in fs[1:]:
      out &= np.asarray(f(queries, rows), bool)
    return out

  return item_filter


@dataclasses.dataclass
class MergedCandidates:
  """The merged candidate set of Q queries.

  Attributes:
    rows: [Q, M] int64 catalogue rows (-1 padding when the sources together had fewer than M items).
    ranks: [Q, M, S] int32 each candidate's 0-based rank in each source (-1: the source did not return it).
    scores: [Q, M, S] float32 each candidate's score in each source (0 where the rank is -1).
    sources: The S source names, in the order of the last axis.
  """
  rows: np.ndarray
  ranks: np.ndarray
  scores: np.ndarray
  sources: tuple

  def __len__(self) -> int:
    return len(self.rows)


def default_quotas(names: Sequence[str], total: int) -> dict:
  """An equal guaranteed share per source: ``total // (2 S)``; the other half is filled by rank."""
  return {n: max(1, total // (2 * max(len(names), 1))) for n in names}


def merge_candidates(results: Sequence[SourceResult], total: int = 200, quotas: Optional[dict] = None
                     ) -> MergedCandidates:
  """Union of the sources' candidates with dedupe and per-source quotas (see the module docstring).

  Args:
    results: One ``SourceResult`` per source, all over the same Q queries (sources in priority order).
    total: M, the merged candidates per query.
    quotas: {source name: guaranteed slots} (default ``default_quotas``); a source's quota is capped by what it
      returned; quotas summing over ``total`` are honoured in source order until ``total`` is reached.
  """
  if not results:
    raise ValueError("merge_candidates needs at least one source")
  if total < 1:
    raise ValueError(f"total must be >= 1, got {total}")
  names = tuple(r.name for r in results)
  if len(set(names)) != len(names):
    raise ValueError(f"source names must be unique, got {names}")
  quotas = default_quotas(names, total) if quotas is None else dict(quotas)
  unknown = sorted(set(quotas) - set(names))
  if unknown:
    raise ValueError(f"quotas name unknown sources {unknown}; sources: {list(names)}")
  nq = len(results[0].rows)
  if any(len(r.rows) != nq for r in results):
    raise ValueError(f"sources cover different numbers of queries: {[len(r.rows) for r in results]}")
  S = len(results)
  rows = np.full((nq, total), -1, np.int64)
  ranks = np.full((nq, total, S), -1, np.int32)
  scores = np.zeros((nq, total, S), np.float32)
  width = max(r.rows.shape[1] for r in results)
  for q in range(nq):
    pos = {}  # catalogue row -> merged slot
    lists = [r.rows[q] for r in results]

    def take(row):
      if row >= 0 and row not in pos and len(pos) < total:
        pos[row] = len(pos)

    for s, r in enumerate(lists):  # guaranteed quotas, sources in order
      got = 0
      for row in r:
        if got >= quotas.get(names[s], 0) or len(pos) >= total:
          break
        if row >= 0 and row not in pos:
          take(row)
          got += 1
    for j in range(width):  # the rest round-robin by rank
      if len(pos) >= total:
        break
      for r in lists:
        if j < len(r):
          take(r[j])
    slots = np.fromiter(pos.keys(), np.int64, len(pos))
    rows[q, :len(slots)] = slots
    for s, res in enumerate(results):  # every source's rank / score of every merged candidate
      r = res.rows[q]
      for j in np.flatnonzero(r >= 0):
        slot = pos.get(int(r[j]))
        if slot is not None:
          ranks[q, slot, s] = j
          scores[q, slot, s] = res.scores[q, j]
  return MergedCandidates(rows, ranks, scores, names)


def target_rows(queries: Queries, index: pd.Index) -> list:
  """Q int64 arrays: each query's target catalogue rows (-1 for unknown items)."""
  return [index.get_indexer(np.asarray(t, dtype=object)) for t in queries.targets]


def candidate_recall(candidate_rows: np.ndarray, targets: list, cold: Optional[np.ndarray] = None) -> dict:
  """Share of each query's targets inside its candidate rows [Q, M], averaged over queries: "overall", and
  "warm" / "cold" with a [Q] bool ``cold`` mask (a slice only when it has a query)."""
  hit = np.array([np.isin(t[t >= 0], r).sum() / max(len(t), 1) for r, t in zip(candidate_rows, targets)], float)
  out = {"overall": float(hit.mean()) if len(hit) else float("nan")}
  if cold is not None:
    cold = np.asarray(cold, bool)
    for name, mask in (("warm", ~cold), ("cold", cold)):
      if mask.any():
        out[name] = float(hit[mask].mean())
  return out


__all__ = ["ListSource", "MergedCandidates", "ScoreSource", "history_list_source", "SourceResult", "all_of",
           "available_item_filter", "candidate_recall", "catalogue_index", "default_quotas", "first_seen_times", "fresh_item_filter", "merge_candidates", "removed_items",
           "target_rows", "top_k_rows"]
