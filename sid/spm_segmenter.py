"""``SpmSegmenter``: sentencepiece's unigram segmentation of SIDs, exactly, in standard TF ops.

The layer reproduces sentencepiece's unigram Viterbi (searchsorted over a sorted piece-key table + an
unrolled Viterbi over the L positions), so a served SavedModel needs no custom op. Its piece table is
non-trainable weights, initialised from a trained ``semrec.sid.spm.SidSpm``.

Shape letters: M rows, L levels, K codebook size, P pieces.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from semrec.sid.spm_alphabet import check_spm_sizes


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

  def __init__(self, num_levels: int, codebook_size: int, max_pieces: int, spm: Optional["SidSpm"] = None,
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
    """Raises ValueError when (L, K, vocab) cannot be represented (``check_spm_sizes``)."""
    check_spm_sizes(num_levels, codebook_size, vocab_size)

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
    L = self.num_levels
    codes = tf.convert_to_tensor(codes)
    if not codes.dtype.is_integer:
      raise ValueError(f"SpmSegmenter: 'sid' must be an integer tensor, got {codes.dtype.name}")
    last = codes.shape[-1] if codes.shape.rank is not None else None
    if last is not None and last != L:
      raise ValueError(f"SpmSegmenter: 'sid' last dimension must be num_levels={L}, got {last}")
    codes = tf.cast(codes, tf.int64)
    lead = tf.shape(codes)[:-1]
    flat, pad = self._checked_rows(codes)
    found, pid, score, col = self._lookup_spans(flat)
    back_start, back_id = self._viterbi(found, pid, score, col, tf.shape(flat)[0])
    ids = self._backtrack(back_start, back_id, tf.shape(flat)[0])
    ids = tf.where(pad[:, None], tf.constant(-1, tf.int32), ids)
    return tf.reshape(ids, tf.concat([lead, [L]], 0))

  def _checked_rows(self, codes: tf.Tensor):
    """[..., L] int64 codes -> (flat [M, L] int64 with padding rows zeroed, pad [M] bool), after the
    in-graph checks (last dimension L, codes in [0, K) or an all -1 padding row, a non-empty piece table)."""
    L, K = self.num_levels, self.codebook_size
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
    return flat, pad

  def _lookup_spans(self, flat: tf.Tensor):
    """Looks up every (start, length) substring of each [M, L] row in the piece table.

    Returns (found [M, S] bool, piece id [M, S] int32, score [M, S] float32, {(start, length): column}),
    S = L(L+1)/2.
    """
    L, K = self.num_levels, self.codebook_size
    m = tf.shape(flat)[0]
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
    return (found, tf.gather(self.piece_ids, pos), tf.gather(self.piece_scores, pos),
            {sn: j for j, sn in enumerate(spans)})

  def _viterbi(self, found, pid, score, col, m):
    """Best segmentation ending at each position 1..L (sentencepiece EncodeOptimized order: start ascending,
    strict >). Returns (back_start, back_id): lists indexed by end position (entry 0 unused) of [M] int32."""
    best = [tf.zeros([m], tf.float32)]
    back_start, back_id = [None], [None]
    for e in range(1, self.num_levels + 1):
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
    return back_start, back_id

  def _backtrack(self, back_start, back_id, m):
    """[M, L] int32 piece ids on the best path, in order, compacted to the front, -1 padded."""
    L = self.num_levels
    # Backtrack from L: mark the ends on the best path.
    on_path = [tf.zeros([m], tf.bool) for _ in range(L)] + [tf.ones([m], tf.bool)]
    for e in range(L, 0, -1):
      for s in range(e):
        on_path[s] = tf.logical_or(on_path[s], tf.logical_and(on_path[e], tf.equal(back_start[e], s)))
    ends = tf.stack(on_path[1:], axis=1)  # [M, L]: a piece ends at e+1
    ids = tf.stack(back_id[1:], axis=1)
    # Compact the pieces to the front, in order.
    order = tf.argsort(tf.where(ends, 0, 1) * L + tf.range(L)[None, :], axis=1, stable=True)
    return tf.gather(tf.where(ends, ids, -1), order, batch_dims=1)

  def get_config(self):
    cfg = super().get_config()
    cfg.update({"num_levels": self.num_levels, "codebook_size": self.codebook_size, "max_pieces": self.max_pieces})
    return cfg
