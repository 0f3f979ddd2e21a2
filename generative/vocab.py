"""SID tokens: the vocabulary of the generative retriever and the tokenisation of histories.

Shape letters: N items, L code levels (the SID table's ``num_levels``), S = L + 1 token levels (the codes plus
the collision suffix as its own level), B batch, H history items, V vocabulary size, U user buckets.

Token layout (``SidVocabulary``), one id space shared by the encoder and the decoder:

  0                              PAD  (an empty history slot)
  1                              BOS  (the decoder's first input)
  2                              EOS  (closes every encoder input, so an empty history still has one token)
  3 + l * K + c                  code c of level l, l < L (codebook size K)
  3 + L * K + s                  collision suffix s (suffix_size slots, fixed at training time)
  3 + L * K + suffix_size + u    user bucket u (only with num_user_buckets > 0)

So ``<a_12><b_200><c_7><s_1>`` with K = 256 is [3 + 12, 3 + 256 + 200, 3 + 512 + 7, 3 + 768 + 1].

The suffix makes every SID unique (TIGER). The generative model learns suffix tokens, so an item's suffix must
not change after training: ``stable_full_codes`` keeps the suffix of every item the model was trained with and
gives new items the next free suffix of their collision group (``SidTable.with_suffix`` would renumber a whole
group by item id when a new item joins it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data import DataError
from semrec.sid import SidTable, compute_suffix

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3


@dataclasses.dataclass(frozen=True)
class SidVocabulary:
  """The token id space (see the module docstring).

  Attributes:
    num_code_levels: L, levels of the SID table (the suffix level comes on top).
    codebook_size: K, codes per level.
    suffix_size: Collision-suffix slots (suffixes 0 .. suffix_size - 1 are representable).
    num_user_buckets: U, user-bucket tokens (0 = none).
  """
  num_code_levels: int
  codebook_size: int
  suffix_size: int
  num_user_buckets: int = 0

  def __post_init__(self):
    for name in ("num_code_levels", "codebook_size", "suffix_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"SidVocabulary.{name} must be >= 1, got {getattr(self, name)}")
    if self.num_user_buckets < 0:
      raise ValueError(f"SidVocabulary.num_user_buckets must be >= 0, got {self.num_user_buckets}")

  @property
  def num_levels(self) -> int:
    """S = L + 1 token levels per item."""
    return self.num_code_levels + 1

  @property
  def level_sizes(self) -> tuple:
    """[S] codes per token level: K for each code level, ``suffix_size`` for the suffix."""
    return (self.codebook_size,) * self.num_code_levels + (self.suffix_size,)

  @property
  def level_offsets(self) -> tuple:
    """[S] token id of code 0 of each level."""
    return tuple(NUM_SPECIAL + l * self.codebook_size for l in range(self.num_levels))

  @property
  def user_offset(self) -> int:
    return NUM_SPECIAL + self.num_code_levels * self.codebook_size + self.suffix_size

  @property
  def vocab_size(self) -> int:
    return self.user_offset + self.num_user_buckets

  def level_mask(self) -> np.ndarray:
    """[S, V] float32 additive mask: 0 on level l's tokens, -1e9 elsewhere (row l = decoder step l)."""
    out = np.full((self.num_levels, self.vocab_size), -1e9, np.float32)
    for l, (o, n) in enumerate(zip(self.level_offsets, self.level_sizes)):
      out[l, o:o + n] = 0.0
    return out

  def check_codes(self, full_codes: np.ndarray, item_ids) -> np.ndarray:
    """``full_codes`` [N, S] int as int32; DataError naming the item and the level when a code is out of range."""
    c = np.asarray(full_codes)
    if c.ndim != 2 or c.shape[1] != self.num_levels:
      raise DataError(f"SID codes must be [num_items, {self.num_levels}] (L={self.num_code_levels} levels + suffix), "
                      f"got shape {c.shape}")
    sizes = np.asarray(self.level_sizes)
    bad = (c < 0) | (c >= sizes[None, :])
    if bad.any():
      r, l = np.argwhere(bad)[0]
      what = "suffix" if l == self.num_code_levels else f"level {l}"
      raise DataError(f"item {str(np.asarray(item_ids)[r])!r}: SID {what} code {int(c[r, l])} is out of range "
                      f"[0, {sizes[l]}) (field sid[{l}]; "
                      + ("raise GenerativeConfig.suffix_size before training)" if l == self.num_code_levels
                         else f"codebook_size={self.codebook_size})"))
    return c.astype(np.int32)

  def tokens(self, full_codes: np.ndarray) -> np.ndarray:
    """[..., S] codes (already checked) -> [..., S] int32 token ids."""
    return (np.asarray(full_codes, np.int64) + np.asarray(self.level_offsets)).astype(np.int32)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def table_full_codes(table: SidTable) -> np.ndarray:
  """[N, L + 1] codes + suffix of ``table`` (the suffix computed by ``compute_suffix`` when it has none)."""
  suffix = table.suffix if table.suffix is not None else compute_suffix(table.codes, table.item_ids)
  return np.concatenate([table.codes, np.asarray(suffix, np.int32)[:, None]], axis=1).astype(np.int32)


