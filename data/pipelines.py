"""tf.data input pipelines built from interactions and per-item feature tables.

Shape letters: N items, B batch, H history length, L SID levels, D content width.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data.dataset import DataError

PAD_ITEM = ""  # the item id used to pad histories


@dataclasses.dataclass
class ItemFeatures:
  """Per-item feature arrays aligned with ``item_ids``.

  Attributes:
    item_ids: [N] object array of item ids.
    arrays: name -> [N, ...] array (e.g. ``sid`` [N, L] int32, ``content`` [N, D] float32,
      ``cluster_id`` [N] int32, ``quality`` [N, Q] float32).
  """
  item_ids: np.ndarray
  arrays: dict

  def __post_init__(self):
    self.item_ids = np.asarray(self.item_ids, dtype=object)
    for k, v in self.arrays.items():
      if len(v) != len(self.item_ids):
        raise DataError(f"item feature {k!r} has {len(v)} rows, expected {len(self.item_ids)}")
    self._index = pd.Index(self.item_ids)
    if not self._index.is_unique:
      raise DataError("ItemFeatures.item_ids has duplicates")

  def index_of(self, ids, allow_unknown: bool = False) -> np.ndarray:
    """[...] int64 row of each id; -1 for PAD_ITEM, and for unknown ids if ``allow_unknown``."""
    ids = np.asarray(ids, dtype=object)
    flat = ids.reshape(-1)
    idx = self._index.get_indexer(flat)
    unknown = (idx < 0) & (flat != PAD_ITEM)
    if unknown.any() and not allow_unknown:
      raise DataError(f"unknown item {flat[np.argmax(unknown)]!r} ({int(unknown.sum())} unknown ids)")
    return idx.reshape(ids.shape).astype(np.int64)

  def gather(self, ids, names: Optional[Sequence[str]] = None, allow_unknown: bool = False) -> dict:
    """name -> [*ids.shape, ...] arrays for ``ids``; padded/unknown rows are zeros."""
    idx = self.index_of(ids, allow_unknown=allow_unknown)
    out = {}
    for name in names or self.arrays:
      arr = self.arrays[name]
      rows = arr[np.maximum(idx, 0)]
      mask = (idx < 0).reshape(idx.shape + (1,) * (arr.ndim - 1))
      out[name] = np.where(mask, np.zeros_like(rows), rows)
    return out


def user_histories(interactions: pd.DataFrame, max_len: int, positives_only: bool = True,
                   context: Optional[pd.DataFrame] = None) -> np.ndarray:
  """[n, max_len] object array: each interaction's user's most recent earlier items (PAD_ITEM-padded).

  The history of a row holds only items the user interacted with strictly before the row's
  timestamp (positives only by default), most recent last. ``context`` (default: the same
  interactions) is the log histories are drawn from, e.g. train + test for test rows.
  """
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  ctx = interactions if context is None else context
  if positives_only and "label" in ctx.columns:
    ctx = ctx[ctx["label"] > 0]
  ctx = ctx.sort_values("timestamp", kind="stable")
  by_user = {u: (g["timestamp"].to_numpy(), g["item_id"].to_numpy()) for u, g in ctx.groupby("user_id", sort=False)}
  out = np.full((len(interactions), max_len), PAD_ITEM, dtype=object)
  users = interactions["user_id"].to_numpy()
  ts = interactions["timestamp"].to_numpy()
  for r in range(len(interactions)):
    hist = by_user.get(users[r])
    if hist is None:
      continue
    end = np.searchsorted(hist[0], ts[r], side="left")
    items = hist[1][max(0, end - max_len):end]
    if len(items):
      out[r, max_len - len(items):] = items
  return out


def make_tf_dataset(features: Mapping[str, np.ndarray], batch_size: int, shuffle: bool = False,
                    seed: int = 0, drop_remainder: bool = False, repeat: bool = False):
  """A batched ``tf.data.Dataset`` of dicts from aligned numpy arrays (object arrays become strings)."""
  import tensorflow as tf

  lengths = {k: len(v) for k, v in features.items()}
  if len(set(lengths.values())) != 1:
    raise DataError(f"feature arrays have different lengths: {lengths}")
  tensors = {k: (np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v))
             for k, v in features.items()}
  ds = tf.data.Dataset.from_tensor_slices(tensors)
  if shuffle:
    ds = ds.shuffle(min(next(iter(lengths.values())), 100_000), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
