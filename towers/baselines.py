"""Non-learned retrieval baselines, computed on the same split as the learned models (docs/protocols.md).

Shape letters: N catalogue items (``item_ids``), q queries in a batch, D content width, H history items used.

  popularity   train-part positive counts; equal counts in a SEEDED RANDOM order (``seed``), not catalogue
               order: item ids often follow release order, and a tie broken by id would smuggle that order
               into a figure meant to show the baseline's own signal.
  transition   C[a, b] = how often b directly follows a in a user's train sequence (``train_sequences``);
               a query is scored from its LAST history item: C[last, :], ties (including every item with
               count 0, and queries with an empty history) broken by the popularity order (whose own ties
               are the seeded random order above).
  content_knn  cosine between each candidate's content embedding and the recency-weighted sum of the
               (L2-normalised) content embeddings of the query's last ``num_recent`` (10) history items:
               weight decay**age, age 0 = the most recent item. Default decay 0.5: of {1.0, 0.8, 0.5}, the best
               mean validation Recall@10 over Scientific, MicroLens and MovieLens (leave_one_out;
               benchmarks/bench_baselines.py). The comparison picks the decay per split on the validation
               queries (``select_knn_decay``): on ``cold_items``, a set of held-out items rather than the next
               one, a flatter recency weight is better, and the baseline should be as strong as it can be.
               ``pooling="max"`` (not the default baseline; a reference for the multi-interest content mix of
               ``RetrieverConfig.content_mix_pooling``): the best cosine to any of those items, decay unused.

Each baseline: ``fit(split, item_ids, content=None) -> self`` and ``scores(queries, rows) -> [len(rows), N]``
float64, the ``score_fn`` shape of ``semrec.towers.evaluation.evaluate_scores``. popularity / transition
encode their tie-breaks in the scores, so their rankings are exact and repeatable for a seed. On
``cold_items`` the candidates have no train interactions: popularity and transition then reduce to the
seeded random order (no signal, chance level); they are still reported, as what a non-content recommender
would do. ``tie_break="catalogue"`` restores the old rule (ties -> the item listed first in ``item_ids``), the
rule of the dev-benchmarks reference figures.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import EvalSplit, Queries
from semrec.towers.evaluation import dot_scores, evaluate_scores


TIE_BREAKS = ("random", "catalogue")


def _tie_order(n: int, tie_break: str, seed: int) -> np.ndarray:
  """[n] int: each catalogue row's rank among tied items (lower = ranked higher)."""
  if tie_break not in TIE_BREAKS:
    raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
  return np.arange(n) if tie_break == "catalogue" else np.random.default_rng(seed).permutation(n)


def _popularity_rank_scores(split: EvalSplit, index: pd.Index, tie_break: str = "random",
                            seed: int = 0) -> np.ndarray:
  """[N] float64 in 1..N: N for the most popular item; equal counts in the ``_tie_order`` (seeded random, or
  the earlier catalogue item first)."""
  pos = split.train_positives
  rows = index.get_indexer(pos["item_id"].to_numpy().astype(object))
  counts = np.bincount(rows[rows >= 0], minlength=len(index))
  order = np.lexsort((_tie_order(len(index), tie_break, seed), -counts))  # by count desc, then the tie order
  out = np.empty(len(index), np.float64)
  out[order] = np.arange(len(index), 0, -1)
  return out


class PopularityBaseline:
  """Most-popular items in the train part (see the module docstring).

  Args:
    tie_break: "random" (default: equal counts in a seeded random order) or "catalogue" (the earlier item).
    seed: Seeds the random tie order.
  """

  name = "popularity"

  def __init__(self, tie_break: str = "random", seed: int = 0):
    _tie_order(0, tie_break, seed)  # validates tie_break
    self.tie_break, self.seed = tie_break, int(seed)

  def fit(self, split: EvalSplit, item_ids, content=None) -> "PopularityBaseline":
    self.index = pd.Index(np.asarray(item_ids, dtype=object))
    self.score_row = _popularity_rank_scores(split, self.index, self.tie_break, self.seed)
    return self

  def scores(self, queries: Queries, rows) -> np.ndarray:
    return np.broadcast_to(self.score_row, (len(rows), len(self.score_row))).copy()


