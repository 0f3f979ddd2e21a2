"""Trie-constrained beam search over the S = L + 1 SID levels, in standard TF ops (static unroll).

Shape letters: B queries, W beam width, k results (k <= W), S token levels, V_l codes of level l, P_l prefixes.

Step l (l = 0 .. S - 1): the decoder reads BOS + each beam's l tokens, and the log-softmax over level l's codes
is added to the beam's score; the trie row of the beam's prefix (``children[l][prefix]``) masks the codes no
catalogue item continues with, so only valid prefixes survive; the best W (beam, code) pairs are kept. At the
first step only beam 0 (the empty prefix) is live. At the last step the trie gives item rows, and (optionally)
the items of the user's history are masked before the final top-k. A beam with fewer than W valid
continuations keeps -1e9-scored dead slots; they come out as row -1 with ``NO_ITEM_SCORE``.

When W >= the number of valid SIDs no prefix is ever pruned, so the result is exactly the brute-force top-k of
the sequence log-probability over all valid SIDs (tests/test_generative.py checks it).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

NEG = -1e9  # score of a masked (beam, code) pair
NO_ITEM_SCORE = -1e9  # score of an empty result slot (row -1, item id "")


def constrained_beam_search(decode: Callable[[tf.Tensor], tf.Tensor], children: Sequence[tf.Tensor],
                            level_offsets: Sequence[int], level_sizes: Sequence[int], batch_size: tf.Tensor,
                            beam_width: int, top_k: int, bos: int = 1,
                            exclude_rows: Optional[tf.Tensor] = None) -> tuple:
  """Beam search restricted to the trie's SIDs.

  Args:
    decode: ``decode(tokens [B * W, t] int32) -> [B * W, t, V] float32`` logits (row b * W + w = beam w of
      query b; the encoder memory already repeated W times).
    children: S int32 tensors [P_l, V_l] (``Trie.children``).
    level_offsets, level_sizes: [S] token id of code 0 and codes per level.
    batch_size: B (scalar int32 tensor).
    beam_width: W. top_k: k <= W.
    bos: BOS token id.
    exclude_rows: optional [B, H] int32 item rows never returned (-1 or any row >= N = padding).

  Returns:
    (rows [B, k] int32 item rows or -1, scores [B, k] float32 sequence log-probs or ``NO_ITEM_SCORE``,
    tokens [B, k, S] int32 token ids of the results), sorted by descending score.
  """
  w, k = int(beam_width), int(top_k)
  if not 1 <= k <= w:
    raise ValueError(f"need 1 <= top_k <= beam_width, got top_k={k}, beam_width={w}")
  s = len(children)
  b = batch_size
  scores = tf.tile(tf.constant([[0.0] + [NEG] * (w - 1)], tf.float32), [b, 1])  # [B, W]
  prefix = tf.zeros([b, w], tf.int32)
  tokens = tf.fill([b, w, 1], bos)
  for l in range(s):
    v = int(level_sizes[l])
    logits = decode(tf.reshape(tokens, [b * w, l + 1]))[:, -1, level_offsets[l]:level_offsets[l] + v]
    logp = tf.reshape(tf.nn.log_softmax(logits, axis=-1), [b, w, v])
    child = tf.gather(children[l], prefix)  # [B, W, V_l]
    valid = (child >= 0) & (scores > NEG / 2)[:, :, None]
    if l == s - 1 and exclude_rows is not None:
      seen = tf.reduce_any(child[:, :, :, None] == exclude_rows[:, None, None, :], axis=-1)
      valid &= ~seen
    cand = tf.where(valid, scores[:, :, None] + logp, NEG)
    keep = min(w, w * v)
    scores, idx = tf.math.top_k(tf.reshape(cand, [b, w * v]), k=keep)
    if keep < w:  # fewer (beam, code) pairs than beams: pad with dead slots
      scores = tf.concat([scores, tf.fill([b, w - keep], NEG)], axis=1)
      idx = tf.concat([idx, tf.zeros([b, w - keep], tf.int32)], axis=1)
    parent, code = idx // v, idx % v
    prefix = tf.gather(tf.reshape(child, [b, w * v]), idx, batch_dims=1)
    alive = scores > NEG / 2
    prefix = tf.where(alive, prefix, 0)  # dead slots point at a real row; their score keeps them dead
    tokens = tf.concat([tf.gather(tokens, parent, batch_dims=1), (code + level_offsets[l])[:, :, None]], axis=2)
  alive = scores[:, :k] > NEG / 2
  rows = tf.where(alive, prefix[:, :k], -1)
  out_scores = tf.where(alive, scores[:, :k], NO_ITEM_SCORE)
  return rows, out_scores, tokens[:, :k, 1:]


__all__ = ["NEG", "NO_ITEM_SCORE", "constrained_beam_search"]
