"""The SID alphabet of the SentencePiece adapter: one Unicode character per (level, code), int64 piece keys.

An SID ``(c1, ..., cL)`` with codes in [0, K) becomes an L-character string: level l, code c ->
``chr(CHAR_BASE + l * K + c)``. A piece covering consecutive levels is looked up in graph by one int64 key
(``piece_key``). ``check_spm_sizes`` says when (L, K, vocabulary) fit both.

Shape letters: N items, L levels, K codebook size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

CHAR_BASE = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points, no script, no normalisation.
MAX_CHARS = 0xFFFFD - CHAR_BASE + 1
KEY_LIMIT = 2 ** 63 - 1


def check_codes(codes, codebook_size: int, num_levels: Optional[int] = None, item_ids=None,
                 what: str = "codes") -> np.ndarray:
  """Validates [N, L] integer codes in [0, K); ValueError naming the first bad item."""
  arr = np.asarray(codes)
  if arr.ndim != 2:
    raise ValueError(f"{what} must have shape [N, L], got shape {arr.shape}")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
  if num_levels is not None and arr.shape[1] != num_levels:
    raise ValueError(f"{what} must have L={num_levels} levels per SID, got {arr.shape[1]}")
  bad = (arr < 0) | (arr >= codebook_size)
  if bad.any():
    r, l = np.argwhere(bad)[0]
    name = f"item {item_ids[r]!r} (row {r})" if item_ids is not None else f"row {r}"
    raise ValueError(f"{what}: {name} has code {int(arr[r, l])} at level {l}, outside [0, {codebook_size})")
  return arr.astype(np.int64)


def sid_to_string(codes_row: Sequence[int], codebook_size: int) -> str:
  """An SID -> its L-character string: level l, code c -> chr(CHAR_BASE + l * K + c)."""
  return "".join(chr(CHAR_BASE + l * codebook_size + int(c)) for l, c in enumerate(codes_row))


def piece_key(start: int, codes: Sequence[int], num_levels: int, codebook_size: int) -> int:
  """The int64 table key of a piece covering levels ``start .. start+len(codes)-1``.

  key = (start * L + (n - 1)) * K^L + (c_start * K^(n-1) + ... + c_{start+n-1}).
  """
  value = 0
  for c in codes:
    value = value * codebook_size + int(c)
  return (start * num_levels + len(codes) - 1) * codebook_size ** num_levels + value




def check_spm_sizes(num_levels: int, codebook_size: int, vocab_size: int) -> None:
  """Raises ValueError when (L, K, vocab) cannot be represented."""
  L, K = int(num_levels), int(codebook_size)
  if L < 1 or K < 1:
    raise ValueError(f"num_levels and codebook_size must be >= 1, got L={num_levels}, K={codebook_size}")
  if L * K > MAX_CHARS:
    raise ValueError(f"SPM needs L*K = {L * K} distinct characters, at most {MAX_CHARS} are available")
  if L * L * K ** L > KEY_LIMIT:
    raise ValueError(f"SPM piece keys need L^2 * K^L = {L * L * K ** L} < 2^63 (L={L}, K={K})")
  if int(vocab_size) < L * K + 1:
    raise ValueError(f"SPM vocab_size (table budget) must be >= L*K + 1 = {L * K + 1} so every (level, code) is "
                     f"a piece, got {vocab_size}")
