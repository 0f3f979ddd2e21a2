"""Query and candidate towers for two-tower retrieval.

Shape letters: B batch, H history length, F item-encoder width, d tower output width.

Both towers share one ``ItemEncoder`` (towers/item_encoder.py, re-exported here with its config and
``content_basis``; the item-feature dict is documented there): the candidate tower applies it to the target
item, the query tower to each history item, so what is learned about an item's SID pieces serves both sides.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from semrec.towers.item_encoder import ItemEncoder, ItemEncoderConfig, config_from
from semrec.towers.residual import content_basis

POOLINGS = ("mean", "attention", "gru")


def _hash_embedding_input(x, bins):
  # Strings hash with the stable FarmHash fingerprint used by tf.keras.layers.Hashing, so any id,
  # including ones never seen in training, maps to one of ``bins`` rows (documented OOV fallback).
  return tf.strings.to_hash_bucket_fast(x, bins)


@dataclasses.dataclass
class CandidateTowerConfig:
  """The MLP on top of the item encoder.

  Attributes:
    mlp_dims: Hidden layer widths (ReLU).
    output_dim: d, the embedding width (before any quality features are appended).
    normalize: L2-normalise the output (scores become cosines; pair with a temperature).
  """
  mlp_dims: Sequence[int] = (64,)
  output_dim: int = 32
  normalize: bool = True

  def __post_init__(self):
    self.mlp_dims = tuple(int(v) for v in self.mlp_dims)
    if self.output_dim < 1:
      raise ValueError(f"output_dim must be >= 1, got {self.output_dim}")


@dataclasses.dataclass
class QueryTowerConfig:
  """The query tower: user id, pooled history of items, time context, MLP.

  Attributes:
    user_hash_bins: > 0 adds a hashed user-ID embedding (unknown users hash like known ones).
    user_dim: Width of the user embedding.
    max_history: Histories longer than this are truncated to their most recent ``max_history`` items.
    pooling: "mean" (masked mean), "attention" (masked additive attention) or "gru" (masked GRU).
    use_time: Adds the normalised request ``timestamp`` as a context feature.
    time_mean: Timestamp centre for normalisation (seconds; set from the train data).
    time_scale: Timestamp scale for normalisation (seconds).
    mlp_dims: Hidden layer widths (ReLU).
    output_dim: d; must equal the candidate tower's.
    normalize: L2-normalise the output.
  """
  user_hash_bins: int = 0
  user_dim: int = 32
  max_history: int = 20
  pooling: str = "mean"
  use_time: bool = False
  time_mean: float = 0.0
  time_scale: float = 1.0
  mlp_dims: Sequence[int] = (64,)
  output_dim: int = 32
  normalize: bool = True

  def __post_init__(self):
    self.mlp_dims = tuple(int(v) for v in self.mlp_dims)
    if self.pooling not in POOLINGS:
      raise ValueError(f"QueryTowerConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
    if self.max_history < 1:
      raise ValueError(f"QueryTowerConfig.max_history must be >= 1, got {self.max_history}")
    if self.time_scale <= 0:
      raise ValueError(f"QueryTowerConfig.time_scale must be > 0, got {self.time_scale}")


def _mlp(dims, output_dim, name, zero_output: bool = False):
  # zero_output: the last layer starts at 0, so a tower with a content residual starts as pure content.
  layers = [tf.keras.layers.Dense(d, activation="relu", name=f"{name}_hidden{i}") for i, d in enumerate(dims)]
  layers.append(tf.keras.layers.Dense(output_dim, name=f"{name}_out",
                                      kernel_initializer="zeros" if zero_output else "glorot_uniform"))
  return tf.keras.Sequential(layers, name=name)


@tf.keras.utils.register_keras_serializable(package="semrec")
class CandidateTower(tf.keras.layers.Layer):
  """Item features [B] -> [B, d] candidate embedding (item encoder, then MLP, plus the item encoder's
  content residual when it has one).

  Args:
    item_encoder: An ``ItemEncoder`` (shared with the query tower).
    config: ``CandidateTowerConfig`` (or its dict).
  """

  def __init__(self, item_encoder, config=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(item_encoder, dict):
      item_encoder = tf.keras.utils.deserialize_keras_object(item_encoder)
    self.item_encoder = item_encoder
    self.config = config_from(CandidateTowerConfig, config)
    self.residual = item_encoder.residual_layer(self.config.output_dim)
    self.mlp = _mlp(self.config.mlp_dims, self.config.output_dim, "candidate_mlp",
                    zero_output=self.residual is not None)

  def call(self, features, training=False):
    x = self.mlp(self.item_encoder(features, training=training), training=training)
    if self.residual is not None:
      x = x + self.item_encoder.anchor(features)
    return tf.math.l2_normalize(x, axis=-1) if self.config.normalize else x

  def get_config(self):
    config = super().get_config()
    config.update({"item_encoder": tf.keras.utils.serialize_keras_object(self.item_encoder),
                   "config": dataclasses.asdict(self.config)})
    return config


@tf.keras.utils.register_keras_serializable(package="semrec")
class QueryTower(tf.keras.layers.Layer):
  """Query features -> [B, d] query embedding.

  Input dict:
    user_id: string [B] (optional unless ``user_hash_bins`` > 0; unknown users hash to a shared bucket).
    history: item-feature dict with leading dims [B, H], most recent item last, "" padded. H may exceed
      ``max_history`` (the most recent ``max_history`` are kept); an all-padding (empty) history pools to
      zeros, so the query then rests on the user id and context alone.
    timestamp: int64 [B] request time (if ``use_time``).

  Args:
    item_encoder: The ``ItemEncoder`` shared with the candidate tower.
    config: ``QueryTowerConfig`` (or its dict).
  """

  def __init__(self, item_encoder, config=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(item_encoder, dict):
      item_encoder = tf.keras.utils.deserialize_keras_object(item_encoder)
    self.item_encoder = item_encoder
    self.config = c = config_from(QueryTowerConfig, config)
    self.user_embedding = (tf.keras.layers.Embedding(c.user_hash_bins, c.user_dim, name="user_hash_embedding")
                           if c.user_hash_bins else None)
    self.attention_proj = self.attention_vector = self.gru = None
    if c.pooling == "attention":
      self.attention_proj = tf.keras.layers.Dense(32, activation="tanh", name="attention_proj")
      self.attention_vector = tf.keras.layers.Dense(1, use_bias=False, name="attention_vector")
    elif c.pooling == "gru":
      self.gru = tf.keras.layers.GRU(c.output_dim, name="history_gru")
    self.residual = item_encoder.residual_layer(c.output_dim)
    self.mlp = _mlp(c.mlp_dims, c.output_dim, "query_mlp", zero_output=self.residual is not None)

  def _pool(self, h, mask, training):
    """h [B, H, F], mask [B, H] float -> [B, F'] (zeros for an empty history)."""
    count = tf.reduce_sum(mask, axis=1, keepdims=True)
    if self.config.pooling == "mean":
      return tf.reduce_sum(h * mask[..., None], axis=1) / tf.maximum(count, 1.0)
    if self.config.pooling == "attention":
      logits = tf.squeeze(self.attention_vector(self.attention_proj(h)), -1)
      logits = tf.where(mask > 0, logits, tf.fill(tf.shape(logits), -1e9))
      w = tf.nn.softmax(logits, axis=1) * mask  # all-padding rows: weights become exactly 0
      return tf.reduce_sum(h * w[..., None], axis=1)
    out = self.gru(h, mask=mask > 0, training=training)
    return out * tf.cast(count > 0, out.dtype)

  def call(self, features, training=False):
    c = self.config
    parts = []
    if self.user_embedding is not None:
      parts.append(self.user_embedding(_hash_embedding_input(features["user_id"], c.user_hash_bins)))
    hist = {k: v[:, -c.max_history:] for k, v in features["history"].items()}  # keep the most recent
    h = self.item_encoder(hist, training=training)
    mask = tf.cast(tf.not_equal(hist["item_id"], ""), tf.float32)
    parts.append(self._pool(h, mask, training))
    if c.use_time:
      t = (tf.cast(features["timestamp"], tf.float64) - c.time_mean) / c.time_scale
      parts.append(tf.cast(t, tf.float32)[:, None])
    x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
    x = self.mlp(x, training=training)
    if self.residual is not None:  # recency-weighted content term of the history: untrained = content kNN
      x = x + self.item_encoder.history_anchor(hist)
    return tf.math.l2_normalize(x, axis=-1) if c.normalize else x

  def get_config(self):
    config = super().get_config()
    config.update({"item_encoder": tf.keras.utils.serialize_keras_object(self.item_encoder),
                   "config": dataclasses.asdict(self.config)})
    return config


__all__ = ["POOLINGS", "CandidateTower", "CandidateTowerConfig", "ItemEncoder", "ItemEncoderConfig", "QueryTower",
           "QueryTowerConfig", "content_basis"]
