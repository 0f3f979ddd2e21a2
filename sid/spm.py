"""SentencePiece over Semantic IDs, and exact in-graph segmentation with standard TF ops.

Singh et al. learn the sub-pieces of SIDs with SentencePiece: each (level, code) becomes one
distinct Unicode character, so an SID ``(c1, ..., cL)`` is an L-character "sentence"; a unigram
SentencePiece model trained on the impression-weighted corpus of SIDs, with a vocabulary the size of
the embedding-table budget, turns frequent code combinations into one piece and splits rare ones
into shorter pieces.

Here:
- ``train_sid_spm`` trains that model with the real ``sentencepiece`` library (no normalisation,
  no dummy prefix, max piece length L, unigram model, impression weights as sentence frequencies).
  Every one of the L * K characters is added once as a one-character sentence, so every
  (level, code) is a piece and any in-range SID, seen or not, segments without ``<unk>``.
  Seed pieces are passed explicitly (``seed_sentencepieces_file``): all substrings of length
  2..L scored ``weighted count * length`` like sentencepiece's own seeding, because the suffix-array
  seeding of sentencepiece 0.2.3 finds no multi-character candidate in non-ASCII text (observed:
  only single characters come out).
- ``SidSpm`` holds the serialized model proto; ``.segment(codes)`` calls sentencepiece.
- ``SpmSegmenter`` (``sid/spm_segmenter.py``, re-exported here) is a Keras layer that reproduces
  sentencepiece's unigram Viterbi exactly with standard TF ops, so a served SavedModel needs no custom op.
- The SID alphabet and piece keys live in ``sid/spm_alphabet.py``; the wire-level trainer-spec edit in
  ``sid/spm_proto.py``.

Shape letters: N items, M rows, L levels, K codebook size, P pieces.
"""
from __future__ import annotations

import collections
import io
import json
import os
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from semrec import atomic
from semrec.sid.spm_alphabet import CHAR_BASE, check_codes, piece_key, sid_to_string
from semrec.sid.spm_proto import SEED_FILE_FIELD, drop_trainer_spec_field
from semrec.sid.spm_segmenter import SpmSegmenter

_MODEL_FILE = "sid_spm.model"
_META_FILE = "sid_spm.json"


class SidSpm:
  """A trained SentencePiece model over SIDs.

  Attributes:
    model_proto: The serialized sentencepiece ModelProto (bytes).
    num_levels: L.
    codebook_size: K.
  """

  def __init__(self, model_proto: bytes, num_levels: int, codebook_size: int):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.model_proto = bytes(model_proto)
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
    self._table = self._build_table()

  @property
  def vocab_size(self) -> int:
    return int(self.processor.get_piece_size())

  @property
  def unk_id(self) -> int:
    return int(self.processor.unk_id())

  def _build_table(self):
    sp, L, K = self.processor, self.num_levels, self.codebook_size
    keys, ids, scores, lengths = [], [], [], []
    seen_chars = set()
    for i in range(sp.get_piece_size()):
      if sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i):
        continue
      piece = sp.id_to_piece(i)
      offs = [ord(ch) - CHAR_BASE for ch in piece]
      if any(o < 0 or o >= L * K for o in offs):
        raise ValueError(f"SidSpm: piece {i} ({piece!r}) has a character outside the SID alphabet")
      levels = [o // K for o in offs]
      if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"SidSpm: piece {i} spans non-consecutive levels {levels}")
      codes = [o % K for o in offs]
      keys.append(piece_key(levels[0], codes, L, K))
      ids.append(i)
      scores.append(sp.get_score(i))
      lengths.append(len(offs))
      if len(offs) == 1:
        seen_chars.add(offs[0])
    if len(seen_chars) != L * K:
      missing = sorted(set(range(L * K)) - seen_chars)[:5]
      raise ValueError(f"SidSpm: the vocabulary lacks {L * K - len(seen_chars)} (level, code) characters, e.g. "
                       f"(level, code) {[(o // K, o % K) for o in missing]}; every character must be a piece")
    order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
    return (np.asarray(keys, np.int64)[order], np.asarray(ids, np.int32)[order],
            np.asarray(scores, np.float32)[order], np.asarray(lengths, np.int32)[order])

  def piece_table(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys [P] int64 sorted, piece ids [P] int32, scores [P] float32) of all normal pieces."""
    return self._table[0], self._table[1], self._table[2]

  def piece_lengths(self) -> np.ndarray:
    """[vocab_size] int: levels covered by each piece id (0 for <unk>/control pieces)."""
    out = np.zeros(self.vocab_size, np.int32)
    out[self._table[1]] = self._table[3]
    return out

  def to_strings(self, codes, item_ids=None) -> List[str]:
    arr = check_codes(codes, self.codebook_size, self.num_levels, item_ids)
    return [sid_to_string(row, self.codebook_size) for row in arr]

  def segment(self, codes, item_ids=None) -> List[List[int]]:
    """[N, L] codes -> N lists of piece ids, by sentencepiece itself.

    Raises ValueError naming the item (``item_ids[row]`` or the row) for a code outside [0, K)
    or a wrong L.
    """
    return self.processor.encode(self.to_strings(codes, item_ids))

  def segment_padded(self, codes, item_ids=None) -> np.ndarray:
    """[N, L] int32 piece ids from ``segment``, padded with -1 (the ``SpmSegmenter`` layout)."""
    pieces = self.segment(codes, item_ids)
    out = np.full((len(pieces), self.num_levels), -1, np.int32)
    for r, p in enumerate(pieces):
      out[r, :len(p)] = p
    return out

  def save(self, directory: str) -> None:
    """Writes ``sid_spm.model`` and ``sid_spm.json`` into ``directory`` (each atomically)."""
    os.makedirs(directory, exist_ok=True)
    meta = {"num_levels": self.num_levels, "codebook_size": self.codebook_size, "vocab_size": self.vocab_size,
            "char_base": CHAR_BASE}
    for name, data in ((_MODEL_FILE, self.model_proto), (_META_FILE, json.dumps(meta, indent=2).encode())):
      atomic.write_bytes(os.path.join(directory, name), data)

  @classmethod
  def load(cls, directory: str) -> "SidSpm":
    with open(os.path.join(directory, _META_FILE)) as f:
      meta = json.load(f)
    if meta.get("char_base", CHAR_BASE) != CHAR_BASE:
      raise ValueError(f"{directory}: char_base {meta['char_base']:#x} != {CHAR_BASE:#x}")
    with open(os.path.join(directory, _MODEL_FILE), "rb") as f:
      proto = f.read()
    return cls(proto, meta["num_levels"], meta["codebook_size"])


def train_sid_spm(codes, weights=None, vocab_size: int = 8192, codebook_size: Optional[int] = None,
                  item_ids=None, seed_sentencepiece_size: int = 1_000_000, num_threads: int = 1) -> SidSpm:
  """Trains a unigram SentencePiece model on the impression-weighted corpus of SIDs.

  Args:
    codes: [N, L] int SIDs with codes in [0, K).
    weights: [N] non-negative impression counts (rounded to integers; 0 = not in the corpus).
      Default: 1 per item.
    vocab_size: The vocabulary size = the embedding-table budget; must be >= L * K + 1 (every
      (level, code) is a piece, plus <unk>). sentencepiece may stop below it when the corpus has
      fewer useful pieces (``hard_vocab_limit=False``).
    codebook_size: K (required).
    item_ids: Optional [N] ids, used in error messages.
    seed_sentencepiece_size: At most this many multi-character seed pieces.
    num_threads: sentencepiece trainer threads (1 = deterministic).

  Returns:
    A ``SidSpm``.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if codebook_size is None:
    raise ValueError("train_sid_spm: codebook_size is required")
  K = int(codebook_size)
  arr = check_codes(codes, K, None, item_ids)
  L = arr.shape[1]
  SpmSegmenter.check_sizes(L, K, vocab_size)
  sentences = _weighted_sentences(arr, weights, item_ids)
  lines = [f"{sid_to_string(row, K)}\t{wt}" for row, wt in sentences]
  lines += [f"{chr(CHAR_BASE + i)}\t1" for i in range(L * K)]  # every (level, code) is a piece
  with tempfile.TemporaryDirectory() as tmp:
    seed_path = os.path.join(tmp, "seeds.tsv")
    with open(seed_path, "w", encoding="utf-8") as f:
      f.writelines(_seed_lines(sentences, L, K, seed_sentencepiece_size))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, input_format="tsv", model_type="unigram",
        vocab_size=int(vocab_size), hard_vocab_limit=False, max_sentencepiece_length=L,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_by_unicode_script=False, split_by_whitespace=False, split_by_number=False, split_digits=False,
        character_coverage=1.0, byte_fallback=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        seed_sentencepieces_file=seed_path, seed_sentencepiece_size=max(int(seed_sentencepiece_size), 1),
        num_threads=int(num_threads), minloglevel=2)
  # Drop the temporary seed-file path from the stored trainer spec (keeps the artefact reproducible).
  return SidSpm(drop_trainer_spec_field(model.getvalue(), SEED_FILE_FIELD), L, K)


