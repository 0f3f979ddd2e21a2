"""The two-stage recommender: candidate sources -> merge -> the SID ranker -> the list a user sees.

Shape letters: Q queries, M merged candidates per query, S sources, N catalogue items, L SID levels,
H history length, C context width, E cascade features per candidate.

Training (``train_cascade``) uses the *train* log only. Training queries are (history, next item) pairs
cut from each user's time-ordered train positives (``training_queries``: the last ``queries_per_user``
positions of every user, by default as many as spread ``max_train_queries`` evenly over the users; a seeded
sample of at most ``max_train_queries``), ranked over the items with a
train interaction. Each query's merged candidates come from the same sources that serve (the transition
source leaves the query's own transition out, so its count is what it would be without this example);
the positive is the actual next item, the negatives ``hard_negatives`` items drawn from the merged
candidates plus ``random_negatives`` uniform train items. A negative is never the positive, an item of the
user's history, or an item the user has in the validation or test part (``user_future_items``): those items
are never labelled at all. Validation targets only pick the epoch (final-list NDCG@10 on validation, as the
retrievers' early stopping does); test targets are read by ``evaluate_cascade`` alone.

Features of a (query, candidate) pair: the existing ranker inputs (candidate, last item and history through
the ranker's item representation: hash, unigram, bigram, prefix, SPM, SPM + hash; the request context) and
E dense cascade features appended to the context (``CASCADE_FEATURES``): per source, whether it returned
the candidate, 1 / (1 + rank) and its score min-max scaled within the query; the SID prefix depth the
candidate shares with the last item and the best over the last five items (/ L); freshness (no interaction
before the request), the item's age since its first train interaction (/ train span) and its train
popularity before the request (log1p, / log1p of all train interactions before it).

The final list of a query is its merged candidates ordered by the ranker's probability; the rest of the
catalogue follows (it is never reached at K <= M). ``evaluate_cascade`` reports it with the same metrics as
retrieval (``semrec.towers.evaluate_scores``), next to each source alone and the merged candidate recall.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import ItemFeatures, Queries
from semrec.ranking.candidates import (MergedCandidates, ScoreSource, SourceResult, candidate_recall,
                                       catalogue_index, merge_candidates, target_rows)
from semrec.ranking.data import RankingExamples, context_features

PER_SOURCE_FEATURES = ("present", "reciprocal_rank", "scaled_score")
ITEM_FEATURES = ("sid_depth_last", "sid_depth_recent", "fresh", "age", "popularity")
RECENT_FOR_SID = 5


@dataclasses.dataclass
class CascadeConfig:
  """The cascade's candidate generation and ranker training.

  Attributes:
    candidates: M, merged candidates per query (the ranker's input).
    per_source: k, candidates asked of each source before the merge.
    fresh_window: The fresh-item source returns items not seen before ``request time - fresh_window`` (0 =
      items without an interaction before the request; in timestamp units).
    fresh_scorer: What orders the fresh items: "auto" (the scorer, content kNN or a trained retriever, with the
      best validation Recall@``per_source`` of new-item targets among the fresh items: ``choose_fresh_scorer``;
      content kNN when validation has fewer than 100 new-item targets), "content_knn", or a retriever's name.
    fresh_share: Share of the training queries whose target is a new item (its first train interaction), drawn
      from anywhere in the users' sequences (``training_queries``); None: the validation share of new-item
      targets (``fresh_target_share``, at most 0.5; about 0 on leave-one-out logs). Default 0: on MovieLens
      temporal (seed 0) None raised the final list's cold Recall@100 from .071 to .108 but cut its NDCG@10 by
      19% (docs/ranking.md), a trade a user makes knowingly.
    catalogue_horizon: Training requests rank the items first seen no later than request time + this
      (``available_item_filter``; timestamp units). None: the span of the split's evaluated (validation + test)
      period (``evaluation_horizon``), the reach of a test request.
    max_train_queries: Training queries sampled from the train log (seeded).
    queries_per_user: The last this many positions of each user's train sequence are training queries (None:
      ceil(max_train_queries / users), so a log with few long histories still gives enough queries).
    hard_negatives: Negatives per training query drawn from its merged candidates.
    random_negatives: Uniform negatives per training query from the train items.
    explicit_negatives: At most this many of the user's explicit negatives (train rows with label 0, e.g. a
      low rating) between the query's previous positive and the request, per training query (labelled data
      only; ``explicit_negative_rows``).
    max_epochs: Ranker epochs at most; the best on validation final-list NDCG@10 is kept.
    patience: Stop after this many epochs without a better validation NDCG@10.
    valid_queries: At most this many validation queries (seeded sample) score each epoch.
    mode: The ranker's item representation (``semrec.ranking.MODE_COMPONENTS``: random_hash, unigram, bigram,
      prefix, spm, spm+hash, dense).
    table_budget: Rows of the representation's tables (the SPM vocabulary size for spm modes).
    embedding_dim: Width of the ranker's item representation.
    history_length: H, history items fed to the ranker.
    batch_size: Ranker training batch size.
    learning_rate: Ranker Adam learning rate.
    seed: Sampling and initialisation seed.
  """
  candidates: int = 200
  per_source: int = 100
  fresh_window: int = 0
  fresh_scorer: str = "auto"
  fresh_share: Optional[float] = 0.0
  catalogue_horizon: Optional[int] = None
  max_train_queries: int = 8000
  queries_per_user: Optional[int] = None
  hard_negatives: int = 12
  random_negatives: int = 3
  explicit_negatives: int = 2
  max_epochs: int = 6
  patience: int = 2
  valid_queries: int = 1000
  mode: str = "spm+hash"
  table_budget: int = 4096
  embedding_dim: int = 32
  history_length: int = 20
  batch_size: int = 512
  learning_rate: float = 2e-3
  seed: int = 0

  def __post_init__(self):
    from semrec.ranking.experiment import MODE_COMPONENTS
    for f in ("candidates", "per_source", "max_train_queries", "max_epochs", "patience", "valid_queries",
              "table_budget", "embedding_dim", "history_length", "batch_size"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"CascadeConfig.{f} must be >= 1, got {getattr(self, f)}")
    for f in ("hard_negatives", "random_negatives", "explicit_negatives", "fresh_window"):
      if int(getattr(self, f)) < 0:
        raise ValueError(f"CascadeConfig.{f} must be >= 0, got {getattr(self, f)}")
    if self.fresh_share is not None and not 0.0 <= float(self.fresh_share) <= 1.0:
      raise ValueError(f"CascadeConfig.fresh_share must be in [0, 1] or None, got {self.fresh_share}")
    if self.catalogue_horizon is not None and int(self.catalogue_horizon) < 0:
      raise ValueError(f"CascadeConfig.catalogue_horizon must be >= 0 or None, got {self.catalogue_horizon}")
    if not isinstance(self.fresh_scorer, str) or not self.fresh_scorer:
      raise ValueError(f"CascadeConfig.fresh_scorer must be 'auto', 'content_knn' or a retriever name, got "
                       f"{self.fresh_scorer!r}")
    if self.queries_per_user is not None and int(self.queries_per_user) < 1:
      raise ValueError(f"CascadeConfig.queries_per_user must be >= 1 or None, got {self.queries_per_user}")
    if self.hard_negatives + self.random_negatives + self.explicit_negatives < 1:
      raise ValueError("CascadeConfig needs at least one negative per query "
                       "(hard_negatives + random_negatives + explicit_negatives)")
    if self.mode not in MODE_COMPONENTS:
      raise ValueError(f"CascadeConfig.mode must be one of {tuple(MODE_COMPONENTS)}, got {self.mode!r}")
    if self.learning_rate <= 0:
      raise ValueError(f"CascadeConfig.learning_rate must be > 0, got {self.learning_rate}")


def cascade_feature_names(sources: Sequence[str]) -> list:
  """The E names of the dense cascade features, in column order."""
  return [f"{s}:{f}" for s in sources for f in PER_SOURCE_FEATURES] + list(ITEM_FEATURES)


def training_queries(split, queries_per_user: Optional[int] = None, max_queries: int = 8000, seed: int = 0,
                     fresh_share: float = 0.0) -> Queries:
  """(history, next item) queries from the train log: for each user's time-ordered train positives
  i_0..i_{n-1}, positions t = max(1, n - queries_per_user) .. n - 1 give history i_0..i_{t-1}, target i_t, at
  the time of i_t; a seeded sample of at most ``max_queries``. ``queries_per_user=None``: ceil(max_queries /
  users). Candidates: the train items (items seen only in validation or test are never a training candidate).

  ``fresh_share`` > 0: that share of the sample (at most) is drawn from the positions, anywhere in a user's
  sequence, whose target is the item's first train interaction (a new item when it was chosen), the rest as
  above; the served requests' share of new-item targets is what the ranker then learns from
  (``fresh_target_share``)."""
  pos = split.train_positives.sort_values(["user_id", "timestamp"], kind="stable")
  if queries_per_user is None:
    queries_per_user = -(-int(max_queries) // max(pos["user_id"].nunique(), 1))
  first = pos.groupby("item_id", sort=False)["timestamp"].transform("min")
  users, hists, targets, times, fresh = [], [], [], [], []
  for u, g in pos.groupby("user_id", sort=True):
    items = g["item_id"].to_numpy().astype(object)
    ts = g["timestamp"].to_numpy(np.int64)
    is_first = first.loc[g.index].to_numpy(np.int64) == ts
    last = set(range(max(1, len(items) - int(queries_per_user)), len(items)))
    for t in sorted(last | (set(np.flatnonzero(is_first[1:]) + 1) if fresh_share > 0 else set())):
      users.append(u)
      hists.append(items[:t])
      targets.append(items[t:t + 1])
      times.append(ts[t])
      fresh.append(t not in last)
  fresh = np.asarray(fresh, bool)
  regular = np.flatnonzero(~fresh)
  rng = np.random.default_rng(seed)
  n_fresh = min(int(round(float(fresh_share) * max_queries)), int(fresh.sum()))
  keep = regular if len(regular) <= max_queries - n_fresh else rng.choice(regular, size=int(max_queries) - n_fresh,
                                                                          replace=False)
  if n_fresh:
    keep = np.concatenate([keep, rng.choice(np.flatnonzero(fresh), size=n_fresh, replace=False)])
  keep = np.sort(keep)
  pick = lambda seq: [seq[i] for i in keep]  # noqa: E731
  return Queries(np.array(users, dtype=object)[keep], pick(hists), pick(targets), np.array(times, np.int64)[keep],
                 pick(hists), np.zeros(len(keep), bool), np.asarray(split.train_items, dtype=object))


def fresh_target_share(split, max_share: float = 0.5) -> float:
  """The share of validation targets that are new items (``Queries.cold``), at most ``max_share``: how often a
  served request's answer is an item without a past, which ``training_queries(fresh_share=...)`` reproduces."""
  valid = split.queries("valid")
  if not len(valid):
    return 0.0
  return float(min(np.mean(np.asarray(valid.cold, bool)), max_share))


