"""Sharded top-k index: one ``RetrievalIndex`` (ScaNN or brute force) per hash shard of the catalogue,
scatter-gather search.

Shape letters: N candidates, S shards, Q queries, d embedding width, k neighbours.

A catalogue too large for one index (or one machine) is split by a stable hash of the item id
(``shard_of``: CRC32 mod S, so an item's shard depends only on its id, not on the catalogue order). Each
shard is an ordinary ``build_index`` index, built independently (on a separate worker at scale). A query
searches every shard for its top k and ``merge_top_k`` keeps the k best of the S * k candidates: the exact
top-k over the catalogue whenever every shard's own top-k is exact (brute force, or ScaNN searching all
leaves with full reordering), and otherwise each shard's approximate top-k merged.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Optional, Sequence

import numpy as np

from semrec.towers.index import IndexConfig, RetrievalIndex, build_index

_KIND = "semrec.towers.ShardedIndex"


def shard_of(item_ids: Sequence, num_shards: int) -> np.ndarray:
  """[N] int64 shard of each item id: CRC32 of ``str(id)`` mod ``num_shards`` (stable across runs)."""
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  return np.asarray([zlib.crc32(str(i).encode()) % num_shards for i in item_ids], np.int64)


def merge_top_k(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple:
  """Merges per-shard results [Q, k_s] -> (scores [Q, k] float32, ids [Q, k]), best first.

  Ties keep shard order, then each shard's rank (stable sort).
  """
  s = np.concatenate([np.asarray(x, np.float32) for x in scores], axis=1)
  i = np.concatenate([np.asarray(x, object) for x in ids], axis=1)
  order = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


class ShardedIndex:
  """S per-shard ``RetrievalIndex`` objects searched together.

  Attributes:
    shards: list of S ``RetrievalIndex`` (an empty shard is None).
    config: the ``IndexConfig`` every shard was built with.
  """

  def __init__(self, shards: list, config: IndexConfig):
    self.shards = shards
    self.config = config

  def __len__(self):
    return sum(len(s) for s in self.shards if s is not None)

  def search(self, queries, k: Optional[int] = None) -> tuple:
    """(scores [Q, k] float32, item ids [Q, k] object) for ``queries`` [Q, d]: every shard's top k, merged."""
    k = min(k or self.config.k, len(self))
    parts = [s.search(queries, k) for s in self.shards if s is not None]
    return merge_top_k([p[0] for p in parts], [p[1] for p in parts], k)

  def save(self, directory: str) -> str:
    """Writes ``shard-<i>/`` (``RetrievalIndex.save``) per non-empty shard and ``manifest.json``, atomically."""
    from semrec.atomic import atomic_directory
    names = [None if s is None else f"shard-{i:05d}" for i, s in enumerate(self.shards)]
    with atomic_directory(directory) as tmp:
      for s, name in zip(self.shards, names):
        if s is not None:
          s.save(os.path.join(tmp, name))
      with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump({"kind": _KIND, "num_shards": len(self.shards), "shards": names,
                   "hash": "crc32(str(item_id)) % num_shards"}, f, indent=2)
    return directory

  @classmethod
  def load(cls, directory: str) -> "ShardedIndex":
    """Reloads an index written by ``save``."""
    from semrec.atomic import read_manifest
    m = read_manifest(directory, "sharded index", kind=_KIND)
    shards = [None if n is None else RetrievalIndex.load(os.path.join(directory, n)) for n in m["shards"]]
    config = next((s.config for s in shards if s is not None), IndexConfig())
    return cls(shards, config)


def build_sharded_index(embeddings, item_ids, num_shards: int, kind: Optional[str] = None,
                        config: Optional[IndexConfig] = None, **overrides) -> ShardedIndex:
  """One ``build_index`` per hash shard (``shard_of``) of [N, d] candidate embeddings with [N] item ids.

  ``kind`` / ``config`` / ``overrides`` as in ``build_index``; "auto" decides per shard by the shard's size.
  """
  emb = np.asarray(embeddings)
  ids = np.asarray(item_ids, dtype=object)
  if len(ids) != len(emb):
    raise ValueError(f"{len(ids)} item ids for {len(emb)} candidate embeddings")
  which = shard_of(ids, num_shards)
  shards = []
  for s in range(num_shards):
    rows = np.flatnonzero(which == s)
    shards.append(build_index(emb[rows], ids[rows], kind=kind, config=config, **overrides) if len(rows) else None)
  built = next((s for s in shards if s is not None), None)
  return ShardedIndex(shards, built.config if built is not None else (config or IndexConfig()))


__all__ = ["ShardedIndex", "build_sharded_index", "merge_top_k", "shard_of"]
