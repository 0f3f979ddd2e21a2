"""tf.data inputs for the two-tower retriever, gathered per batch from per-item feature tables.

Shape letters: n rows (interactions), N items, B batch, H history length, L SID levels, D content width,
Q quality features.

Each row is one positive interaction: the query side is the user id, the request ``timestamp`` and the
user's history of earlier positive items (``semrec.data.user_histories``); the candidate side is the
interacted item. Item features (SID codes, content, cluster id, quality f(p)) are not copied per row:
rows hold item row numbers, and a ``tf.data`` map gathers the feature tables per batch, so a history of
H items with 384-d content costs memory per batch, not per row.

Batch layout (nested dict):
  user_id string [B]; timestamp int64 [B]; item_prob float32 [B] (train frequency of the item, for logQ)
  item:    {"item_id" string [B], "sid" int32 [B, L], "content" float32 [B, D], "cluster_id" int32 [B],
            "quality" float32 [B, Q]}   (the keys present in the tables)
  history: {"item_id" string [B, H], "sid" int32 [B, H, L], "content" [B, H, D], "cluster_id" [B, H]}

Unknown items (ids without a row in ``ItemFeatures``) are a documented fallback, not an error: their
content row is zeros and their SID / cluster-id rows are -1, which the towers map to zero vectors (and their quality row is the new-item prior when a ``QualityVector`` is used),
while their id string is kept, so a hashed item-ID part still sees them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import PAD_ITEM, ItemFeatures, user_histories
from semrec.sid.adapters import ID_KNOWN

_ITEM_KEYS = ("sid", "content", "lexical", "cluster_id", ID_KNOWN)  # unknown / padding rows: 0 (float), -1 (int)


class RetrievalInputs:
  """Per-item feature tables + the functions that turn interaction rows into model batches.

  Args:
    item_features: ``ItemFeatures`` over the full catalogue (keys among "sid", "content", "lexical",
      "cluster_id").
    feature_names: Which item-feature keys to feed (e.g. ``model.item_encoder.required_features()``);
      default all of them. "item_id" is always fed.
    max_history: H, the history length per row.
    quality: Optional [N, Q] float32 f(p), aligned with ``item_features.item_ids``.
    unknown_quality: Optional [Q] f(p) for unknown items (default zeros).
  """

  def __init__(self, item_features: ItemFeatures, feature_names: Optional[Sequence[str]] = None,
               max_history: int = 20, quality: Optional[np.ndarray] = None,
               unknown_quality: Optional[np.ndarray] = None):
    self.item_features = item_features
    names = [k for k in (feature_names or item_features.arrays) if k != "item_id"]
    missing = [k for k in names if k not in item_features.arrays]
    if missing:
      raise KeyError(f"item features {missing} requested but ItemFeatures has only {sorted(item_features.arrays)}")
    self.feature_names = [k for k in names if k in _ITEM_KEYS or k.startswith("cluster_k")]
    self.max_history = int(max_history)
    n = len(item_features.item_ids)
    self.tables = {}
    for k in self.feature_names:
      arr = np.asarray(item_features.arrays[k])
      if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if bad.any():
          raise ValueError(f"item {item_features.item_ids[np.argmax(bad)]!r}: feature {k!r} has NaN/inf values")
      else:
        arr = arr.astype(np.int32)
      # One extra row that padding and unknown items gather: zeros for content, -1 for codes and
      # cluster ids (ItemRepresentation and ItemEncoder map -1 to a zero vector).
      fill = 0 if arr.dtype.kind == "f" else -1
      self.tables[k] = np.concatenate([arr, np.full((1,) + arr.shape[1:], fill, arr.dtype)])
    self.quality_dim = 0
    if quality is not None:
      q = np.asarray(quality, np.float32)
      if q.shape[0] != n:
        raise ValueError(f"quality has {q.shape[0]} rows, expected {n}")
      bad = ~np.isfinite(q).all(axis=1)
      if bad.any():
        raise ValueError(f"item {item_features.item_ids[np.argmax(bad)]!r}: quality features have NaN/inf values")
      unk = np.zeros(q.shape[1], np.float32) if unknown_quality is None else np.asarray(unknown_quality, np.float32)
      self.tables["quality"] = np.concatenate([q, unk[None]])
      self.quality_dim = q.shape[1]
    self._pad_row = n

  @property
  def num_items(self) -> int:
    return self._pad_row

  def rows_of(self, ids) -> np.ndarray:
    """[...] int64 table rows of ``ids``; padding and unknown ids -> the zero row N."""
    idx = self.item_features.index_of(ids, allow_unknown=True)
    return np.where(idx < 0, self._pad_row, idx)

  def encode(self, interactions: pd.DataFrame, context: Optional[pd.DataFrame] = None,
             item_probs: Optional[pd.Series] = None) -> dict:
    """Per-row numpy arrays (user_id, timestamp, item_id, history [n, H], item_prob) for ``interactions``.

    Args:
      interactions: Rows to encode (typically positives).
      context: The log histories are drawn from (default ``interactions``); e.g. train + test for test rows.
      item_probs: item_id -> sampling probability (for logQ); default uniform 1/N.
    """
    hist = user_histories(interactions, self.max_history, context=context)
    items = interactions["item_id"].astype(str).to_numpy().astype(object)
    if item_probs is not None:
      p = pd.Series(item_probs).reindex(items).to_numpy(np.float64)
      floor = float(np.nanmin(p[p > 0])) if np.any(p > 0) else 1.0 / self.num_items
      p = np.where(np.isfinite(p) & (p > 0), p, floor)
    else:
      p = np.full(len(items), 1.0 / self.num_items)
    return {"user_id": interactions["user_id"].astype(str).to_numpy().astype(object),
            "timestamp": interactions["timestamp"].to_numpy(np.int64),
            "item_id": items, "history": hist, "item_prob": p.astype(np.float32)}

  def _item_dict(self, ids, rows, with_quality: bool):
    import tensorflow as tf
    out = {"item_id": ids}
    for k in self.feature_names:
      out[k] = tf.gather(self._tf_tables[k], rows)
    if with_quality and "quality" in self.tables:
      out["quality"] = tf.gather(self._tf_tables["quality"], rows)
    return out

  def _negatives(self, num_negatives: int):
    """{"negatives": item dict [S], "num_items": N}: S uniform catalogue draws (-1 = every item, in order)."""
    import tensorflow as tf
    n = self.num_items
    if num_negatives < 0 or num_negatives >= n:
      rows = tf.range(n, dtype=tf.int64)
    else:
      rows = tf.random.uniform([num_negatives], 0, n, dtype=tf.int64)
    ids = tf.gather(self._tf_ids, rows)
    return {"negatives": self._item_dict(ids, rows, True), "num_items": tf.constant(n, tf.int64)}

  def _ensure_tf(self):
    import tensorflow as tf
    if not hasattr(self, "_tf_tables"):
      self._tf_tables = {k: tf.constant(v) for k, v in self.tables.items()}
      self._tf_ids = tf.constant(np.asarray(self.item_features.item_ids).astype(str))

  def dataset(self, encoded: dict, batch_size: int, shuffle: bool = False, seed: int = 0,
              drop_remainder: bool = False, num_negatives: int = 0):
    """A batched ``tf.data.Dataset`` of model batches (see the module docstring) from ``encode`` output.

    ``num_negatives`` != 0 adds ``negatives`` (S uniformly sampled items per batch; -1 = the catalogue).
    """
    import tensorflow as tf
    self._ensure_tf()
    n = len(encoded["item_id"])
    base = {"user_id": encoded["user_id"].astype(str), "timestamp": encoded["timestamp"],
            "item_id": encoded["item_id"].astype(str), "item_row": self.rows_of(encoded["item_id"]),
            "history": encoded["history"].astype(str), "history_rows": self.rows_of(encoded["history"]),
            "item_prob": encoded["item_prob"]}
    ds = tf.data.Dataset.from_tensor_slices(base)
    if shuffle:
      ds = ds.shuffle(min(n, 200_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def _to_batch(b):
      out = {"user_id": b["user_id"], "timestamp": b["timestamp"], "item_prob": b["item_prob"],
             "item": self._item_dict(b["item_id"], b["item_row"], True),
             "history": self._item_dict(b["history"], b["history_rows"], False)}
      return {**out, **self._negatives(num_negatives)} if num_negatives else out

    return ds.map(_to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

  def sequence_dataset(self, sequences, batch_size: int, item_probs: Optional[pd.Series] = None,
                       num_negatives: int = 0, shuffle: bool = True, seed: int = 0):
    """Batches for every-prefix training of a sequential query tower.

    Each sequence (time-ordered item ids) is cut into windows of ``max_history + 1`` items from its end
    (``sequence_windows``); a window gives history = its first H items and target = its last H items
    (position t's target is the item after t), left-padded with "".

    Batch: history{... [B, H]}, target{... [B, H] incl. quality}, target_prob float32 [B, H] (train
    frequency of the target, for logQ; default uniform), and with ``num_negatives`` negatives{... [S]},
    num_items.
    """
    import tensorflow as tf
    self._ensure_tf()
    hist, tgt = sequence_windows(sequences, self.max_history)
    if item_probs is not None:
      p = pd.Series(item_probs).reindex(tgt.reshape(-1)).to_numpy(np.float64).reshape(tgt.shape)
      p = np.where(np.isfinite(p) & (p > 0), p, 1.0 / self.num_items)
    else:
      p = np.full(tgt.shape, 1.0 / self.num_items)
    base = {"history": hist.astype(str), "history_rows": self.rows_of(hist), "target": tgt.astype(str),
            "target_rows": self.rows_of(tgt), "target_prob": p.astype(np.float32)}
    ds = tf.data.Dataset.from_tensor_slices(base)
    if shuffle:
      ds = ds.shuffle(min(len(hist), 200_000), seed=seed, reshuffle_each_iteration=True)

    def _to_batch(b):
      out = {"history": self._item_dict(b["history"], b["history_rows"], False),
             "target": self._item_dict(b["target"], b["target_rows"], True), "target_prob": b["target_prob"]}
      return {**out, **self._negatives(num_negatives)} if num_negatives else out

    return ds.batch(batch_size).map(_to_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

  def catalogue_dataset(self, batch_size: int = 1024, item_ids=None):
    """Batches of item-feature dicts (with quality) over ``item_ids`` (default the whole catalogue)."""
    import tensorflow as tf
    self._ensure_tf()
    ids = self.item_features.item_ids if item_ids is None else np.asarray(item_ids, dtype=object)
    ds = tf.data.Dataset.from_tensor_slices({"item_id": ids.astype(str), "row": self.rows_of(ids)})
    return ds.batch(batch_size).map(lambda b: self._item_dict(b["item_id"], b["row"], True))

  def exclusions(self, encoded: dict, context: pd.DataFrame) -> list:
    """Per row: table rows of every item the row's user interacted with strictly before its timestamp."""
    ctx = context.sort_values("timestamp", kind="stable")
    by_user = {u: (g["timestamp"].to_numpy(), self.rows_of(g["item_id"].astype(str).to_numpy().astype(object)))
               for u, g in ctx.groupby("user_id", sort=False)}
    out = []
    empty = np.zeros(0, np.int64)
    for u, t in zip(encoded["user_id"], encoded["timestamp"]):
      h = by_user.get(u)
      if h is None:
        out.append(empty)
        continue
      end = np.searchsorted(h[0], t, side="left")
      r = h[1][:end]
      out.append(r[r < self._pad_row])
    return out


def sequence_windows(sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Every-prefix training windows: ([n, max_len] histories, [n, max_len] targets), object, "" left-padded.

  A sequence s of length L >= 2 is cut from its end into windows of up to max_len + 1 items that overlap by
  one item (ends at L, L - max_len, ...), so each item after the first is a target exactly once and sees up
  to max_len earlier items of its window. Sequences with fewer than 2 items give no window.

  >>> h, t = sequence_windows([["a", "b", "c"]], 3)   # h = [["", "a", "b"]], t = [["", "b", "c"]]
  """
  hists, tgts = [], []
  for seq in (sequences.values() if isinstance(sequences, dict) else sequences):
    seq = np.asarray(seq, dtype=object)
    end = len(seq)
    while end >= 2:
      w = seq[max(0, end - max_len - 1):end]
      h = np.full(max_len, PAD_ITEM, dtype=object)
      t = np.full(max_len, PAD_ITEM, dtype=object)
      h[max_len - len(w) + 1:] = w[:-1]
      t[max_len - len(w) + 1:] = w[1:]
      hists.append(h)
      tgts.append(t)
      end -= max_len
  if not hists:
    raise ValueError("no sequence has 2 or more items: nothing to train a sequential tower on")
  return np.stack(hists), np.stack(tgts)


def item_frequencies(interactions: pd.DataFrame) -> pd.Series:
  """item_id -> fraction of ``interactions`` rows with that item (the logQ sampling probability)."""
  counts = interactions["item_id"].astype(str).value_counts()
  return counts / counts.sum()


__all__ = ["RetrievalInputs", "item_frequencies", "sequence_windows", "PAD_ITEM"]
