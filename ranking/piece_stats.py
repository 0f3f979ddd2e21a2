"""Why a representation helps (or not) new items: piece support, unseen pieces, collisions.

Every table mode of ``ItemRepresentation`` reads rows ("pieces": a hashed id, n-gram spans or SPM
pieces) per item. Measured on the training impressions and on the items new in the eval period:

- ``new_unseen_share``: share of a new item's lookups that no trained item reads (those rows never
  got a gradient: the new item falls back to their random initialisation);
- ``new_piece_support``: median, over new items' lookups, of the training impressions reaching the
  row (how well trained what a new item falls back to is);
- ``items_per_row``: impression-weighted mean number of distinct trained items sharing a row (random
  collisions for ``random_hash``, meaningful sharing for SID modes);
- ``rows_used``: distinct rows the training items read, and ``lookups_per_item`` (mean).

Shape letters: N items, P lookups per item (-1 = none).
"""
from __future__ import annotations

import numpy as np


def unseen_piece_share(pieces: np.ndarray, trained: np.ndarray, rows: np.ndarray) -> float:
  """Share of the pieces of items ``rows`` that no trained item uses.

  Args:
    pieces: [N, P] row ids per item, -1 padded.
    trained: [N] bool, items with training impressions.
    rows: Item rows to measure (e.g. the new items).
  """
  used = np.unique(pieces[trained][pieces[trained] >= 0])
  p = pieces[rows]
  p = p[p >= 0]
  return float(np.mean(~np.isin(p, used))) if p.size else float("nan")


def row_support(pieces: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """[max row + 1] float64: training impressions reaching each row (sum of ``weights`` of every item
  reading it; an item reading a row twice counts twice)."""
  valid = pieces >= 0
  n = int(pieces.max()) + 1 if valid.any() else 0
  support = np.zeros(n, np.float64)
  np.add.at(support, pieces[valid], np.broadcast_to(np.asarray(weights, np.float64)[:, None], pieces.shape)[valid])
  return support


def piece_support(pieces: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> float:
  """Median, over the pieces of items ``rows``, of the training impressions reaching each piece.

  Args:
    pieces: [N, P] row ids per item, -1 padded.
    weights: [N] training impressions per item.
    rows: Item rows to measure.
  """
  support = row_support(pieces, weights)
  p = pieces[rows]
  p = p[p >= 0]
  return float(np.median(support[p])) if p.size else float("nan")


def items_per_row(pieces: np.ndarray, weights: np.ndarray) -> float:
  """Impression-weighted mean, over trained items' lookups, of the distinct trained items per row."""
  trained = np.asarray(weights) > 0
  p = pieces[trained]
  item = np.broadcast_to(np.flatnonzero(trained)[:, None], p.shape)
  valid = p >= 0
  pairs = np.unique(np.stack([p[valid], item[valid]], 1), axis=0)  # distinct (row, item)
  count = np.bincount(pairs[:, 0], minlength=int(p.max()) + 1 if valid.any() else 0)
  w = np.broadcast_to(np.asarray(weights, np.float64)[trained][:, None], p.shape)[valid]
  return float(np.sum(count[p[valid]] * w) / np.sum(w)) if w.size else float("nan")


def lookup_statistics(pieces: np.ndarray, weights: np.ndarray, new_rows: np.ndarray) -> dict:
  """All statistics of the module docstring for one representation's [N, P] lookups."""
  trained = np.asarray(weights) > 0
  tp = pieces[trained]
  return {"rows_used": int(np.unique(tp[tp >= 0]).size),
          "lookups_per_item": float(np.mean((pieces >= 0).sum(1))),
          "new_unseen_share": unseen_piece_share(pieces, trained, new_rows),
          "new_piece_support": piece_support(pieces, weights, new_rows),
          "items_per_row": items_per_row(pieces, weights)}


def representation_lookups(layer, codes: np.ndarray, item_ids: np.ndarray, batch_size: int = 65536) -> dict:
  """mode -> [N, P] int64 rows an ``ItemRepresentation`` reads for every item (dense modes omitted)."""
  import tensorflow as tf
  out = {}
  for s in range(0, len(codes), batch_size):
    ids = layer.lookup_ids({"sid": tf.constant(codes[s:s + batch_size].astype(np.int64)),
                            "item_id": tf.constant(np.asarray(item_ids[s:s + batch_size]).astype(str))})
    for m, v in ids.items():
      out.setdefault(m, []).append(v.numpy())
  return {m: np.concatenate(v) for m, v in out.items()}
