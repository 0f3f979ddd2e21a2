"""Ranking examples: candidate item, last item, user history and context, gathered in tf.data.

Every interaction becomes one example. Its item features are stored as *row indices* into an
``ItemFeatures`` table and gathered inside the tf.data pipeline, so a history of H items with
D-wide content never materialises as an [n, H, D] array in memory.

Shape letters: n examples, N items, B batch, H history length, L SID levels, D content width,
C context width. Feature keys (the model inputs and, unchanged, the serving signature inputs):

  candidate_item_id  [B] string          candidate_sid  [B, L] int32   candidate_content  [B, D] float32
  last_item_id       [B] string          last_sid       [B, L] int32   last_content       [B, D] float32
  history_item_id    [B, H] string       history_sid    [B, H, L] int32 history_content   [B, H, D] float32
  context            [B, C] float32

``*_content`` keys are present only when the item representation needs content (dense modes);
``history_*`` keys only when the model uses history. Padding (no last item, short history) is the
item id ``""`` with zero codes / zero content.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import PAD_ITEM, DataError, ItemFeatures, user_histories

ITEM_SLOTS = ("candidate", "last", "history")
CONTEXT_COLUMNS = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos", "log_user_activity", "user_positive_rate")
CONTEXT_DIM = len(CONTEXT_COLUMNS)


def context_features(interactions: pd.DataFrame, log: pd.DataFrame) -> np.ndarray:
  """[n, C] float32 request context: time of day and of week (sin/cos), the user's activity and
  the user's positive rate.

  Both user columns are causal (computed from the user's interactions in ``log`` strictly before
  the row's timestamp, so they are available at serving time): ``log_user_activity`` =
  log1p(count) / 5, ``user_positive_rate`` = (positives + 1) / (count + 2) (0.5 with no past).
  """
  ts = interactions["timestamp"].to_numpy(np.int64)
  # Per row, count the same user's earlier log entries: one searchsorted over (user, time) keys
  # sorted together (vectorised; O((n + log) log log) instead of a pass per user).
  users = pd.Index(pd.unique(pd.concat([log["user_id"], interactions["user_id"]], ignore_index=True)))
  log_t = log["timestamp"].to_numpy(np.int64)
  t0 = min(int(log_t.min()) if len(log_t) else 0, int(ts.min()) if len(ts) else 0)
  span = max(int(log_t.max()) if len(log_t) else 0, int(ts.max()) if len(ts) else 0) - t0 + 2
  log_key = users.get_indexer(log["user_id"]).astype(np.int64) * span + (log_t - t0)
  order = np.argsort(log_key, kind="stable")
  log_key = log_key[order]
  log_y = log["label"].to_numpy(np.float64)[order] if "label" in log.columns else np.zeros(len(log))
  cum_y = np.concatenate([[0.0], np.cumsum(log_y)])
  q_u = users.get_indexer(interactions["user_id"]).astype(np.int64)
  start = np.searchsorted(log_key, q_u * span, side="left")
  end = np.searchsorted(log_key, q_u * span + (ts - t0), side="left")
  return context_from_counts(ts, end - start, cum_y[end] - cum_y[start])


def context_from_counts(timestamps: np.ndarray, activity: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """[n, C] float32 request context (``context_features``' columns) from request times [n] int64 and the user's
  earlier interaction count and positive count [n] (the serving path counts them per user without pandas)."""
  ts = np.asarray(timestamps, np.int64)
  activity = np.asarray(activity, np.float64)
  positives = np.asarray(positives, np.float64)
  hour = (ts % 86400) / 86400.0
  weekday = ((ts // 86400) % 7) / 7.0
  out = np.stack([np.sin(2 * np.pi * hour), np.cos(2 * np.pi * hour), np.sin(2 * np.pi * weekday),
                  np.cos(2 * np.pi * weekday), np.log1p(activity) / 5.0, (positives + 1) / (activity + 2)],
                 axis=1)
  return out.reshape(len(ts), -1).astype(np.float32)


@dataclasses.dataclass
class RankingExamples:
  """Examples in index form (rows of an ``ItemFeatures`` table; -1 = padding).

  Attributes:
    candidate: [n] int64 candidate item rows (never -1).
    last: [n] int64 row of the item the user interacted with just before (any label); -1 if none.
    history: [n, H] int64 rows of the user's earlier positive items, most recent last; -1 padded.
    context: [n, C] float32 context features (see ``CONTEXT_COLUMNS``).
    labels: task name -> [n] float32 {0, 1} targets.
    item_ids: [n] object candidate item ids.
    timestamps: [n] int64 interaction timestamps.
  """
  candidate: np.ndarray
  last: np.ndarray
  history: np.ndarray
  context: np.ndarray
  labels: dict
  item_ids: np.ndarray
  timestamps: np.ndarray

  def __len__(self):
    return len(self.candidate)

  def take(self, rows) -> "RankingExamples":
    """The examples at ``rows`` (an index array or boolean mask)."""
    return RankingExamples(self.candidate[rows], self.last[rows], self.history[rows], self.context[rows],
                           {k: v[rows] for k, v in self.labels.items()}, self.item_ids[rows],
                           self.timestamps[rows])


class RankingFeaturizer:
  """Turns interactions into ``RankingExamples`` and those into feature dicts / tf.data.

  Args:
    item_features: Per-item table with ``sid`` [N, L] int32 codes and optionally ``content`` [N, D].
    history_length: H, the number of earlier positive items kept per example.
    tasks: Label columns of the interactions used as targets (e.g. ``("label", "like")``).
    include_content: Emit ``*_content`` features (needed only by dense representations).
    include_history: Emit ``history_*`` features.
  """

  def __init__(self, item_features: ItemFeatures, history_length: int = 20,
               tasks: Sequence[str] = ("label", "like"), include_content: bool = False,
               include_history: bool = True):
    if "sid" not in item_features.arrays:
      raise DataError("item_features has no 'sid' array (expected [N, L] int32 SID codes)")
    sid = np.asarray(item_features.arrays["sid"])
    if sid.ndim != 2 or not np.issubdtype(sid.dtype, np.integer):
      raise DataError(f"item_features 'sid' must be an [N, L] integer array, got {sid.dtype} {sid.shape}")
    if include_content:
      if "content" not in item_features.arrays:
        raise DataError("item_features has no 'content' array, needed by a dense item representation")
      content = np.asarray(item_features.arrays["content"], np.float32)
      bad = ~np.isfinite(content).all(axis=1)
      if bad.any():
        raise DataError(f"item {item_features.item_ids[np.argmax(bad)]!r}: field 'content' has NaN/inf values")
    if history_length < 1:
      raise ValueError(f"history_length must be >= 1, got {history_length}")
    self.item_features = item_features
    self.history_length = int(history_length)
    self.tasks = tuple(tasks)
    self.include_content = bool(include_content)
    self.include_history = bool(include_history)
    self.sid_length = int(sid.shape[1])
    # Item table with one extra all-padding row at the end: index -1 -> that row.
    ids = np.asarray(item_features.item_ids, dtype=object).astype(str)
    self._ids = np.concatenate([ids, np.array([PAD_ITEM], dtype=str)])
    self._sid = np.concatenate([sid.astype(np.int32), np.zeros((1, sid.shape[1]), np.int32)])
    self._content = None
    if include_content:
      c = np.asarray(item_features.arrays["content"], np.float32)
      self._content = np.concatenate([c, np.zeros((1, c.shape[1]), np.float32)])

  @property
  def content_dim(self) -> Optional[int]:
    return None if self._content is None else int(self._content.shape[1])

  def examples(self, interactions: pd.DataFrame, log: Optional[pd.DataFrame] = None) -> RankingExamples:
    """Builds examples for ``interactions``; histories and context are drawn causally from ``log``.

    ``log`` (default: ``interactions``) should be every interaction known, e.g. the full dataset:
    a row only ever sees log entries strictly before its own timestamp.
    """
    log = interactions if log is None else log
    missing = [t for t in self.tasks if t not in interactions.columns]
    if missing:
      raise DataError(f"interactions lack task column(s) {missing}; have {list(interactions.columns)}")
    fi = self.item_features
    candidate = fi.index_of(interactions["item_id"].to_numpy())
    last_ids = user_histories(interactions, 1, positives_only=False, context=log)[:, 0]
    last = fi.index_of(last_ids, allow_unknown=True)
    hist_ids = user_histories(interactions, self.history_length, positives_only=True, context=log)
    history = fi.index_of(hist_ids, allow_unknown=True)
    labels = {t: interactions[t].to_numpy(np.float32) for t in self.tasks}
    return RankingExamples(candidate=candidate, last=last, history=history,
                           context=context_features(interactions, log), labels=labels,
                           item_ids=interactions["item_id"].to_numpy().astype(object),
                           timestamps=interactions["timestamp"].to_numpy(np.int64))

  def _history(self, ex: RankingExamples) -> np.ndarray:
    """The most recent ``history_length`` columns of ``ex.history`` (examples may hold more)."""
    if ex.history.shape[1] < self.history_length:
      raise ValueError(f"examples hold {ex.history.shape[1]} history items, the featurizer needs "
                       f"{self.history_length}")
    return ex.history[:, ex.history.shape[1] - self.history_length:]

  def _slot(self, prefix: str, rows: np.ndarray) -> dict:
    rows = np.where(rows < 0, len(self._ids) - 1, rows)
    out = {f"{prefix}_item_id": self._ids[rows], f"{prefix}_sid": self._sid[rows]}
    if self._content is not None:
      out[f"{prefix}_content"] = self._content[rows]
    return out

  def features(self, ex: RankingExamples) -> dict:
    """Gathered numpy feature dict (see module docstring) for a small set of examples."""
    out = {**self._slot("candidate", ex.candidate), **self._slot("last", ex.last)}
    if self.include_history:
      out.update(self._slot("history", self._history(ex)))
    out["context"] = ex.context
    return out

  def dataset(self, ex: RankingExamples, batch_size: int, shuffle: bool = False, seed: int = 0):
    """A batched tf.data.Dataset of ``(features, labels)`` with features gathered per batch."""
    import tensorflow as tf

    pad = len(self._ids) - 1
    idx = {"candidate": ex.candidate, "last": np.where(ex.last < 0, pad, ex.last),
           "context": ex.context, "labels": {t: ex.labels[t] for t in self.tasks}}
    if self.include_history:
      idx["history"] = np.where(self._history(ex) < 0, pad, self._history(ex))
    ds = tf.data.Dataset.from_tensor_slices(idx)
    if shuffle:
      ds = ds.shuffle(min(len(ex), 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ids_t = tf.constant(self._ids)
    sid_t = tf.constant(self._sid)
    content_t = None if self._content is None else tf.constant(self._content)

    def gather(b):
      feats = {}
      for slot in ITEM_SLOTS:
        if slot not in b:
          continue
        rows = b[slot]
        feats[f"{slot}_item_id"] = tf.gather(ids_t, rows)
        feats[f"{slot}_sid"] = tf.gather(sid_t, rows)
        if content_t is not None:
          feats[f"{slot}_content"] = tf.gather(content_t, rows)
      feats["context"] = b["context"]
      return feats, b["labels"]

    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class SequentialSplit:
  """Production-style sequential protocol: train on periods 1..N in order, evaluate on N+1.

  Attributes:
    train_periods: N interaction frames, oldest first.
    eval_period: The interactions of period N+1.
    cold_items: Sorted item ids first seen in the eval period (the paper's CTR/1D slice).
  """
  train_periods: list
  eval_period: pd.DataFrame
  cold_items: np.ndarray

  def is_cold(self, item_ids) -> np.ndarray:
    return np.isin(np.asarray(item_ids, dtype=object), self.cold_items)

  def summary(self) -> dict:
    ev_cold = self.is_cold(self.eval_period["item_id"].to_numpy())
    return {"train_periods": len(self.train_periods),
            "train_interactions": int(sum(len(p) for p in self.train_periods)),
            "eval_interactions": int(len(self.eval_period)),
            "eval_cold_interactions": int(ev_cold.sum()),
            "cold_items": int(len(self.cold_items))}


def daily_split(interactions: pd.DataFrame, day_column: str = "day", max_train_rows_per_day: Optional[int] = None,
                seed: int = 0, max_eval_rows: Optional[int] = None) -> SequentialSplit:
  """The paper's protocol by calendar day: train on days 1..N-1 in order, evaluate on day N (the last).

  Args:
    interactions: The full log with an integer ``day_column``.
    day_column: Column holding each row's day.
    max_train_rows_per_day: If set, each training day keeps a uniform random sample of at most this
      many rows (time order kept), to bound training cost; the eval day is kept whole. Cold items
      are still judged against the *full* log (items with no impression before the eval day).
    seed: Seed of that sample.
    max_eval_rows: If set, the eval day keeps a uniform random sample of at most this many rows.
  """
  if day_column not in interactions.columns:
    raise DataError(f"interactions have no {day_column!r} column; have {list(interactions.columns)}")
  inter = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
  days = np.sort(inter[day_column].unique())
  if len(days) < 2:
    raise DataError(f"daily_split needs at least 2 days, got {len(days)}")
  rng = np.random.default_rng(seed)
  train = []
  for d in days[:-1]:
    p = inter[inter[day_column].to_numpy() == d]
    if max_train_rows_per_day is not None and len(p) > max_train_rows_per_day:
      p = p.iloc[np.sort(rng.choice(len(p), size=int(max_train_rows_per_day), replace=False))]
    train.append(p.reset_index(drop=True))
  ev = inter[inter[day_column].to_numpy() == days[-1]]
  if max_eval_rows is not None and len(ev) > max_eval_rows:
    ev = ev.iloc[np.sort(rng.choice(len(ev), size=int(max_eval_rows), replace=False))]
  ev = ev.reset_index(drop=True)
  seen = inter.loc[inter[day_column].to_numpy() < days[-1], "item_id"].unique()
  cold = np.sort(np.setdiff1d(ev["item_id"].unique(), seen)).astype(object)
  return SequentialSplit(train_periods=train, eval_period=ev, cold_items=cold)


def sequential_split(interactions: pd.DataFrame, num_periods: int) -> SequentialSplit:
  """Cuts ``interactions`` into ``num_periods`` time periods: the first N-1 train, the last evaluates."""
  from semrec.data import time_periods

  periods = time_periods(interactions, num_periods)
  train, ev = periods[:-1], periods[-1]
  seen = pd.unique(pd.concat([p["item_id"] for p in train], ignore_index=True))
  cold = np.sort(np.setdiff1d(ev["item_id"].unique(), seen)).astype(object)
  return SequentialSplit(train_periods=train, eval_period=ev, cold_items=cold)
