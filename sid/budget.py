"""Embedding-table budget accounting for SID item representations.

How many embedding rows each item representation needs, and how many lookups it makes per item,
for L levels of codebook size K under a table budget (the number of rows one mode may use).

The n-gram modes split an SID ``(c1, ..., cL)`` into *spans* ``(start, length)``:

- ``unigram``: ``(0, 1), (1, 1), ..., (L-1, 1)``: L spans, exact id space ``L * K``;
- ``bigram``: non-overlapping pairs ``(0, 2), (2, 2), ...``; an odd L leaves ``(L-1, 1)`` alone:
  ``ceil(L / 2)`` spans, exact id space ``floor(L/2) * K^2 (+ K)``;
- ``prefix``: every prefix ``(0, 1), (0, 2), ..., (0, L)``: L spans, exact id space ``K + K^2 + ... + K^L``.

Every span of every mode indexes one shared table. When the exact id space fits the budget, each
span value gets its own row (no collisions); otherwise span values are hashed into ``budget`` rows.
``random_hash`` uses ``hash_buckets`` rows and 1 lookup, ``dense`` no table (a projection), and
``spm`` exactly ``budget`` rows (the SentencePiece vocabulary) and 1..L lookups depending on how
frequent the item's code combinations are (see ``sid.spm``).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

NGRAM_MODES = ("unigram", "bigram", "prefix")
ALL_MODES = ("random_hash", "dense", "unigram", "bigram", "prefix", "spm")
_INT64_LIMIT = 2 ** 62


def ngram_spans(mode: str, num_levels: int) -> List[Tuple[int, int]]:
  """The ``(start, length)`` spans an n-gram ``mode`` reads from an L-level SID."""
  L = int(num_levels)
  if L < 1:
    raise ValueError(f"num_levels must be >= 1, got {num_levels}")
  if mode == "unigram":
    return [(l, 1) for l in range(L)]
  if mode == "bigram":
    return [(s, min(2, L - s)) for s in range(0, L, 2)]
  if mode == "prefix":
    return [(0, n) for n in range(1, L + 1)]
  raise ValueError(f"not an n-gram mode: {mode!r} (expected one of {NGRAM_MODES})")


def exact_id_space(mode: str, num_levels: int, codebook_size: int) -> int:
  """Rows an n-gram ``mode`` needs for collision-free ids (a Python int, may be huge)."""
  return sum(int(codebook_size) ** n for _, n in ngram_spans(mode, num_levels))


def ngram_is_hashed(mode: str, num_levels: int, codebook_size: int, table_budget: int) -> bool:
  """Whether ``mode`` hashes span values into ``table_budget`` rows (exact space too big)."""
  space = exact_id_space(mode, num_levels, codebook_size)
  return space > int(table_budget) or space >= _INT64_LIMIT


def table_rows(mode: str, num_levels: int, codebook_size: int, table_budget: int,
               hash_buckets: int = 0) -> int:
  """Embedding rows ``mode`` allocates for L levels, codebook size K and the given budget."""
  if mode == "random_hash":
    return int(hash_buckets)
  if mode == "dense":
    return 0
  if mode == "spm":
    return int(table_budget)
  space = exact_id_space(mode, num_levels, codebook_size)
  return int(table_budget) if ngram_is_hashed(mode, num_levels, codebook_size, table_budget) else int(space)


def lookups_per_item(mode: str, num_levels: int) -> Optional[int]:
  """Embedding lookups per item for fixed-lookup modes; ``None`` for ``spm`` (data dependent)."""
  if mode == "random_hash":
    return 1
  if mode == "dense":
    return 0
  if mode == "spm":
    return None
  return len(ngram_spans(mode, num_levels))


def budget_table(num_levels: int, codebook_size: int, budgets: Sequence[int],
                 modes: Sequence[str] = ("unigram", "bigram", "prefix", "spm"),
                 spm_lookups: Optional[Dict[int, float]] = None) -> List[dict]:
  """One row per (mode, budget): rows allocated, whether hashed, lookups per item.

  ``spm_lookups`` maps a budget to a measured mean number of SPM pieces per item (e.g. from
  ``pieces_per_item``); without it the SPM lookups column is ``None``.
  """
  out = []
  for budget in budgets:
    for mode in modes:
      hashed = mode in NGRAM_MODES and ngram_is_hashed(mode, num_levels, codebook_size, budget)
      look = lookups_per_item(mode, num_levels)
      if mode == "spm" and spm_lookups is not None:
        look = spm_lookups.get(budget)
      out.append({"mode": mode, "budget": int(budget),
                  "rows": table_rows(mode, num_levels, codebook_size, budget),
                  "hashed": bool(hashed), "lookups_per_item": look})
  return out


def pieces_per_item(piece_ids: np.ndarray) -> np.ndarray:
  """[N] int: the number of pieces per item from ``[N, L]`` piece ids padded with -1."""
  return (np.asarray(piece_ids) >= 0).sum(axis=-1)


def popularity_bins(weights: np.ndarray, num_bins: int = 10) -> np.ndarray:
  """[N] int in [0, num_bins): popularity decile of each item, 0 = most popular (head).

  Items are ranked by ``weights`` (e.g. impressions), ties broken by index, and cut into
  ``num_bins`` bins of (nearly) equal item count.
  """
  w = np.asarray(weights, dtype=np.float64)
  order = np.argsort(-w, kind="stable")
  bins = np.empty(len(w), dtype=np.int64)
  bins[order] = (np.arange(len(w)) * num_bins) // max(len(w), 1)
  return bins


def mean_by_bin(values: np.ndarray, bins: np.ndarray, num_bins: int) -> List[float]:
  """Mean of ``values`` within each bin (NaN for an empty bin)."""
  values = np.asarray(values, dtype=np.float64)
  return [float(values[bins == b].mean()) if np.any(bins == b) else math.nan for b in range(num_bins)]