def _weighted_sentences(arr: np.ndarray, weights, item_ids) -> List[Tuple[tuple, int]]:
  """Sorted (SID tuple, integer weight) of the corpus: duplicate SIDs aggregated, weight-0 rows dropped.

  Args:
    arr: [N, L] int64 validated codes.
    weights: [N] non-negative impression counts (rounded) or None (1 per item).
    item_ids: Optional [N] ids, used in error messages.
  """
  n = len(arr)
  if weights is None:
    w = np.ones(n, np.int64)
  else:
    wf = np.asarray(weights, np.float64)
    if wf.shape != (n,):
      raise ValueError(f"train_sid_spm: weights must have shape [{n}], got {wf.shape}")
    bad = ~np.isfinite(wf) | (wf < 0)
    if bad.any():
      r = int(np.argmax(bad))
      name = f"item {item_ids[r]!r} (row {r})" if item_ids is not None else f"row {r}"
      raise ValueError(f"train_sid_spm: weights of {name} is {wf[r]}, must be finite and >= 0")
    w = np.rint(wf).astype(np.int64)
  freq = collections.Counter()
  for row, wt in zip(map(tuple, arr.tolist()), w.tolist()):
    if wt > 0:
      freq[row] += wt
  if not freq:
    raise ValueError("train_sid_spm: all weights are 0; nothing to train on")
  return sorted(freq.items())


def _seed_lines(sentences: List[Tuple[tuple, int]], L: int, K: int, max_seeds: int) -> List[str]:
  """"piece\tscore\n" seed lines: every substring of length 2..L, scored like sentencepiece's own seeding
  (weighted count * length), best ``max_seeds`` first."""
  seeds = collections.Counter()
  for row, wt in sentences:
    for s in range(L):
      for e in range(s + 2, L + 1):
        seeds[(s, row[s:e])] += wt
  seed_items = sorted(seeds.items(), key=lambda kv: (-kv[1] * len(kv[0][1]), kv[0]))[:max_seeds]
  return ["".join(chr(CHAR_BASE + (s + i) * K + c) for i, c in enumerate(sub)) + f"\t{cnt * len(sub)}\n"
          for (s, sub), cnt in seed_items]


__all__ = ["CHAR_BASE", "SidSpm", "SpmSegmenter", "piece_key", "sid_to_string", "train_sid_spm"]
