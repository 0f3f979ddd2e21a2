"""The content residual of the cold-aware item tower (see ``ItemEncoderConfig.content_residual``).

Shape letters: N items, D content width, d tower output width.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def content_basis(content, dim: int) -> np.ndarray:
  """[D, dim] float32 orthonormal columns: the top-``dim`` directions of the L2-normalised ``content``
  [N, D] (uncentred SVD, so x.P.P^T.y is the best rank-``dim`` approximation of the cosines); columns
  beyond D are zero. Use it as the ``content_basis`` of an ``ItemEncoder`` with ``content_residual``."""
  x = np.asarray(content, np.float64)
  if x.ndim != 2 or not np.isfinite(x).all():
    raise ValueError(f"content_basis: content must be a finite [N, D] array, got shape {x.shape}")
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  basis = np.zeros((x.shape[1], dim), np.float32)
  k = min(dim, vt.shape[0])
  basis[:, :k] = vt[:k].T
  return basis


@tf.keras.utils.register_keras_serializable(package="semrec")
class ContentResidual(tf.keras.layers.Layer):
  """content [..., D] float32 -> [..., d] float32 = scale * normalize(content) @ P.

  P [D, d] is frozen unless ``trainable_projection`` (initialised from ``basis`` when given, else a
  seeded random orthogonal map: with d >= D it preserves every cosine exactly); ``scale`` is a
  trainable scalar starting at 1. An all-zero content row (padding, unknown item) maps to zeros.
  """

  def __init__(self, dim: int, basis=None, trainable_projection: bool = False, **kwargs):
    super().__init__(**kwargs)
    if dim < 1:
      raise ValueError(f"ContentResidual.dim must be >= 1, got {dim}")
    self.dim = int(dim)
    self.trainable_projection = bool(trainable_projection)
    self._basis = None if basis is None else np.asarray(basis, np.float32)
    if self._basis is not None and (self._basis.ndim != 2 or self._basis.shape[1] != self.dim):
      raise ValueError(f"ContentResidual: basis must be [D, {self.dim}], got {self._basis.shape}")

  def build(self, input_shape):
    width = int(input_shape[-1])
    if self._basis is not None and self._basis.shape[0] != width:
      raise ValueError(f"{self.name}: content width {width} != basis rows {self._basis.shape[0]}")
    init = (tf.constant_initializer(self._basis) if self._basis is not None
            else tf.keras.initializers.Orthogonal(seed=0))
    self.projection = self.add_weight(name="projection", shape=(width, self.dim), initializer=init,
                                      trainable=self.trainable_projection)
    self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True)
    super().build(input_shape)

  def set_basis(self, basis):
    """Sets P to ``basis`` [D, d] (e.g. ``content_basis(catalogue_content, d)``), before or after building."""
    basis = np.asarray(basis, np.float32)
    if basis.ndim != 2 or basis.shape[1] != self.dim:
      raise ValueError(f"ContentResidual: basis must be [D, {self.dim}], got {basis.shape}")
    if self.built:
      if tuple(self.projection.shape) != basis.shape:
        raise ValueError(f"{self.name}: basis shape {basis.shape} != projection shape {tuple(self.projection.shape)}")
      self.projection.assign(basis)
    self._basis = basis

  def call(self, content):
    x = tf.math.l2_normalize(tf.cast(content, tf.float32), axis=-1)  # zero rows stay zero
    return self.scale * tf.tensordot(x, self.projection, axes=1)

  def get_config(self):
    config = super().get_config()
    config.update({"dim": self.dim, "trainable_projection": self.trainable_projection})
    return config
