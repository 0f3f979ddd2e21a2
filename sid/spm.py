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
- ``SpmSegmenter`` is a Keras layer that reproduces sentencepiece's unigram Viterbi exactly with
  standard TF ops (searchsorted over a sorted piece-key table + an unrolled Viterbi over the L
  positions), so a served SavedModel needs no custom op. Its piece table is non-trainable weights.

Shape letters: N items, M rows, L levels, K codebook size, P pieces.
"""
from __future__ import annotations

import collections
import io
import json
import os
import tempfile
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from semrec import atomic

CHAR_BASE = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points, no script, no normalisation.
MAX_CHARS = 0xFFFFD - CHAR_BASE + 1
_KEY_LIMIT = 2 ** 63 - 1
_MODEL_FILE = "sid_spm.model"
_META_FILE = "sid_spm.json"


def _check_codes(codes, codebook_size: int, num_levels: Optional[int] = None, item_ids=None,
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
    arr = _check_codes(codes, self.codebook_size, self.num_levels, item_ids)
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
  arr = _check_codes(codes, K, None, item_ids)
  n, L = arr.shape
  SpmSegmenter.check_sizes(L, K, vocab_size)
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
  # Aggregate duplicate SIDs: one weighted sentence each.
  freq = collections.Counter()
  for row, wt in zip(map(tuple, arr.tolist()), w.tolist()):
    if wt > 0:
      freq[row] += wt
  if not freq:
    raise ValueError("train_sid_spm: all weights are 0; nothing to train on")
  sentences = sorted(freq.items())
  # Seeds: every substring of length 2..L, scored like sentencepiece's own seeding (count * length).
  seeds = collections.Counter()
  for row, wt in sentences:
    for s in range(L):
      for e in range(s + 2, L + 1):
        seeds[(s, row[s:e])] += wt
  seed_items = sorted(seeds.items(), key=lambda kv: (-kv[1] * len(kv[0][1]), kv[0]))[:seed_sentencepiece_size]
  lines = [f"{sid_to_string(row, K)}\t{wt}" for row, wt in sentences]
  lines += [f"{chr(CHAR_BASE + i)}\t1" for i in range(L * K)]  # every (level, code) is a piece
  with tempfile.TemporaryDirectory() as tmp:
    seed_path = os.path.join(tmp, "seeds.tsv")
    with open(seed_path, "w", encoding="utf-8") as f:
      for (s, sub), cnt in seed_items:
        piece = "".join(chr(CHAR_BASE + (s + i) * K + c) for i, c in enumerate(sub))
        f.write(f"{piece}\t{cnt * len(sub)}\n")
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
  # Wire-level edit: sentencepiece's generated sentencepiece_model_pb2 refuses to import when the
  # installed protobuf runtime is older than its gencode (seen: gencode 7.36.1, runtime 6.33.6).
  return SidSpm(_drop_trainer_spec_field(model.getvalue(), _SEED_FILE_FIELD), L, K)


_SEED_FILE_FIELD = 54  # TrainerSpec.seed_sentencepieces_file (sentencepiece_model.proto)


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
  value, shift = 0, 0
  while True:
    b = buf[pos]
    pos += 1
    value |= (b & 0x7F) << shift
    if b < 0x80:
      return value, pos
    shift += 7


def _encode_varint(value: int) -> bytes:
  out = bytearray()
  while True:
    b = value & 0x7F
    value >>= 7
    out.append(b | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _fields(buf: bytes):
  """(field number, raw bytes of the whole field) for each top-level field of a serialized message."""
  pos = 0
  while pos < len(buf):
    start = pos
    key, pos = _varint(buf, pos)
    wire = key & 7
    if wire == 0:
      _, pos = _varint(buf, pos)
    elif wire == 1:
      pos += 8
    elif wire == 5:
      pos += 4
    elif wire == 2:
      n, pos = _varint(buf, pos)
      pos += n
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    yield key >> 3, buf[start:pos]


def _drop_trainer_spec_field(model_proto: bytes, field: int) -> bytes:
  """``model_proto`` with ``trainer_spec.<field>`` removed (ModelProto.trainer_spec is field 2)."""
  out = bytearray()
  for num, raw in _fields(model_proto):
    if num == 2:
      _, body_start = _varint(raw, 0)
      _, body_start = _varint(raw, body_start)
      body = b"".join(r for n, r in _fields(raw[body_start:]) if n != field)
      raw = raw[:1] + _encode_varint(len(body)) + body
    out += raw
  return bytes(out)


@tf.keras.utils.register_keras_serializable(package="semrec")
class SpmSegmenter(tf.keras.layers.Layer):
  """In-graph SentencePiece (unigram) segmentation of SIDs with standard TF ops.

  Input: [..., L] int32/int64 codes in [0, K); a row of all -1 is padding.
  Output: [..., L] int32 piece ids in sentencepiece's order, padded with -1 (padding rows: all -1).

  Reproduces sentencepiece's unigram Viterbi (``EncodeOptimized``): for each end position e,
  candidates (start s, piece s..e) are visited with s ascending and a candidate replaces the
  current best only if its float32 path score ``score(piece) + best[s]`` is strictly greater, so
  ties go to the earliest start, as in sentencepiece. Pieces are looked up by their int64 key
  (``piece_key``) with ``tf.searchsorted`` in a sorted key table held as non-trainable weights
  (``piece_keys`` [P], ``piece_ids`` [P], ``piece_scores`` [P], padded to ``max_pieces``).
  A code outside [0, K) or a wrong L fails an in-graph assert naming the "sid" field.

  Args:
    num_levels: L.
    codebook_size: K.
    max_pieces: Capacity of the piece table (>= the SPM vocabulary size).
    spm: The trained ``SidSpm`` whose table initialises the weights (``None`` when the weights
      come from a checkpoint / ``set_weights``).
  """

  def __init__(self, num_levels: int, codebook_size: int, max_pieces: int, spm: Optional[SidSpm] = None,
               **kwargs):
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    self.check_sizes(num_levels, codebook_size, max_pieces)
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.max_pieces = int(max_pieces)
    if spm is not None:
      if spm.num_levels != self.num_levels or spm.codebook_size != self.codebook_size:
        raise ValueError(f"SpmSegmenter(L={num_levels}, K={codebook_size}) got an spm with "
                         f"L={spm.num_levels}, K={spm.codebook_size}")
      if spm.vocab_size > self.max_pieces:
        raise ValueError(f"SpmSegmenter: spm vocab_size {spm.vocab_size} > max_pieces {max_pieces}")
    self._spm = spm

  @staticmethod
  def check_sizes(num_levels: int, codebook_size: int, vocab_size: int) -> None:
    """Raises ValueError when (L, K, vocab) cannot be represented."""
    L, K = int(num_levels), int(codebook_size)
    if L < 1 or K < 1:
      raise ValueError(f"num_levels and codebook_size must be >= 1, got L={num_levels}, K={codebook_size}")
    if L * K > MAX_CHARS:
      raise ValueError(f"SPM needs L*K = {L * K} distinct characters, at most {MAX_CHARS} are available")
    if L * L * K ** L > _KEY_LIMIT:
      raise ValueError(f"SPM piece keys need L^2 * K^L = {L * L * K ** L} < 2^63 (L={L}, K={K})")
    if int(vocab_size) < L * K + 1:
      raise ValueError(f"SPM vocab_size (table budget) must be >= L*K + 1 = {L * K + 1} so every (level, code) is "
                       f"a piece, got {vocab_size}")

  def build(self, input_shape):
    P = self.max_pieces
    keys = np.full(P, np.iinfo(np.int64).max, np.int64)
    ids = np.full(P, -1, np.int32)
    scores = np.zeros(P, np.float32)
    n = 0
    if self._spm is not None:
      k, i, s = self._spm.piece_table()
      n = len(k)
      keys[:n], ids[:n], scores[:n] = k, i, s
    self.piece_keys = self.add_weight("piece_keys", shape=(P,), dtype=tf.int64, trainable=False,
                                      initializer=tf.constant_initializer(keys))
    self.piece_ids = self.add_weight("piece_ids", shape=(P,), dtype=tf.int32, trainable=False,
                                     initializer=tf.constant_initializer(ids))
    self.piece_scores = self.add_weight("piece_scores", shape=(P,), dtype=tf.float32, trainable=False,
                                        initializer=tf.constant_initializer(scores))
    self.num_pieces = self.add_weight("num_pieces", shape=(), dtype=tf.int32, trainable=False,
                                      initializer=tf.constant_initializer(n))
    super().build(input_shape)

  def call(self, codes: tf.Tensor) -> tf.Tensor:
    L, K = self.num_levels, self.codebook_size
    codes = tf.convert_to_tensor(codes)
    if not codes.dtype.is_integer:
      raise ValueError(f"SpmSegmenter: 'sid' must be an integer tensor, got {codes.dtype.name}")
    last = codes.shape[-1] if codes.shape.rank is not None else None
    if last is not None and last != L:
      raise ValueError(f"SpmSegmenter: 'sid' last dimension must be num_levels={L}, got {last}")
    codes = tf.cast(codes, tf.int64)
    lead = tf.shape(codes)[:-1]
    level_check = tf.debugging.assert_equal(tf.shape(codes)[-1], L,
                                            message=f"SpmSegmenter: 'sid' last dimension must be num_levels={L}")
    with tf.control_dependencies([level_check]):
      flat = tf.reshape(codes, [-1, L])
    pad = tf.reduce_all(tf.equal(flat, -1), axis=-1)
    ok = tf.logical_or(pad[:, None], tf.logical_and(flat >= 0, flat < K))
    checks = [
        tf.debugging.assert_equal(tf.reduce_all(ok), True,
                                  message=f"SpmSegmenter: 'sid' codes must be in [0, {K}) (a row of all -1 is padding)"),
        tf.debugging.assert_greater(self.num_pieces, 0,
                                    message="SpmSegmenter has an empty piece table: pass spm= or restore its weights"),
    ]
    with tf.control_dependencies(checks):
      flat = tf.where(pad[:, None], tf.zeros_like(flat), flat)
    m = tf.shape(flat)[0]

    # Keys of every (start, length) substring: [M, S], S = L(L+1)/2.
    spans, queries = [], []
    base = K ** L
    for s in range(L):
      value = tf.zeros([m], tf.int64)
      for n in range(1, L - s + 1):
        value = value * K + flat[:, s + n - 1]
        spans.append((s, n))
        queries.append(value + (s * L + n - 1) * base)
    q = tf.stack(queries, axis=1)
    pos = tf.searchsorted(self.piece_keys[None, :], tf.reshape(q, [1, -1]), side="left", out_type=tf.int32)
    pos = tf.reshape(tf.minimum(pos, self.max_pieces - 1), tf.shape(q))
    found = tf.equal(tf.gather(self.piece_keys, pos), q)
    pid = tf.gather(self.piece_ids, pos)
    score = tf.gather(self.piece_scores, pos)
    col = {sn: j for j, sn in enumerate(spans)}

    # Viterbi over end positions 1..L (sentencepiece EncodeOptimized order: start ascending, strict >).
    best = [tf.zeros([m], tf.float32)]
    back_start, back_id = [None], [None]
    for e in range(1, L + 1):
      b_score = tf.fill([m], tf.constant(-np.inf, tf.float32))
      b_start = tf.fill([m], -1)
      b_id = tf.fill([m], -1)
      has = tf.zeros([m], tf.bool)
      for s in range(e):
        j = col[(s, e - s)]
        cand = score[:, j] + best[s]
        take = tf.logical_and(found[:, j], tf.logical_or(tf.logical_not(has), cand > b_score))
        b_score = tf.where(take, cand, b_score)
        b_start = tf.where(take, tf.fill([m], s), b_start)
        b_id = tf.where(take, pid[:, j], b_id)
        has = tf.logical_or(has, found[:, j])
      best.append(b_score)
      back_start.append(b_start)
      back_id.append(b_id)

    # Backtrack from L: mark the ends on the best path.
    on_path = [tf.zeros([m], tf.bool) for _ in range(L)] + [tf.ones([m], tf.bool)]
    for e in range(L, 0, -1):
      for s in range(e):
        on_path[s] = tf.logical_or(on_path[s], tf.logical_and(on_path[e], tf.equal(back_start[e], s)))
    ends = tf.stack(on_path[1:], axis=1)  # [M, L]: a piece ends at e+1
    ids = tf.stack(back_id[1:], axis=1)
    # Compact the pieces to the front, in order.
    order = tf.argsort(tf.where(ends, 0, 1) * L + tf.range(L)[None, :], axis=1, stable=True)
    ids = tf.gather(tf.where(ends, ids, -1), order, batch_dims=1)
    ids = tf.where(pad[:, None], tf.constant(-1, tf.int32), ids)
    return tf.reshape(ids, tf.concat([lead, [L]], 0))

  def get_config(self):
    cfg = super().get_config()
    cfg.update({"num_levels": self.num_levels, "codebook_size": self.codebook_size, "max_pieces": self.max_pieces})
    return cfg