def stable_full_codes(table: SidTable, base_ids: Optional[np.ndarray] = None,
                      base_full_codes: Optional[np.ndarray] = None) -> np.ndarray:
  """[N, L + 1] codes + suffix of ``table``, keeping the suffix of the items in ``base_ids``.

  Items of ``base_ids`` (the training table) keep ``base_full_codes``'s suffix when their codes are unchanged;
  every other item gets the smallest suffix not taken in its collision group, in item-id order. Without a base
  this is ``table_full_codes``.
  """
  if base_ids is None:
    return table_full_codes(table)
  codes = table.codes
  out = np.concatenate([codes, np.full((len(codes), 1), -1, np.int32)], axis=1)
  base = pd.Index(np.asarray(base_ids, dtype=object))
  rows = base.get_indexer(table.item_ids)
  keep = rows >= 0
  keep[keep] = (np.asarray(base_full_codes)[rows[keep], :-1] == codes[keep]).all(axis=1)
  out[keep, -1] = np.asarray(base_full_codes)[rows[keep], -1]
  taken = {}
  for r in np.flatnonzero(keep):
    taken.setdefault(tuple(codes[r]), set()).add(int(out[r, -1]))
  for r in sorted(np.flatnonzero(~keep), key=lambda i: table.item_ids[i]):
    used = taken.setdefault(tuple(codes[r]), set())
    s = 0
    while s in used:
      s += 1
    used.add(s)
    out[r, -1] = s
  return out.astype(np.int32)


def check_unique(full_codes: np.ndarray, item_ids) -> None:
  """DataError naming two items that share the same codes + suffix (a trie leaf must be one item)."""
  c = np.asarray(full_codes)
  if len(c) < 2:
    return
  order = np.lexsort([c[:, l] for l in reversed(range(c.shape[1]))])
  same = (c[order][1:] == c[order][:-1]).all(axis=1)
  if same.any():
    i = int(np.argmax(same))
    a, b = str(np.asarray(item_ids)[order[i]]), str(np.asarray(item_ids)[order[i + 1]])
    raise DataError(f"items {a!r} and {b!r} have the same SID {c[order[i]].tolist()} including the collision suffix "
                    "(field suffix): a generated SID must name one item; use SidTable.with_suffix() or leave the "
                    "suffix unset so that it is computed")


def item_rows(index: pd.Index, histories: np.ndarray, num_items: int, unknown: str = "error") -> np.ndarray:
  """[B, H] object item ids ("" = padding) -> [B, H] int32 rows of ``index`` (``num_items`` = padding).

  Args:
    unknown: "error" (DataError naming the item and the history row) or "ignore" (treated as padding).
  """
  h = np.asarray(histories, dtype=object)
  if h.ndim != 2:
    raise DataError(f"histories must be [num_queries, H] item ids, got shape {h.shape}")
  r = index.get_indexer(h.reshape(-1).astype(object)).reshape(h.shape)
  pad = (h == "") | pd.isna(h)
  bad = (r < 0) & ~pad
  if bad.any():
    if unknown == "error":
      q, j = np.argwhere(bad)[0]
      raise DataError(f"history {q}: item {str(h[q, j])!r} (field history_item_id, position {j}) is not in the SID "
                      "table (unknown item)")
    if unknown != "ignore":
      raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
  return np.where(r < 0, num_items, r).astype(np.int32)


def pad_left(seqs, max_len: int) -> np.ndarray:
  """Q sequences (most recent last) -> [Q, max_len] object, the last ``max_len`` items, "" padded on the left."""
  out = np.full((len(seqs), max_len), "", dtype=object)
  for q, s in enumerate(seqs):
    s = list(s)[-max_len:]
    if s:
      out[q, max_len - len(s):] = s
  return out


__all__ = ["BOS", "EOS", "PAD", "NUM_SPECIAL", "SidVocabulary", "check_unique", "item_rows", "pad_left",
           "stable_full_codes", "table_full_codes"]