class TransitionBaseline:
  """Next-item transition counts from the last history item (see the module docstring).

  Args:
    tie_break, seed: The tie order of the popularity order that breaks equal counts (``PopularityBaseline``).
  """

  name = "transition"

  def __init__(self, tie_break: str = "random", seed: int = 0):
    _tie_order(0, tie_break, seed)
    self.tie_break, self.seed = tie_break, int(seed)

  def fit(self, split: EvalSplit, item_ids, content=None) -> "TransitionBaseline":
    import scipy.sparse as sp
    self.index = pd.Index(np.asarray(item_ids, dtype=object))
    n = len(self.index)
    self.popularity = _popularity_rank_scores(split, self.index, self.tie_break, self.seed)
    src, dst = [], []
    for seq in split.train_sequences().values():
      r = self.index.get_indexer(seq)
      ok = (r[:-1] >= 0) & (r[1:] >= 0)
      src.append(r[:-1][ok])
      dst.append(r[1:][ok])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    self.counts = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n), dtype=np.float64)
    self.counts.sum_duplicates()
    return self

  def scores(self, queries: Queries, rows) -> np.ndarray:
    """count * (N + 1) + popularity rank score: counts first, the popularity order within equal counts."""
    n = len(self.index)
    last = self.index.get_indexer(queries.subset(rows).last_items())
    out = np.broadcast_to(self.popularity, (len(last), n)).copy()
    has = last >= 0
    if has.any():
      out[has] += self.counts[last[has]].toarray() * (n + 1)
    return out


class ContentKnnBaseline:
  """Content kNN of the recent history (see the module docstring).

  Args:
    num_recent: H, how many of the most recent history items form the user vector.
    decay: Geometric recency weight per step back in the history (1 = plain mean, 0.5 = default).
    pooling: "mean" (the user vector above) or "max" (a candidate's best cosine to any of the H items).
  """

  name = "content_knn"

  def __init__(self, num_recent: int = 10, decay: float = 0.5, pooling: str = "mean"):
    if num_recent < 1 or not 0.0 < decay <= 1.0:
      raise ValueError(f"need num_recent >= 1 and decay in (0, 1], got {num_recent}, {decay}")
    if pooling not in ("mean", "max"):
      raise ValueError(f"pooling must be 'mean' or 'max', got {pooling!r}")
    self.num_recent, self.decay, self.pooling = int(num_recent), float(decay), pooling

  def fit(self, split: EvalSplit, item_ids, content=None) -> "ContentKnnBaseline":
    """``content``: [N, D] float embeddings aligned with ``item_ids`` (rows are L2-normalised here)."""
    if content is None:
      raise ValueError("content_knn needs content embeddings aligned with item_ids")
    x = np.asarray(content, np.float64)
    if x.ndim != 2 or len(x) != len(item_ids):
      raise ValueError(f"content must be [N={len(item_ids)}, D], got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
      raise ValueError(f"item {np.asarray(item_ids)[np.argmax(bad)]!r}: content embedding has NaN/inf values")
    self.index = pd.Index(np.asarray(item_ids, dtype=object))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    self.unit = np.concatenate([x / np.maximum(norms, 1e-12), np.zeros((1, x.shape[1]))])  # row N = padding
    return self

  def _history_rows(self, queries: Queries, rows) -> np.ndarray:
    """[q, H] catalogue rows of the last H history items, most recent last (N = padding)."""
    hist = queries.subset(rows).padded_histories(self.num_recent)
    r = self.index.get_indexer(hist.reshape(-1)).reshape(hist.shape)
    return np.where(r < 0, len(self.index), r)

  def user_vectors(self, queries: Queries, rows) -> np.ndarray:
    """[q, D] unit user vectors (zeros for an empty history)."""
    return self.history_vectors(self._history_rows(queries, rows))

  def history_vectors(self, rows: np.ndarray) -> np.ndarray:
    """[q, D] unit recency-weighted means of ``rows`` [q, H] int catalogue rows (most recent last; N = padding)."""
    w = self.decay ** np.arange(rows.shape[1] - 1, -1, -1, dtype=np.float64)  # age 0 = last column
    u = np.einsum("qh,qhd->qd", np.broadcast_to(w, rows.shape), self.unit[rows])
    return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)

  def scores(self, queries: Queries, rows) -> np.ndarray:
    if self.pooling == "mean":
      return self.user_vectors(queries, rows) @ self.unit[:-1].T
    hist = self._history_rows(queries, rows)  # [q, H]
    # A padding slot repeats the most recent known item (as ContentMix does), so the max is over the real
    # items; an empty history is all padding rows (zeros) and scores 0 everywhere.
    real = hist != len(self.index)
    last = np.where(real, np.arange(hist.shape[1]), 0).max(axis=1)
    hist = np.where(real, hist, hist[np.arange(len(hist)), last][:, None])
    return dot_scores(self.unit[hist], self.unit[:-1], dtype=np.float64)