def user_future_items(split) -> dict:
  """{user_id: set of item ids} of each user's validation and test targets (never labelled in training)."""
  out = {}
  for stage in ("valid", "test"):
    q = split.queries(stage)
    for u, t in zip(q.user_ids, q.targets):
      out.setdefault(u, set()).update(t)
  return out


class TrainPopularity:
  """Causal train popularity: how often each item was interacted with in ``train`` strictly before a time."""

  def __init__(self, train: pd.DataFrame, index: pd.Index):
    rows = index.get_indexer(train["item_id"].to_numpy().astype(object))
    t = train["timestamp"].to_numpy(np.int64)
    ok = rows >= 0
    self.t0 = int(t.min()) if len(t) else 0
    self.span = int(t.max()) - self.t0 + 2 if len(t) else 2
    self.keys = np.sort(rows[ok].astype(np.int64) * self.span + (t[ok] - self.t0))
    self.all_times = np.sort(t)

  def counts(self, rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """[...] int64 interactions of item ``rows`` before ``times`` (same shape; rows -1 -> 0)."""
    rows = np.asarray(rows, np.int64)
    tt = np.clip(np.asarray(times, np.int64) - self.t0, 0, self.span - 1)
    lo = np.searchsorted(self.keys, np.maximum(rows, 0) * self.span, side="left")
    hi = np.searchsorted(self.keys, np.maximum(rows, 0) * self.span + tt, side="left")
    return np.where(rows >= 0, hi - lo, 0)

  def total(self, times: np.ndarray) -> np.ndarray:
    return np.searchsorted(self.all_times, np.asarray(times, np.int64), side="left")


def _shared_prefix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[...] number of leading SID levels equal in ``a`` and ``b`` ([..., L] int each)."""
  eq = np.cumprod(a == b, axis=-1)
  return eq.sum(axis=-1)


class CascadeFeaturizer:
  """Turns merged candidates into ranker examples: the ranker's item rows plus [C + E] dense features.

  Args:
    item_features: The catalogue table (``sid`` [N, L]) the ranker reads.
    train: The train log (first-seen times, causal popularity).
    fresh_window: As ``CascadeConfig.fresh_window``.
    history_length: H.
  """

  def __init__(self, item_features: ItemFeatures, train: pd.DataFrame, fresh_window: int = 0,
               history_length: int = 20):
    from semrec.ranking.candidates import first_seen_times
    self.item_features = item_features
    self.index = catalogue_index(item_features.item_ids)
    self.sid = np.asarray(item_features.arrays["sid"], np.int64)
    self.train = train
    self.first_seen = first_seen_times(train, self.index)
    t = train["timestamp"].to_numpy(np.int64)
    self.train_span = float(max(int(t.max()) - int(t.min()), 1)) if len(t) else 1.0
    self.popularity = TrainPopularity(train, self.index)
    self.fresh_window = int(fresh_window)
    self.history_length = int(history_length)

  def history_rows(self, queries: Queries) -> np.ndarray:
    """[Q, H] int64 rows of each query's most recent H history items (most recent last; -1 padding)."""
    hist = queries.padded_histories(self.history_length)
    return self.index.get_indexer(hist.reshape(-1)).reshape(hist.shape).astype(np.int64)

  def dense(self, merged: MergedCandidates, queries: Queries, hist: np.ndarray) -> np.ndarray:
    """[Q, M, E] float32 cascade features (``cascade_feature_names(merged.sources)``)."""
    ranks, scores = merged.ranks, merged.scores
    present = ranks >= 0
    rr = np.where(present, 1.0 / (1.0 + np.maximum(ranks, 0)), 0.0)
    big = np.where(present, scores, np.inf).min(axis=1, keepdims=True)
    small = np.where(present, scores, -np.inf).max(axis=1, keepdims=True)
    lo = np.where(np.isfinite(big), big, 0.0)
    hi = np.where(np.isfinite(small), small, 0.0)
    scaled = np.where(present, (scores - lo) / np.maximum(hi - lo, 1e-9), 0.0)
    per_source = np.stack([present, rr, scaled], axis=-1).reshape(ranks.shape[0], ranks.shape[1], -1)
    rows = merged.rows
    L = self.sid.shape[1]
    cand_sid = self.sid[np.maximum(rows, 0)]  # [Q, M, L]
    recent = hist[:, -RECENT_FOR_SID:]  # [Q, R]
    rec_sid = self.sid[np.maximum(recent, 0)]  # [Q, R, L]
    depth = _shared_prefix(cand_sid[:, :, None, :], rec_sid[:, None, :, :])  # [Q, M, R]
    depth = np.where((recent >= 0)[:, None, :], depth, 0)
    t = np.asarray(queries.timestamps, np.int64)[:, None]
    first = self.first_seen[np.maximum(rows, 0)]
    fresh = first >= t - self.fresh_window
    age = np.where(first < t, np.clip((t - np.minimum(first, t)) / self.train_span, 0.0, 1.0), 0.0)
    count = self.popularity.counts(rows, np.broadcast_to(t, rows.shape))
    total = self.popularity.total(t)
    pop = np.log1p(count) / np.log1p(np.maximum(total, 1))
    item = np.stack([depth[:, :, -1] / L, depth.max(axis=-1) / L, fresh, age, pop], axis=-1)
    out = np.concatenate([per_source, item], axis=-1).astype(np.float32)
    return np.where((rows >= 0)[..., None], out, 0.0).astype(np.float32)

  def context(self, queries: Queries) -> np.ndarray:
    """[Q, C] request context (``semrec.ranking.context_features``) from the train log, causally."""
    frame = pd.DataFrame({"user_id": queries.user_ids, "timestamp": np.asarray(queries.timestamps, np.int64)})
    return context_features(frame, self.train)

  def examples(self, merged: MergedCandidates, queries: Queries, pairs: Optional[np.ndarray] = None,
               labels: Optional[np.ndarray] = None, chunk: int = 1024) -> RankingExamples:
    """``RankingExamples`` of (query, slot) ``pairs`` [n, 2] of ``merged`` (default every filled slot, query
    by query); context = [request context [C] ; cascade features [E]]; labels 0 unless given. The dense
    features are computed ``chunk`` queries at a time (memory ~ chunk x M x E)."""
    if pairs is None:
      q, s = np.nonzero(merged.rows >= 0)
      pairs = np.stack([q, s], axis=1)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    hist = self.history_rows(queries)
    ctx = self.context(queries)
    width = ctx.shape[1] + len(merged.sources) * len(PER_SOURCE_FEATURES) + len(ITEM_FEATURES)
    feats = np.zeros((len(pairs), width), np.float32)
    for lo in range(0, len(queries), chunk):
      hi = min(lo + chunk, len(queries))
      sel = np.flatnonzero((pairs[:, 0] >= lo) & (pairs[:, 0] < hi))
      if not len(sel):
        continue
      part = MergedCandidates(merged.rows[lo:hi], merged.ranks[lo:hi], merged.scores[lo:hi], merged.sources)
      dense = self.dense(part, queries.subset(np.arange(lo, hi)), hist[lo:hi])
      q, s = pairs[sel, 0], pairs[sel, 1]
      feats[sel] = np.concatenate([ctx[q], dense[q - lo, s]], axis=1)
    q, s = pairs[:, 0], pairs[:, 1]
    cand = merged.rows[q, s]
    return RankingExamples(candidate=cand.astype(np.int64), last=hist[q, -1], history=hist[q], context=feats,
                           labels={"label": (np.zeros(len(q), np.float32) if labels is None
                                             else np.asarray(labels, np.float32))},
                           item_ids=np.asarray(self.item_features.item_ids, dtype=object)[cand],
                           timestamps=np.asarray(queries.timestamps, np.int64)[q])


def with_extra(merged: MergedCandidates, extra: np.ndarray) -> MergedCandidates:
  """``merged`` with ``extra`` [Q, X] catalogue rows appended as slots no source returned (rank -1, score 0)."""
  Q, X, S = len(merged), extra.shape[1], len(merged.sources)
  return MergedCandidates(np.concatenate([merged.rows, extra], axis=1),
                          np.concatenate([merged.ranks, np.full((Q, X, S), -1, np.int32)], axis=1),
                          np.concatenate([merged.scores, np.zeros((Q, X, S), np.float32)], axis=1), merged.sources)


def explicit_negative_rows(split, queries: Queries, index: pd.Index) -> list:
  """Q int64 arrays of catalogue rows: per training query, the user's explicit negatives (``split.train`` rows
  with label 0) after the user's previous positive and up to the request time: what the user saw and rejected on
  the way to the target. Empty for implicit logs (every row a positive)."""
  empty = np.zeros(0, np.int64)
  neg = split.train[split.train["label"] <= 0]
  if not len(neg):
    return [empty] * len(queries)
  pos_times = {u: np.sort(g.to_numpy(np.int64)) for u, g in split.train_positives.groupby("user_id")["timestamp"]}
  by_user = {u: (g["timestamp"].to_numpy(np.int64), index.get_indexer(g["item_id"].to_numpy().astype(object)))
             for u, g in neg.groupby("user_id")}
  out = []
  for u, t in zip(queries.user_ids, np.asarray(queries.timestamps, np.int64)):
    if u not in by_user:
      out.append(empty)
      continue
    pt = pos_times.get(u, np.zeros(0, np.int64))
    i = int(np.searchsorted(pt, t, side="left"))
    prev = pt[i - 1] if i > 0 else np.iinfo(np.int64).min
    nt, nr = by_user[u]
    out.append(nr[(nt > prev) & (nt <= t) & (nr >= 0)])
  return out


def training_slots(merged: MergedCandidates, queries: Queries, index: pd.Index, future: dict,
                   config: CascadeConfig, explicit: Optional[list] = None, available=None) -> tuple:
  """(augmented MergedCandidates, pairs [n, 2] (query, slot), labels [n] float32) for training queries.

  Per query: its positive (the actual next item; appended as an extra slot when no source returned it), up
  to ``hard_negatives`` of its merged candidates and ``random_negatives`` uniform items of
  ``queries.candidates`` (the train items), none of them the positive, a history item or a validation / test
  item of the user (``future``, from ``user_future_items``), nor, with ``available`` (an item filter, e.g.
  ``available_item_filter``), an item outside the query's catalogue; then up to ``explicit_negatives`` of the
  query's ``explicit`` rows (``explicit_negative_rows``: labelled data's rejected items), appended as extra slots.
  Queries whose target is not in the catalogue are skipped.
  """
  rng = np.random.default_rng(config.seed + 17)
  pool = (index.get_indexer(np.asarray(queries.candidates, dtype=object)) if queries.candidates is not None
          else np.arange(len(index)))
  pool = pool[pool >= 0]
  M, R, X = merged.rows.shape[1], int(config.random_negatives), int(config.explicit_negatives)
  extra = np.full((len(queries), 1 + R + X), -1, np.int64)
  pairs, labels = [], []
  for q in range(len(queries)):
    target = index.get_indexer(np.asarray(queries.targets[q][:1], dtype=object))
    if not len(target) or target[0] < 0:
      continue
    pt = int(target[0])
    banned = {int(r) for r in index.get_indexer(np.asarray(
        list(queries.exclude[q]) + list(future.get(queries.user_ids[q], ())), dtype=object)) if r >= 0}
    banned.add(pt)
    row = merged.rows[q]
    hit = np.flatnonzero(row == pt)
    if len(hit):
      pairs.append((q, int(hit[0])))
    else:
      extra[q, 0] = pt
      pairs.append((q, M))
    labels.append(1.0)
    ok = np.array([s for s in np.flatnonzero(row >= 0) if int(row[s]) not in banned], np.int64)
    for s in rng.choice(ok, size=min(config.hard_negatives, len(ok)), replace=False) if len(ok) else ():
      pairs.append((q, int(s)))
      labels.append(0.0)
    taken = banned | {int(r) for r in row if r >= 0}
    qpool = pool if available is None else pool[np.asarray(available(queries, np.array([q])), bool)[0, pool]]
    draws = rng.choice(qpool, size=min(4 * R + 4, len(qpool)), replace=False) if (R and len(qpool)) else ()
    j = 0
    for r in draws:
      if j >= R:
        break
      if int(r) not in taken:
        extra[q, 1 + j] = int(r)
        pairs.append((q, M + 1 + j))
        labels.append(0.0)
        taken.add(int(r))
        j += 1
    rejected = [int(r) for r in (explicit[q] if explicit is not None else ()) if int(r) != pt][-X:] if X else []
    for j, r in enumerate(rejected):
      extra[q, 1 + R + j] = r
      pairs.append((q, M + 1 + R + j))
      labels.append(0.0)
  return (with_extra(merged, extra), np.asarray(pairs, np.int64).reshape(-1, 2), np.asarray(labels, np.float32))


# ----------------------------------------------------------------------------------------------- sources


def leave_own_transition_out(baseline) -> callable:
  """A training-query scorer from a fitted ``semrec.towers.TransitionBaseline``: its scores with the query's
  own (last item -> target) transition taken out of the counts, so a training positive is scored as it would
  be had this example not been in the train log."""
  n = len(baseline.index)

  def score_fn(queries: Queries, rows: np.ndarray) -> np.ndarray:
    out = baseline.scores(queries, rows)
    sub = queries.subset(rows)
    last = baseline.index.get_indexer(sub.last_items())
    tgt = baseline.index.get_indexer(np.array([t[0] if len(t) else "" for t in sub.targets], dtype=object))
    ok = np.flatnonzero((last >= 0) & (tgt >= 0))
    if len(ok):
      own = np.asarray(baseline.counts[last[ok], tgt[ok]]).reshape(-1)
      dec = ok[own >= 1]
      out[dec, tgt[dec]] -= n + 1
    return out

  return score_fn


def retriever_score_fn(model, inputs) -> callable:
  """A full-catalogue scorer from a trained ``semrec.towers.TwoTowerRetriever`` (its served dot products,
  multi-interest queries included)."""
  from semrec.towers import embed_candidates, query_embeddings
  from semrec.towers.evaluation import dot_scores
  cands = embed_candidates(model, inputs)

  def score_fn(queries: Queries, rows: np.ndarray) -> np.ndarray:
    return dot_scores(query_embeddings(model, inputs, queries.subset(rows)), cands)

  return score_fn


def evaluation_horizon(split) -> int:
  """The span of the split's evaluated period: latest minus earliest validation / test request time (0 without
  validation or test queries). A test request ranks items first seen up to this long after it."""
  times = [np.asarray(split.queries(st).timestamps, np.int64) for st in ("valid", "test")]
  times = np.concatenate([t for t in times if len(t)]) if any(len(t) for t in times) else np.zeros(0, np.int64)
  return int(times.max() - times.min()) if len(times) else 0


def resolved_horizon(config: CascadeConfig, split) -> int:
  """The training catalogue horizon: ``config.catalogue_horizon``, or ``evaluation_horizon(split)`` when None."""
  return int(config.catalogue_horizon) if config.catalogue_horizon is not None else evaluation_horizon(split)


def _score_fns(retrievers: Optional[dict]) -> dict:
  """{name: score_fn} from {name: (model, inputs) or a ready ``score_fn``}."""
  return {n: (r if callable(r) else retriever_score_fn(*r)) for n, r in (retrievers or {}).items()}


def choose_fresh_scorer(split, item_ids, scorers: dict, fresh_window: int = 0, k: int = 100,
                        min_cold_queries: int = 100) -> tuple:
  """(name, {name: validation recall}): the scorer of ``scorers`` ({name: score_fn}) whose top-``k`` among the
  fresh items (``fresh_item_filter``) holds the most validation new-item targets. "content_knn" (or the first
  scorer) when validation has fewer than ``min_cold_queries`` new-item targets (``selection_score``'s rule)."""
  from semrec.ranking.candidates import first_seen_times, fresh_item_filter
  if not scorers:
    raise ValueError("choose_fresh_scorer needs at least one scorer")
  default = "content_knn" if "content_knn" in scorers else next(iter(scorers))
  valid = split.queries("valid")
  cold = np.flatnonzero(np.asarray(valid.cold, bool)) if len(valid) else np.zeros(0, np.int64)
  if len(cold) < min_cold_queries or len(scorers) == 1:
    return default, {}
  index = catalogue_index(item_ids)
  q = valid.subset(cold)
  fresh = fresh_item_filter(first_seen_times(split.train, index), fresh_window)
  recall = {}
  for name, fn in scorers.items():
    res = ScoreSource(name, fn, item_filter=fresh).retrieve(q, k, index)
    recall[name] = candidate_recall(res.rows, target_rows(q, index))["overall"]
  best = max(recall, key=lambda n: (recall[n], n == default))
  return best, recall


def build_sources(split, item_ids, content: Optional[np.ndarray], retrievers: Optional[dict] = None,
                  fresh_window: int = 0, knn_decay: float = 0.5, training: bool = False, seed: int = 0,
                  fresh_scorer: str = "content_knn", catalogue_horizon: Optional[int] = None) -> list:
  """The cascade's sources, in merge priority order: each trained retriever (``retrievers``: {name: (model,
  inputs) or a ready ``score_fn``}), the fresh-item source (the items not seen before the request,
  ``fresh_item_filter``, ordered by ``fresh_scorer``: "content_knn" or a retriever's name), next-item transition
  counts, content kNN over the catalogue, popularity (the fallback).

  ``training=True`` builds the training-query variant: the transition source leaves each query's own transition
  out (``leave_own_transition_out``), and with ``catalogue_horizon`` every source ranks only the items available
  at the request (``available_item_filter``). ``seed`` orders the transition and popularity sources' equal
  counts (``semrec.towers.PopularityBaseline``). Without ``content`` there is no content kNN source, and a fresh
  source only when ``fresh_scorer`` names a retriever.
  """
  from semrec.ranking.candidates import all_of, available_item_filter, first_seen_times, fresh_item_filter
  from semrec.towers.baselines import ContentKnnBaseline, PopularityBaseline, TransitionBaseline
  index = catalogue_index(item_ids)
  fns = _score_fns(retrievers)
  first = first_seen_times(split.train, index)
  avail = (available_item_filter(first, int(catalogue_horizon)) if training and catalogue_horizon is not None
           else None)
  out = [ScoreSource(name, fn, item_filter=avail) for name, fn in fns.items()]
  knn = ContentKnnBaseline(decay=knn_decay).fit(split, item_ids, content) if content is not None else None
  if fresh_scorer != "content_knn" and fresh_scorer not in fns:
    raise ValueError(f"fresh_scorer {fresh_scorer!r} is neither 'content_knn' nor a retriever "
                     f"({sorted(fns)})")
  fresh_fn = fns[fresh_scorer] if fresh_scorer in fns else (knn.scores if knn is not None else None)
  if fresh_fn is not None:
    out.append(ScoreSource("fresh_items", fresh_fn, item_filter=all_of(fresh_item_filter(first, fresh_window),
                                                                       avail)))
  trans = TransitionBaseline(seed=seed).fit(split, item_ids)
  out.append(ScoreSource("transition", leave_own_transition_out(trans) if training else trans.scores, avail))
  if knn is not None:
    out.append(ScoreSource("content_knn", knn.scores, avail))
  out.append(ScoreSource("popularity", PopularityBaseline(seed=seed).fit(split, item_ids).scores, avail))
  return out


# ------------------------------------------------------------------------------------------------ ranker


def ranker_config(config: CascadeConfig, num_levels: int, codebook_size: int, context_dim: int,
                  content_dim: int = 0):
  """The ``RankerConfig`` of the cascade ranker (one task, "label"; the context carries the cascade
  features)."""
  from semrec.ranking.experiment import _rep_config
  from semrec.ranking.model import RankerConfig
  budget = max(int(config.table_budget), num_levels * codebook_size + 1)
  rep = _rep_config(config.mode, budget, num_levels, codebook_size, config.embedding_dim, content_dim)
  return RankerConfig(item_representation=rep, use_history=True, history_length=config.history_length,
                      tasks=("label",), context_dim=context_dim, batch_size=config.batch_size,
                      learning_rate=config.learning_rate, seed=config.seed)


def build_ranker(rconfig, item_features: ItemFeatures, train: pd.DataFrame):
  """An untrained ``Ranker`` for ``rconfig``; an SPM representation is trained on the train log's
  interaction-weighted SID corpus (train items only)."""
  from semrec.ranking.model import Ranker
  from semrec.ranking.training import compile_ranker
  from semrec.sid.adapters import ItemRepresentation
  rep = rconfig.item_representation
  spm = None
  if "spm" in rep.modes:
    from semrec.sid.spm import train_sid_spm
    index = catalogue_index(item_features.item_ids)
    rows = index.get_indexer(train.loc[train["label"] > 0, "item_id"].to_numpy().astype(object))
    weights = np.bincount(rows[rows >= 0], minlength=len(index))
    spm = train_sid_spm(np.asarray(item_features.arrays["sid"]), weights, vocab_size=rep.table_budget,
                        codebook_size=rep.codebook_size, item_ids=item_features.item_ids)
  import tensorflow as tf
  tf.keras.utils.set_random_seed(rconfig.seed)
  return compile_ranker(Ranker(rconfig, item_representation=ItemRepresentation(rep, spm=spm)))


@dataclasses.dataclass
class CascadeStage:
  """The candidates of one query set: the sources' results, their merge and the queries."""
  queries: Queries
  results: list
  merged: MergedCandidates


@dataclasses.dataclass
class Cascade:
  """A trained cascade: the ranker, its featurizers, the sources' names and the training record.

  Attributes:
    model: The trained ``semrec.ranking.Ranker`` (task "label").
    featurizer: The ``RankingFeaturizer`` of its item inputs.
    cascade_featurizer: The ``CascadeFeaturizer`` of its dense features.
    config: The ``CascadeConfig``.
    sources: Source names in merge order (the feature blocks of the ranker).
    history: Per epoch: training loss and validation final-list metrics.
    best_epoch: The epoch kept (1-based).
    train_examples: Training pairs per epoch.
    train_seconds: Wall time of candidate generation + training.
    blend_source: The source whose order is blended into the final list (``rank_blend``; None: the ranker's
      order alone), chosen on validation with ``blend_weight`` (``choose_blend``).
    blend_weight: w in [0, 1] of that source's rank.
    blend_scores: {"<source>@<w>": validation final-list NDCG@10} of the blends tried.
  """
  model: object
  featurizer: object
  cascade_featurizer: CascadeFeaturizer
  config: CascadeConfig
  sources: tuple
  history: list
  best_epoch: int
  train_examples: int
  train_seconds: float
  blend_source: Optional[str] = None
  blend_weight: float = 0.0
  blend_scores: dict = dataclasses.field(default_factory=dict)

  def final_scores(self, stage: CascadeStage, probabilities: Optional[np.ndarray] = None) -> np.ndarray:
    """[Q, M] float32 scores ordering each query's final list: the ranker's probabilities, or with a blend
    (``blend_weight`` > 0) ``rank_blend`` of them with ``blend_source``'s ranks (-inf on padding slots)."""
    p = self.scores(stage) if probabilities is None else probabilities
    return final_list_scores(p, stage.merged, self.blend_source, self.blend_weight)

  def scores(self, stage: CascadeStage, batch_size: int = 4096) -> np.ndarray:
    """[Q, M] float32 ranker probabilities of ``stage``'s merged candidates (-inf on padding slots)."""
    from semrec.ranking.training import predict
    ex = self.cascade_featurizer.examples(stage.merged, stage.queries)
    out = np.full(stage.merged.rows.shape, -np.inf, np.float32)
    if len(ex):
      p = predict(self.model, self.featurizer, ex, batch_size=batch_size)["label"]
      q, s = np.nonzero(stage.merged.rows >= 0)
      out[q, s] = p
    return out


BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def rank_blend(probabilities: np.ndarray, merged: MergedCandidates, source: int, weight: float) -> np.ndarray:
  """[Q, M] float32 -((1 - w) log(1 + r_ranker) + w log(1 + r_source)): a candidate's rank by the ranker's
  probability (ties: merge order) blended with its rank in source ``source`` (M when that source did not
  return it); -inf on padding. w = 0 orders as the ranker, w = 1 as the source (its list inside the merged
  candidates, the rest after)."""
  p = np.asarray(probabilities, np.float64)
  valid = merged.rows >= 0
  order = np.argsort(np.where(valid, -p, np.inf), axis=1, kind="stable")
  r_model = np.empty_like(order)
  np.put_along_axis(r_model, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
  r_src = merged.ranks[:, :, source].astype(np.float64)
  r_src = np.where(r_src >= 0, r_src, merged.rows.shape[1])
  out = -((1.0 - weight) * np.log1p(r_model) + weight * np.log1p(r_src))
  return np.where(valid, out, -np.inf).astype(np.float32)


def final_list_scores(probabilities: np.ndarray, merged: MergedCandidates, source: Optional[str],
                      weight: float) -> np.ndarray:
  """[Q, M] the final list's scores: the ranker's probabilities, or with a blend (``source`` named, ``weight`` >
  0) ``rank_blend`` of them with that source's ranks. The in-memory ``Cascade`` and the server both call this."""
  if not weight or source is None:
    return probabilities
  return rank_blend(probabilities, merged, merged.sources.index(source), weight)


def choose_blend(probabilities: np.ndarray, stage: CascadeStage, item_ids, sources: Sequence[str],
                 weights: Sequence[float] = BLEND_WEIGHTS) -> tuple:
  """(source or None, w, {"<source>@<w>": NDCG@10}): the blend of the ranker with one of ``sources`` whose final
  list has the best NDCG@10 on ``stage`` (validation), by ``semrec.towers.choose_point`` (the first best in grid
  order; w = 0, the ranker alone, comes first, so a tie keeps the ranker)."""
  from semrec.towers.tuning import choose_point

  def ndcg(scores):
    m = evaluate_list(stage.merged.rows, scores, stage.queries, item_ids, ks=(10,), ndcg_ks=(10,))
    return float(m["overall"]["ndcg@10"])

  table = {(None, 0.0): ndcg(probabilities)}
  for name in sources:
    j = stage.merged.sources.index(name)
    for w in weights:
      if w > 0:
        table[(name, float(w))] = ndcg(rank_blend(probabilities, stage.merged, j, w))
  (name, w), _ = choose_point(table)
  return name, w, {f"{k[0]}@{k[1]}": v for k, v in table.items()}


def subset_stage(stage: CascadeStage, rows: np.ndarray) -> CascadeStage:
  """The queries ``rows`` of ``stage`` (their sources' lists and merged candidates)."""
  m = stage.merged
  return CascadeStage(stage.queries.subset(rows), [SourceResult(r.name, r.rows[rows], r.scores[rows])
                                                   for r in stage.results],
                      MergedCandidates(m.rows[rows], m.ranks[rows], m.scores[rows], m.sources))


def candidate_stage(sources: Sequence[ScoreSource], queries: Queries, index: pd.Index, config: CascadeConfig,
                    quotas: Optional[dict] = None, executor=None) -> CascadeStage:
  """Every source on ``queries`` (top ``per_source``), merged to ``candidates`` per query. With ``executor`` (a
  ``concurrent.futures.Executor``, e.g. the server's thread pool) the sources run concurrently; the results and
  their order are the same."""
  def retrieve(source):
    return source.retrieve(queries, config.per_source, index)

  results = list(executor.map(retrieve, sources) if executor is not None else map(retrieve, sources))
  return CascadeStage(queries, results, merge_candidates(results, config.candidates, quotas))


def evaluate_list(rows: np.ndarray, scores: np.ndarray, queries: Queries, item_ids, ks=(5, 10, 20, 50, 100),
                  ndcg_ks=(5, 10), chunk: int = 1024) -> dict:
  """``semrec.towers.evaluate_scores``' metrics of per-query lists, without [Q, N] score matrices.

  ``rows`` [Q, L] catalogue rows (-1 padding) with ``scores`` [Q, L] (higher first). A target's rank is the
  number of list items ahead of it, ties broken by catalogue row as ``evaluate_scores`` does; a target outside
  its list is a miss at every K (a short, padded list is not topped up in catalogue order). The lists hold no
  removed item (the sources drop them), so for full lists (L >= K) this equals ``evaluate_scores`` over "list
  scores, every other item below".
  """
  from semrec.towers.evaluation import metrics_from_target_ranks, slice_metrics
  rows = np.asarray(rows, np.int64)
  sc = np.where(rows >= 0, np.asarray(scores, np.float64), -np.inf)
  index = catalogue_index(item_ids)
  tg = target_rows(queries, index)
  width = max((len(t) for t in tg), default=1) or 1
  tgm = np.full((len(tg), width), -1, np.int64)
  for i, t in enumerate(tg):
    tgm[i, :len(t)] = t
  ranks = np.full(tgm.shape, -1, np.int64)
  for lo in range(0, len(tgm), chunk):
    r, s, t = rows[lo:lo + chunk], sc[lo:lo + chunk], tgm[lo:lo + chunk]
    eq = (r[:, :, None] == t[:, None, :]) & (t >= 0)[:, None, :]  # [q, L, T]
    found, pos = eq.any(axis=1), eq.argmax(axis=1)  # [q, T]
    ts = np.take_along_axis(s, pos, axis=1)  # each found target's own score
    ahead = (s[:, :, None] > ts[:, None, :]) | ((s[:, :, None] == ts[:, None, :]) & (r[:, :, None] < t[:, None, :])
                                                & (r >= 0)[:, :, None])
    # not in the list: after it (a miss at every K <= N)
    ranks[lo:lo + chunk] = np.where(t < 0, -1, np.where(found, ahead.sum(axis=1), len(index)))
  per_query = metrics_from_target_ranks(ranks, ks, ndcg_ks)
  return slice_metrics(per_query, np.asarray(queries.cold, bool))


def source_list_order(result: SourceResult) -> np.ndarray:
  """[Q, k] scores that order a source's own list as it returned it (k, k - 1, ..., 1)."""
  k = result.rows.shape[1]
  return np.broadcast_to(np.arange(k, 0, -1, dtype=np.float64)[None, :], result.rows.shape)


def train_cascade(split, item_features: ItemFeatures, codebook_size: int, train_sources: Sequence[ScoreSource],
                  valid_stage: CascadeStage, config: Optional[CascadeConfig] = None, progress: bool = True,
                  blend_sources: Optional[Sequence[str]] = ()) -> Cascade:
  """Trains the cascade ranker on candidates of training queries from the train log (see the module
  docstring); the epoch with the best validation final-list NDCG@10 is kept.

  Args:
    split: The ``EvalSplit`` (its train log only feeds training; validation picks the epoch).
    item_features: Catalogue table with ``sid`` [N, L] (and ``content`` for a dense mode).
    codebook_size: K, the SID codebook size (codes in [0, K)).
    train_sources: ``build_sources(..., training=True, catalogue_horizon=resolved_horizon(config, split))``.
    valid_stage: ``candidate_stage`` of the validation queries with the serving sources.
    config: ``CascadeConfig``.
    blend_sources: Sources whose order may be blended into the final list (``choose_blend`` on validation;
      None: every source; empty: none, the ranker's order).
  """
  from semrec.ranking.model import needs_content
  from semrec.ranking.training import EpochMeanLoss, make_featurizer
  cfg = config or CascadeConfig()
  t0 = time.time()
  index = catalogue_index(item_features.item_ids)
  cf = CascadeFeaturizer(item_features, split.train, cfg.fresh_window, cfg.history_length)
  share = fresh_target_share(split) if cfg.fresh_share is None else float(cfg.fresh_share)
  tq = training_queries(split, cfg.queries_per_user, cfg.max_train_queries, cfg.seed, share)
  if not len(tq):
    raise ValueError("the train log has no user with two or more positives: no training query for the ranker")
  train_stage = candidate_stage(train_sources, tq, index, cfg)
  from semrec.ranking.candidates import available_item_filter
  available = available_item_filter(cf.first_seen, resolved_horizon(cfg, split))
  merged, pairs, labels = training_slots(train_stage.merged, tq, index, user_future_items(split), cfg,
                                         explicit_negative_rows(split, tq, index), available)
  ex = cf.examples(merged, tq, pairs, labels)
  sid = np.asarray(item_features.arrays["sid"])
  names = tuple(s.name for s in train_sources)
  rcfg = ranker_config(cfg, sid.shape[1], int(codebook_size), ex.context.shape[1],
                       item_features.arrays["content"].shape[1] if "content" in item_features.arrays else 0)
  model = build_ranker(rcfg, item_features, split.train)
  featurizer = make_featurizer(rcfg, item_features)
  cascade = Cascade(model, featurizer, cf, cfg, names, [], 0, len(ex), 0.0)
  if len(valid_stage.queries) > cfg.valid_queries:
    keep = np.sort(np.random.default_rng(cfg.seed + 29).choice(len(valid_stage.queries), cfg.valid_queries,
                                                               replace=False))
    valid_stage = subset_stage(valid_stage, keep)
  valid = valid_stage.queries
  best, best_weights = -1.0, None
  from tqdm.auto import tqdm
  for epoch in tqdm(range(cfg.max_epochs), desc="cascade ranker", disable=not progress, leave=False):
    if cascade.best_epoch and epoch - cascade.best_epoch >= cfg.patience:
      break
    ds = featurizer.dataset(ex, cfg.batch_size, shuffle=True, seed=cfg.seed * 7919 + epoch)
    mean_loss = EpochMeanLoss()
    model.fit(ds, epochs=1, verbose=0, callbacks=[mean_loss])
    scores = cascade.scores(valid_stage)
    m = evaluate_list(valid_stage.merged.rows, scores, valid, item_features.item_ids, ks=(10,), ndcg_ks=(10,))
    ndcg = float(m["overall"]["ndcg@10"])
    cascade.history.append({"epoch": epoch + 1, "loss": mean_loss.mean, "valid_ndcg@10": ndcg,
                            "valid_recall@10": float(m["overall"]["recall@10"])})
    if ndcg > best:
      best, best_weights, cascade.best_epoch = ndcg, model.get_weights(), epoch + 1
  model.set_weights(best_weights)
  blend = [n for n in (names if blend_sources is None else blend_sources) if n in names]
  if blend:
    cascade.blend_source, cascade.blend_weight, cascade.blend_scores = choose_blend(
        cascade.scores(valid_stage), valid_stage, item_features.item_ids, blend)
  cascade.train_seconds = round(time.time() - t0, 1)
  return cascade


def evaluate_cascade(cascade: Cascade, stage: CascadeStage, item_ids, ks=(5, 10, 20, 50, 100),
                     ndcg_ks=(5, 10)) -> dict:
  """The final list, each source's own list and the candidate recall on ``stage`` (e.g. the test queries).

  Returns {"final": metrics, "sources": {name: metrics}, "candidate_recall": {"merged": {slice: r},
  "<source>": {slice: r}}, "candidates": M}; metrics as ``semrec.towers.evaluate_scores`` (overall / warm /
  cold), history excluded as in retrieval (``evaluate_list``).
  """
  q = stage.queries
  final = evaluate_list(stage.merged.rows, cascade.final_scores(stage), q, item_ids, ks=ks, ndcg_ks=ndcg_ks)
  srcs = {r.name: evaluate_list(r.rows, source_list_order(r), q, item_ids,
                                ks=tuple(k for k in ks if k <= r.rows.shape[1]), ndcg_ks=ndcg_ks)
          for r in stage.results}
  targets = target_rows(q, catalogue_index(item_ids))
  cold = np.asarray(q.cold, bool)
  recall = {"merged": candidate_recall(stage.merged.rows, targets, cold)}
  for r in stage.results:
    recall[r.name] = candidate_recall(r.rows, targets, cold)
  return {"final": final, "sources": srcs, "candidate_recall": recall, "candidates": int(stage.merged.rows.shape[1])}
