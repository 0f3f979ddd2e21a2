"""The item -> Semantic ID table: codes, the optional uniqueness suffix, cluster IDs; save/load.

Shape letters: N items, L levels.

Readable tokens: level l's code c is written ``<x_c>`` with x = "a", "b", "c", ... for levels
1, 2, 3, ...; the uniqueness suffix, when present, is ``<s_n>``: ``<a_12><b_200><c_7><s_1>``.
"""
from __future__ import annotations

import json
import os
import string
from typing import Dict, Mapping, Optional, Union

import numpy as np

from semrec.data import DataError

FORMAT_VERSION = 1


def level_letter(level: int) -> str:
  """0 -> "a", 1 -> "b", ..., 25 -> "z", 26 -> "aa", ... (level prefixes of readable tokens)."""
  letters = string.ascii_lowercase
  out = ""
  level += 1
  while level:
    level, rem = divmod(level - 1, 26)
    out = letters[rem] + out
  return out


def compute_suffix(codes: np.ndarray, item_ids) -> np.ndarray:
  """TIGER-style disambiguation: each item's index within its collision group.

  Items sharing the same codes are ordered by item id (string order, a fixed order independent of
  row order) and numbered 0, 1, 2, ...; an item with a unique SID gets 0.

  Args:
    codes: [N, L] int codes.
    item_ids: [N] ids.

  Returns:
    [N] int32 suffix; (codes, suffix) is unique per item.
  """
  codes = np.asarray(codes)
  ids = np.asarray(item_ids).astype(str)
  n = codes.shape[0]
  suffix = np.zeros(n, np.int32)
  if n == 0:
    return suffix
  # Sort by (codes..., item id); runs of equal codes are the collision groups.
  order = np.lexsort([ids] + [codes[:, l] for l in reversed(range(codes.shape[1]))])
  sc = codes[order]
  new_group = np.ones(n, bool)
  new_group[1:] = (sc[1:] != sc[:-1]).any(axis=1)
  group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
  suffix[order] = (np.arange(n) - group_start).astype(np.int32)
  return suffix


