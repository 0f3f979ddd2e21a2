"""The offline next-item table (YouTube's unpersonalised variant of generative retrieval).

Shape letters: N_h head items in the table, k next items per entry, B lookups.

For each of the ``num_items`` most frequent items (by train interactions), the top-k next items decoded from a
one-item history [item]; the item itself is excluded (``exclude_history``). Served by a lookup SavedModel
(``NextItemTableModule``: a ``tf.lookup.StaticHashTable`` item id -> table row); an item not in the table is not
an error but a miss: its row is "" / ``NO_ITEM_SCORE`` with ``found = False``, and the caller falls back to
another source. ``coverage`` = the share of the counted interactions whose item is in the table (a lookup on
the item just consumed finds an entry that often).
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import tensorflow as tf

from semrec.generative.beam import NO_ITEM_SCORE


@dataclasses.dataclass
class NextItemTable:
  """Attributes:
    item_ids: [N_h] object head items (most frequent first).
    next_ids: [N_h, k] object decoded next items ("" = empty slot).
    scores: [N_h, k] float32 sequence log-probs.
    coverage: {"interactions": share of the counted interactions on head items, "items": N_h / catalogue,
      "counted_interactions": int, "catalogue_items": int}.
  """
  item_ids: np.ndarray
  next_ids: np.ndarray
  scores: np.ndarray
  coverage: dict


def build_next_item_table(model, interactions_item_ids, num_items: int = 1000, k: int = 10,
                          beam_width: int = 20, catalogue_size: int = 0) -> NextItemTable:
  """The table of the ``num_items`` most frequent items of ``interactions_item_ids`` (one id per interaction).

  Args:
    model: ``semrec.generative.GenerativeModel``.
    interactions_item_ids: [n] item ids (e.g. the train positives' ``item_id``); ties in count -> id order.
    num_items: N_h. k, beam_width: decoding.
    catalogue_size: for ``coverage["items"]`` (default the model's SID table size).
  """
  counts = Counter(str(i) for i in interactions_item_ids)
  known = set(model.item_ids.tolist())
  ranked = sorted((i for i in counts if i in known), key=lambda i: (-counts[i], i))[:int(num_items)]
  head = np.asarray(ranked, dtype=object)
  if len(head):
    nxt, sc = model.retrieve(head[:, None], k=k, beam_width=max(beam_width, k))
  else:
    nxt, sc = np.zeros((0, k), object), np.zeros((0, k), np.float32)
  total = sum(counts.values())
  covered = sum(counts[i] for i in ranked)
  cat = int(catalogue_size or len(model.item_ids))
  coverage = {"interactions": covered / total if total else 0.0, "items": len(head) / cat if cat else 0.0,
              "counted_interactions": int(total), "catalogue_items": cat, "table_items": int(len(head))}
  return NextItemTable(head, nxt, sc, coverage)


class NextItemTableModule(tf.Module):
  """Lookup SavedModel module: ``serve({"item_id": [B] string}) -> {"item_ids": [B, k] string, "scores": [B, k]
  float32, "found": [B] bool}`` (a miss returns "" / ``NO_ITEM_SCORE`` and found = False)."""

  def __init__(self, table: NextItemTable, name=None):
    super().__init__(name=name)
    n, k = table.next_ids.shape if table.next_ids.ndim == 2 else (0, 0)
    self.k = int(k)
    self.index = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(np.asarray(table.item_ids, dtype=str)),
                                            tf.range(len(table.item_ids), dtype=tf.int64)), default_value=-1)
    ids = np.concatenate([np.asarray(table.next_ids, dtype=str).reshape(n, k), np.full((1, k), "")]).astype(bytes)
    sc = np.concatenate([np.asarray(table.scores, np.float32).reshape(n, k), np.full((1, k), NO_ITEM_SCORE)])
    self.next_ids = tf.Variable(ids, trainable=False, name="next_ids")
    self.next_scores = tf.Variable(sc.astype(np.float32), trainable=False, name="next_scores")
    self.input_specs = {"item_id": tf.TensorSpec([None], tf.string, name="item_id")}
    self.serve = tf.function(self._serve, input_signature=[dict(self.input_specs)])

  def _serve(self, features):
    row = self.index.lookup(features["item_id"])
    found = row >= 0
    miss = tf.cast(tf.shape(self.next_ids)[0] - 1, tf.int64)
    row = tf.where(found, row, miss)
    return {"item_ids": tf.gather(self.next_ids, row), "scores": tf.gather(self.next_scores, row), "found": found}


__all__ = ["NextItemTable", "NextItemTableModule", "build_next_item_table"]
