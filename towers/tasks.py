"""Retrieval loss: sampled softmax over in-batch and uniformly sampled candidates (mixed negative sampling).

Shape letters: M positives in the (local) batch, C candidates gathered for the in-batch part (C = M in one
process; every replica's positives under a distribution strategy), S uniformly sampled candidates, d width.

For positive i (query q_i, its positive item p_i) the logits are

  in-batch part    s_ij = q_i . c_j / T - log(C * P(j))      j = 1..C   (logQ: c_j was drawn with prob. P(j))
  sampled part     u_ik = q_i . n_k / T - log(S / N)          k = 1..S   (uniform draws from N catalogue items)

and the loss is the softmax cross-entropy with label j = i. The logQ terms are the log expected number of times
an item is in each candidate set (Yi et al. 2019; mixed negative sampling, Yang et al. 2020), so the two parts
are on one scale: an item's logit does not depend on which set it came from. ``in_batch=False`` keeps only the
positive's own column plus the sampled part; with S = N (the whole catalogue, ``log(S / N) = 0``) that is the
full softmax. ``remove_accidental_hits`` masks every candidate column that holds the positive's own item other
than its own column (in-batch duplicates, and a sampled copy of the positive).

Under a distribution strategy the per-replica loss is divided by the number of replicas (gradients are summed
across replicas), so the global loss is the mean over all positives. The only step that differs between one
process and several is ``semrec.towers.distributed.gather_candidates``: the identity in one process, an
all-gather across replicas (this replica's rows first) under a strategy, so every replica's positives are
negatives for every query, as in the single-process run.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from semrec.towers.distributed import gather_candidates

_MASKED = -1e9  # additive mask for removed candidate columns (finite, so a row never becomes all -inf NaN)


def _log_expected_count(probabilities, num_draws):
  return tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32) * tf.cast(num_draws, tf.float32), 1e-30))


@tf.keras.utils.register_keras_serializable(package="semrec")
class MixedNegativeRetrieval(tf.keras.layers.Layer):
  """Retrieval task: returns the scalar softmax loss over in-batch + uniformly sampled candidates.

  Args:
    temperature: Logits are scores / temperature (None = 1).
    logq_correction: Subtract the log expected count of each candidate (needs positives' probabilities for
      the in-batch part; the sampled part uses log(S / N)).
    remove_accidental_hits: Mask candidate columns holding the positive's item (other than its own column).
    in_batch: Use the other positives of the batch as negatives (False: the positive + sampled items only).
  """

  def __init__(self, temperature: Optional[float] = None, logq_correction: bool = True,
               remove_accidental_hits: bool = True, in_batch: bool = True, **kwargs):
    super().__init__(**kwargs)
    if temperature is not None and temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    self.temperature = temperature
    self.logq_correction = bool(logq_correction)
    self.remove_accidental_hits = bool(remove_accidental_hits)
    self.in_batch = bool(in_batch)

  def logits(self, query_embeddings, candidate_embeddings, candidate_ids=None, candidate_sampling_probability=None,
             sampled_embeddings=None, sampled_ids=None, num_items=None):
    """([M, C' + S] logits, [M] label column) — the pieces ``call`` feeds to the softmax.

    Args:
      query_embeddings: [M, d] float32.
      candidate_embeddings: [M, d] float32, row i = the positive of query i.
      candidate_ids: [M] string/int ids of the positives (for accidental-hit masking).
      candidate_sampling_probability: [M] float32, P(item) of each positive (train frequency), for logQ.
      sampled_embeddings: Optional [S, d] float32 uniformly sampled items.
      sampled_ids: [S] ids of the sampled items (same dtype as ``candidate_ids``).
      num_items: N, the catalogue size the samples were drawn from (for log(S / N)).
    """
    q = tf.cast(query_embeddings, tf.float32)
    inv_t = 1.0 / (self.temperature or 1.0)
    m = tf.shape(q)[0]
    if self.in_batch:
      # [C, ...] over every replica's positives, this replica's M rows first (identity in one process).
      c, cprob, cid = gather_candidates(candidate_embeddings, candidate_sampling_probability, candidate_ids)
      cols = tf.matmul(q, c, transpose_b=True) * inv_t  # [M, C]
      labels = tf.range(m)
      if self.logq_correction:
        if cprob is None:
          raise ValueError("logq_correction needs candidate_sampling_probability")
        cols -= _log_expected_count(cprob, tf.shape(c)[0])[None, :]
      own = tf.one_hot(labels, tf.shape(c)[0], on_value=True, off_value=False)
      if self.remove_accidental_hits:
        # cid[:M] are this replica's positives (ids hashed to int64 when gathered across replicas).
        hits = tf.equal(tf.expand_dims(cid[:m], 1), tf.expand_dims(cid, 0)) & ~own
        cols = tf.where(hits, _MASKED, cols)
    else:
      cols = tf.reduce_sum(q * tf.cast(candidate_embeddings, tf.float32), -1, keepdims=True) * inv_t  # [M, 1]
      labels = tf.zeros([m], tf.int32)
    parts = [cols]
    if sampled_embeddings is not None:
      s = tf.cast(sampled_embeddings, tf.float32)
      u = tf.matmul(q, s, transpose_b=True) * inv_t  # [M, S]
      if self.logq_correction:
        if num_items is None:
          raise ValueError("logq_correction with sampled negatives needs num_items")
        log_ratio = tf.math.log(tf.cast(tf.shape(s)[0], tf.float32) / tf.cast(num_items, tf.float32))
        u -= log_ratio
        if not self.in_batch:  # the positive's own column is then scored as a member of the sampled set
          parts[0] -= log_ratio
      if self.remove_accidental_hits and sampled_ids is not None:
        u = tf.where(tf.equal(tf.expand_dims(candidate_ids, 1), tf.expand_dims(sampled_ids, 0)), _MASKED, u)
      parts.append(u)
    return tf.concat(parts, axis=1), labels

  def call(self, query_embeddings, candidate_embeddings, candidate_ids=None, candidate_sampling_probability=None,
           sampled_embeddings=None, sampled_ids=None, num_items=None, sample_weight=None):
    """Scalar loss: weighted mean over the M positives of the softmax cross-entropy (see ``logits``).

    ``sample_weight``: optional [M] float32 (0 drops a row, e.g. padding positions of a sequence).
    """
    logits, labels = self.logits(query_embeddings, candidate_embeddings, candidate_ids,
                                 candidate_sampling_probability, sampled_embeddings, sampled_ids, num_items)
    per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    w = tf.ones_like(per_row) if sample_weight is None else tf.cast(sample_weight, tf.float32)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return tf.reduce_sum(per_row * w) / tf.maximum(tf.reduce_sum(w), 1.0) / replicas

  def get_config(self):
    config = super().get_config()
    config.update({"temperature": self.temperature, "logq_correction": self.logq_correction,
                   "remove_accidental_hits": self.remove_accidental_hits, "in_batch": self.in_batch})
    return config


__all__ = ["MixedNegativeRetrieval"]