class SidTable:
  """Item ids with their Semantic IDs.

  Attributes:
    item_ids: [N] object array of str ids (unique).
    codes: [N, L] int32 codes in [0, codebook_size).
    codebook_size: K.
    suffix: optional [N] int32 uniqueness suffix (``with_suffix``).
    cluster_ids: optional {name: [N] int32} cluster IDs (e.g. {"k100": ..., "k1000": ...}); a
      bare [N] array is stored as {"cluster": array}.
  """

  def __init__(self, item_ids, codes, codebook_size: int, suffix=None,
               cluster_ids: Optional[Union[np.ndarray, Mapping[str, np.ndarray]]] = None):
    self.item_ids = np.asarray([str(i) for i in item_ids], dtype=object)
    self.codes = np.asarray(codes)
    self.codebook_size = int(codebook_size)
    n = len(self.item_ids)
    if self.codes.ndim != 2 or self.codes.shape[0] != n:
      raise DataError(f"SidTable: codes must be [num_items={n}, L], got shape {self.codes.shape}")
    if not np.issubdtype(self.codes.dtype, np.integer):
      raise DataError(f"SidTable: codes must be integers, got dtype {self.codes.dtype}")
    self.codes = self.codes.astype(np.int32)
    if n and (self.codes.min() < 0 or self.codes.max() >= self.codebook_size):
      bad = np.flatnonzero(((self.codes < 0) | (self.codes >= self.codebook_size)).any(axis=1))[0]
      raise DataError(f"SidTable: item {self.item_ids[bad]!r} has out-of-range codes {self.codes[bad].tolist()} "
                      f"(codebook_size={self.codebook_size})")
    if len(set(self.item_ids.tolist())) != n:
      ids, counts = np.unique(self.item_ids.astype(str), return_counts=True)
      raise DataError(f"SidTable: duplicate item ids, e.g. {ids[counts > 1][:3].tolist()}")
    self.suffix = None if suffix is None else np.asarray(suffix, np.int32)
    if self.suffix is not None and self.suffix.shape != (n,):
      raise DataError(f"SidTable: suffix must be [num_items={n}], got {self.suffix.shape}")
    if cluster_ids is not None and not isinstance(cluster_ids, Mapping):
      cluster_ids = {"cluster": cluster_ids}
    self.cluster_ids: Dict[str, np.ndarray] = {}
    for name, arr in (cluster_ids or {}).items():
      arr = np.asarray(arr, np.int32)
      if arr.shape != (n,):
        raise DataError(f"SidTable: cluster_ids[{name!r}] must be [num_items={n}], got {arr.shape}")
      self.cluster_ids[str(name)] = arr
    self._index = None

  def __len__(self) -> int:
    return len(self.item_ids)

  @property
  def num_levels(self) -> int:
    return self.codes.shape[1]

  def unique_ratio(self) -> float:
    """Distinct SIDs / items, before any suffix."""
    if len(self) == 0:
      return 0.0
    return len(np.unique(self.codes, axis=0)) / len(self)

  def with_suffix(self) -> "SidTable":
    """A copy with the TIGER-style suffix (see ``compute_suffix``) making every SID unique."""
    return SidTable(self.item_ids, self.codes, self.codebook_size, suffix=compute_suffix(self.codes, self.item_ids),
                    cluster_ids=self.cluster_ids)

  def full_codes(self) -> np.ndarray:
    """[N, L] codes, or [N, L + 1] with the suffix as the last column when present."""
    if self.suffix is None:
      return self.codes
    return np.concatenate([self.codes, self.suffix[:, None]], axis=1)

  def index_of(self, item_ids) -> np.ndarray:
    """Row indices of ``item_ids``; DataError naming the first unknown id."""
    if self._index is None:
      self._index = {k: i for i, k in enumerate(self.item_ids.tolist())}
    out = np.empty(len(item_ids), np.int64)
    for j, k in enumerate(item_ids):
      i = self._index.get(str(k))
      if i is None:
        raise DataError(f"SidTable: unknown item id {k!r}")
      out[j] = i
    return out

  def lookup(self, item_ids) -> np.ndarray:
    """[M] ids -> [M, L] int32 codes (suffix excluded)."""
    return self.codes[self.index_of(item_ids)]

  def token_string(self, row: int) -> str:
    """Readable SID of one row, e.g. ``<a_12><b_200><c_7>`` (``<s_n>`` appended with a suffix)."""
    parts = [f"<{level_letter(l)}_{int(c)}>" for l, c in enumerate(self.codes[row])]
    if self.suffix is not None:
      parts.append(f"<s_{int(self.suffix[row])}>")
    return "".join(parts)

  def tokens(self) -> list:
    """Readable SIDs of all rows."""
    return [self.token_string(i) for i in range(len(self))]

  @staticmethod
  def parse_tokens(text: str) -> list:
    """Inverse of ``token_string`` for the codes: "<a_12><b_200>" -> [12, 200] (suffix dropped)."""
    import re
    out = []
    for letter, value in re.findall(r"<([a-z]+)_(\d+)>", text):
      if letter == "s":
        continue
      out.append(int(value))
    return out

  # ---- persistence -------------------------------------------------------------------------------
  def save(self, directory: str):
    """Writes ``table.npz`` + ``manifest.json`` into ``directory`` atomically (temp dir swap)."""
    from semrec.atomic import atomic_directory
    with atomic_directory(directory) as tmp:
      arrays = {"item_ids": self.item_ids.astype(str), "codes": self.codes}
      if self.suffix is not None:
        arrays["suffix"] = self.suffix
      for name, arr in self.cluster_ids.items():
        arrays[f"cluster_ids/{name}"] = arr
      np.savez(os.path.join(tmp, "table.npz"), **arrays)
      manifest = {"format_version": FORMAT_VERSION, "kind": "semrec.sid.SidTable", "num_items": len(self),
                  "num_levels": self.num_levels, "codebook_size": self.codebook_size,
                  "has_suffix": self.suffix is not None, "cluster_ids": sorted(self.cluster_ids),
                  "unique_ratio_before_suffix": self.unique_ratio()}
      with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)

  @classmethod
  def load(cls, directory: str) -> "SidTable":
    from semrec.atomic import read_manifest
    from semrec.atomic import CorruptArtefactError, read_npz
    fix = "run `semrec sid train --force` to rebuild it"
    manifest = read_manifest(directory, "SID table", kind="semrec.sid.SidTable")
    path = os.path.join(directory, "table.npz")
    f = read_npz(path, "SID table", fix)
    if "item_ids" not in f or "codes" not in f:
      raise CorruptArtefactError(f"{path}: damaged SID table (no item_ids/codes arrays); {fix}")
    clusters = {k.split("/", 1)[1]: v for k, v in f.items() if k.startswith("cluster_ids/")}
    return cls(f["item_ids"], f["codes"], manifest["codebook_size"], suffix=f.get("suffix"),
               cluster_ids=clusters or None)