BASELINES = {"popularity": PopularityBaseline, "transition": TransitionBaseline, "content_knn": ContentKnnBaseline}


def evaluate_baselines(split: EvalSplit, item_ids, content: Optional[np.ndarray] = None, stage: str = "test",
                       names: Optional[Sequence[str]] = None, knn_num_recent: int = 10, knn_decay: float = 0.5,
                       knn_pooling: str = "mean", tie_break: str = "random", seed: int = 0,
                       **eval_kwargs) -> dict:
  """{name: ``evaluate_scores`` metrics} of the baselines on ``split.queries(stage)``.

  Args:
    split: An ``EvalSplit`` (``semrec.data.make_split``).
    item_ids: [N] catalogue item ids (e.g. ``dataset.item_ids``).
    content: Optional [N, D] content embeddings aligned with ``item_ids`` (content_knn is skipped without).
    stage: "valid" or "test".
    names: Baselines to run (default all that the inputs allow).
    knn_num_recent, knn_decay, knn_pooling: ``ContentKnnBaseline`` settings.
    tie_break, seed: popularity / transition tie order ("random": seeded by ``seed``; "catalogue").
    **eval_kwargs: Passed to ``evaluate_scores`` (ks, ndcg_ks, exclude_history, candidates, batch_size).
  """
  names = tuple(names) if names is not None else tuple(
      n for n in BASELINES if n != "content_knn" or content is not None)
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; expected a subset of {tuple(BASELINES)}")
  queries = split.queries(stage)
  out = {}
  for name in names:
    model = (ContentKnnBaseline(knn_num_recent, knn_decay, knn_pooling) if name == "content_knn"
             else BASELINES[name](tie_break=tie_break, seed=seed))
    model.fit(split, item_ids, content)
    out[name] = evaluate_scores(lambda rows, m=model: m.scores(queries, rows), queries, item_ids, **eval_kwargs)
  return out


KNN_DECAYS = (1.0, 0.8, 0.5)


def select_knn_decay(split: EvalSplit, item_ids, content: np.ndarray, decays: Sequence[float] = KNN_DECAYS,
                     k: int = 10, **eval_kwargs) -> tuple:
  """(decay, {decay: validation Recall@k}): the content-kNN recency decay with the best overall Recall@k on
  ``split.queries("valid")`` (ties -> the first in ``decays``). Test queries are never looked at."""
  scores = {}
  for d in decays:
    m = evaluate_baselines(split, item_ids, content, stage="valid", names=("content_knn",), knn_decay=d,
                           ks=(k,), **eval_kwargs)["content_knn"]
    scores[float(d)] = float(m["overall"][f"recall@{k}"])
  best = max(scores, key=lambda d: (scores[d], -list(scores).index(d)))
  return best, scores


__all__ = ["BASELINES", "KNN_DECAYS", "TIE_BREAKS", "ContentKnnBaseline", "PopularityBaseline", "TransitionBaseline",
           "evaluate_baselines", "select_knn_decay"]
