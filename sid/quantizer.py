"""Residual quantiser (L levels x K codes) with straight-through gradients, and the RQ-VAE loss.

Shape letters: B batch, L levels, K codes per level, D latent width.

Residual quantisation: r_1 = z; at level l the code is c_l = argmin_k ||r_l - C_l[k]||^2, the code
vector e_l = C_l[c_l], and r_{l+1} = r_l - e_l. The quantised latent is sum_l e_l; the decoder sees
it through the straight-through estimator z + sg(sum_l e_l - z), so reconstruction gradients reach
the encoder unchanged. Training and frozen inference (``SidAssigner``) share ``nearest_code``, so a
trained model assigns exactly the codes it was trained with.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf


def nearest_code(r: tf.Tensor, codebook: tf.Tensor) -> tf.Tensor:
  """Nearest code by squared L2: [B, D] x [K, D] -> [B] int32.

  ||r - c||^2 = ||r||^2 - 2 r.c + ||c||^2; ||r||^2 is the same for every code, so it is dropped
  (one matmul per level, the same cost structure as faiss' beam-1 encoder).
  """
  c2 = tf.reduce_sum(tf.square(codebook), axis=-1)
  scores = c2[None, :] - 2.0 * tf.matmul(r, codebook, transpose_b=True)
  return tf.argmin(scores, axis=-1, output_type=tf.int32)


def rq_vae_loss(x: tf.Tensor, x_hat: tf.Tensor, residuals: tf.Tensor, code_vectors: tf.Tensor,
                beta: float = 0.25) -> Dict[str, tf.Tensor]:
  """The RQ-VAE loss of Singh et al. (RecSys 2024), averaged over the batch.

  loss = ||x - x_hat||^2 + sum_l [ beta * ||r_l - sg(e_l)||^2 + ||sg(r_l) - e_l||^2 ]

  Args:
    x: [B, F] (normalised) input.
    x_hat: [B, F] decoder output.
    residuals: [B, L, D] r_l, the residual entering level l.
    code_vectors: [B, L, D] e_l, the code vector chosen at level l.
    beta: commitment weight (0.25 in the paper).

  Returns:
    {"loss", "reconstruction", "commitment", "codebook"}: scalars; loss is the sum of the other three.
  """
  recon = tf.reduce_mean(tf.reduce_sum(tf.square(x - x_hat), axis=-1))
  commit = beta * tf.reduce_mean(tf.reduce_sum(tf.square(residuals - tf.stop_gradient(code_vectors)), axis=[1, 2]))
  book = tf.reduce_mean(tf.reduce_sum(tf.square(tf.stop_gradient(residuals) - code_vectors), axis=[1, 2]))
  return {"loss": recon + commit + book, "reconstruction": recon, "commitment": commit, "codebook": book}


@tf.keras.utils.register_keras_serializable(package="semrec")
class ResidualQuantizer(tf.keras.layers.Layer):
  """L-level residual quantiser with K codes per level.

  Input: [B, D] float32 latents. ``call`` returns a dict:
    codes: [B, L] int32; quantized: [B, D] straight-through sum of code vectors;
    residuals: [B, L, D] (r_l); code_vectors: [B, L, D] (e_l).

  Weights: ``codebooks`` [L, K, D] (trainable unless the layer is frozen) and ``steps_since_used``
  [L, K] (non-trainable counter for dead-code reset).

  Args:
    num_levels: L.
    codebook_size: K.
    dim: D, the latent width.
    dead_code_window: a code unused for this many consecutive training steps is reset to the
      residual of a high-error item of the current batch (0 disables resets).
  """

  def __init__(self, num_levels: int, codebook_size: int, dim: int, dead_code_window: int = 50, **kwargs):
    super().__init__(**kwargs)
    if num_levels < 1 or codebook_size < 2 or dim < 1:
      raise ValueError(f"need num_levels >= 1, codebook_size >= 2, dim >= 1; got {num_levels}, "
                       f"{codebook_size}, {dim}")
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.dim = int(dim)
    self.dead_code_window = int(dead_code_window)
    self.codebooks = self.add_weight(
        name="codebooks", shape=(self.num_levels, self.codebook_size, self.dim),
        initializer=tf.keras.initializers.RandomUniform(-1.0 / self.codebook_size, 1.0 / self.codebook_size),
        trainable=True)
    self.steps_since_used = self.add_weight(name="steps_since_used", shape=(self.num_levels, self.codebook_size),
                                            initializer="zeros", trainable=False)

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.dim:
      raise ValueError(f"{self.name}: wrong latent width {input_shape[-1]}, codebooks have width {self.dim}")
    super().build(input_shape)

  def codes(self, z: tf.Tensor) -> tf.Tensor:
    """Frozen inference path: [B, D] -> [B, L] int32 (same arithmetic as ``call``)."""
    r = tf.cast(z, tf.float32)
    out = []
    for l in range(self.num_levels):
      book = self.codebooks[l]
      c = nearest_code(r, book)
      out.append(c)
      r = r - tf.gather(book, c)
    return tf.stack(out, axis=1)

  def call(self, z: tf.Tensor) -> Dict[str, tf.Tensor]:
    z = tf.cast(z, tf.float32)
    r = z
    codes, residuals, vectors = [], [], []
    for l in range(self.num_levels):
      book = self.codebooks[l]
      c = nearest_code(tf.stop_gradient(r), book)
      e = tf.gather(book, c)
      codes.append(c)
      residuals.append(r)
      vectors.append(e)
      r = r - e
    code_vectors = tf.stack(vectors, axis=1)
    quantized = z + tf.stop_gradient(tf.reduce_sum(code_vectors, axis=1) - z)
    return {"codes": tf.stack(codes, axis=1), "quantized": quantized,
            "residuals": tf.stack(residuals, axis=1), "code_vectors": code_vectors}

  def set_codebooks(self, codebooks: np.ndarray):
    """Sets all codebooks from a [L, K, D] array and clears the usage counters."""
    codebooks = np.asarray(codebooks, np.float32)
    if codebooks.shape != (self.num_levels, self.codebook_size, self.dim):
      raise ValueError(f"codebooks must have shape {(self.num_levels, self.codebook_size, self.dim)}, "
                       f"got {codebooks.shape}")
    self.codebooks.assign(codebooks)
    self.steps_since_used.assign(tf.zeros_like(self.steps_since_used))

  def update_usage_and_reset(self, codes: tf.Tensor, residuals: tf.Tensor, code_vectors: tf.Tensor) -> tf.Tensor:
    """Updates the per-code idle counters from a batch and resets dead codes (graph-safe).

    A code idle for ``dead_code_window`` steps is moved onto the residual (at its level) of one
    of the batch items with the largest quantisation error at that level, largest first, so the
    revived code immediately serves the worst-served region of latent space.

    Args:
      codes: [B, L] int32 codes of the batch.
      residuals: [B, L, D] residuals r_l of the batch.
      code_vectors: [B, L, D] chosen code vectors e_l.

    Returns:
      scalar int32: the number of codes reset in this step.
    """
    residuals = tf.stop_gradient(residuals)
    code_vectors = tf.stop_gradient(code_vectors)
    batch = tf.shape(codes)[0]
    new_steps, new_books, n_reset = [], [], tf.constant(0, tf.int32)
    for l in range(self.num_levels):
      counts = tf.math.bincount(codes[:, l], minlength=self.codebook_size, maxlength=self.codebook_size)
      steps = tf.where(counts > 0, tf.zeros_like(self.steps_since_used[l]), self.steps_since_used[l] + 1.0)
      book = self.codebooks[l]
      if self.dead_code_window > 0:
        dead = tf.cast(tf.where(steps >= float(self.dead_code_window))[:, 0], tf.int32)
        n = tf.minimum(tf.shape(dead)[0], batch)
        dead = dead[:n]
        err = tf.reduce_sum(tf.square(residuals[:, l] - code_vectors[:, l]), axis=-1)
        worst = tf.argsort(err, direction="DESCENDING")[:n]
        book = tf.tensor_scatter_nd_update(book, dead[:, None], tf.gather(residuals[:, l], worst))
        steps = tf.tensor_scatter_nd_update(steps, dead[:, None], tf.zeros([n], steps.dtype))
        n_reset += n
      new_books.append(book)
      new_steps.append(steps)
    self.steps_since_used.assign(tf.stack(new_steps))
    if self.dead_code_window > 0:
      self.codebooks.assign(tf.stack(new_books))
    return n_reset

  def get_config(self):
    config = super().get_config()
    config.update({"num_levels": self.num_levels, "codebook_size": self.codebook_size, "dim": self.dim,
                   "dead_code_window": self.dead_code_window})
    return config
