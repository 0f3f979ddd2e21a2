"""The catalogue's valid SIDs as a trie compiled into dense per-level tables.

Shape letters: N items, S = L + 1 token levels (codes + collision suffix), P_l distinct prefixes of length l
(P_0 = 1: the empty prefix), V_l codes of level l.

``children[l]`` is a [P_l, V_l] int32 table: ``children[l][p, c]`` is the id of the prefix ``p + (c,)`` at
level l + 1, or -1 when no item continues prefix p with code c; at the last level (the suffix) it is the item's
row in ``item_ids`` instead. Beam search reads row p of level l to know which codes may follow, so a decoded SID
is always a catalogue item: invalid SIDs cannot be produced. Memory: sum_l P_l * V_l int32 cells, at most
N * (L * K + suffix_size) (5,000 items, K = 64, L = 3: 4.2 MB).

A trie is rebuilt from any SID table without retraining (``Trie.from_sid_table``): items assigned after
training become generable as soon as they are in the table (the cold-start path). Items already known to the
model keep their suffix (``stable_full_codes``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from semrec.data import DataError
from semrec.generative.vocab import SidVocabulary, check_unique, stable_full_codes


class Trie:
  """Valid SIDs of a catalogue.

  Attributes:
    item_ids: [N] object item ids (row order of the leaves).
    full_codes: [N, S] int32 codes + suffix.
    children: S arrays [P_l, V_l] int32 (see the module docstring).
  """

  def __init__(self, item_ids, full_codes, vocab: SidVocabulary):
    self.item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
    if len(self.item_ids) == 0:
      raise DataError("Trie: the SID table has no items: nothing could be generated")
    self.vocab = vocab
    self.full_codes = vocab.check_codes(full_codes, self.item_ids)
    if len(set(self.item_ids.tolist())) != len(self.item_ids):
      ids, counts = np.unique(self.item_ids.astype(str), return_counts=True)
      raise DataError(f"Trie: duplicate item ids, e.g. {ids[counts > 1][:3].tolist()}")
    check_unique(self.full_codes, self.item_ids)
    n, s = self.full_codes.shape
    self.children = []
    prefix = np.zeros(n, np.int64)  # each item's prefix id at the current level
    num_prefixes = 1
    for l in range(s):
      table = np.full((num_prefixes, vocab.level_sizes[l]), -1, np.int32)
      if l == s - 1:
        table[prefix, self.full_codes[:, l]] = np.arange(n, dtype=np.int32)
      else:
        keys = prefix * vocab.level_sizes[l] + self.full_codes[:, l]
        uniq, nxt = np.unique(keys, return_inverse=True)
        table[uniq // vocab.level_sizes[l], uniq % vocab.level_sizes[l]] = np.arange(len(uniq), dtype=np.int32)
        prefix, num_prefixes = nxt.reshape(-1).astype(np.int64), len(uniq)
      self.children.append(table)

  @classmethod
  def from_sid_table(cls, table, vocab: SidVocabulary, base_ids: Optional[Sequence] = None,
                     base_full_codes: Optional[np.ndarray] = None) -> "Trie":
    """The trie of ``table`` (a ``semrec.sid.SidTable``).

    Args:
      table: SID table; its suffix is used when set, else computed (``compute_suffix``).
      vocab: The model's vocabulary (codebook size, levels, suffix slots are checked against it).
      base_ids, base_full_codes: The training table's items and [N0, S] codes + suffix: those items keep their
        suffix, new items take the next free suffix of their collision group (``stable_full_codes``).
    """
    if table.num_levels != vocab.num_code_levels:
      raise DataError(f"SID table has {table.num_levels} levels, the model was trained with "
                      f"{vocab.num_code_levels} (field codes)")
    if table.codebook_size > vocab.codebook_size:
      raise DataError(f"SID table codebook_size={table.codebook_size} exceeds the model's {vocab.codebook_size} "
                      "(field codebook_size)")
    if base_ids is None and table.suffix is not None:
      full = np.concatenate([table.codes, table.suffix[:, None]], axis=1)
    else:
      full = stable_full_codes(table, base_ids, base_full_codes)
    return cls(table.item_ids, full, vocab)

  def __len__(self) -> int:
    return len(self.item_ids)

  @property
  def nbytes(self) -> int:
    return int(sum(c.nbytes for c in self.children))

  def subset(self, item_ids) -> "Trie":
    """The trie of ``item_ids`` only (same codes + suffix): e.g. a protocol's candidate items."""
    import pandas as pd
    rows = pd.Index(self.item_ids).get_indexer(np.asarray(item_ids, dtype=object))
    if (rows < 0).any():
      raise DataError(f"Trie.subset: item {str(np.asarray(item_ids)[np.argmax(rows < 0)])!r} is not in the trie")
    return Trie(self.item_ids[rows], self.full_codes[rows], self.vocab)

  def enumerate_sids(self) -> np.ndarray:
    """[N, S] every valid SID, by walking the tables (a check that the tables encode exactly ``full_codes``)."""
    out = []

    def walk(level, p, path):
      for c in np.flatnonzero(self.children[level][p] >= 0):
        nxt = int(self.children[level][p, c])
        if level == len(self.children) - 1:
          out.append((nxt, path + [int(c)]))
        else:
          walk(level + 1, nxt, path + [int(c)])

    walk(0, 0, [])
    res = np.zeros_like(self.full_codes)
    for row, path in out:
      res[row] = path
    return res


__all__ = ["Trie"]
