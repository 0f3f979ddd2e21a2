"""Query and candidate towers for two-tower retrieval.

Shape letters: B batch, H history length, L SID levels, D content width, F item-encoder width,
Q quality features, d tower output width.

Item features (a dict, the same keys for the candidate item and for each history item):
  item_id     string [B] or [B, H]; "" is padding (its representation is all zeros)
  sid         int32 [..., L] Semantic ID codes (or computed in-graph from ``content`` by a SidAssigner)
  content     float32 [..., D] content embedding
  cluster_id  int32 [...] k-means cluster (or computed in-graph from ``content`` by a ClusterIdLayer)
Only the keys the configured parts need must be present.

One ``ItemEncoder`` (parts chosen by ``ItemEncoderConfig``) is shared by both towers: the candidate
tower applies it to the target item, the query tower to each history item, so what is learned about
an item's SID pieces serves both sides.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

POOLINGS = ("mean", "attention", "gru")


def _hash_embedding_input(x, bins):
  # Strings hash with the stable FarmHash fingerprint used by tf.keras.layers.Hashing, so any id,
  # including ones never seen in training, maps to one of ``bins`` rows (documented OOV fallback).
  return tf.strings.to_hash_bucket_fast(x, bins)


def _apply_flat(layer, x, inner_rank: int):
  """Applies a layer defined on [N, ...] to [..., inner dims] input by flattening the leading dims."""
  shape = tf.shape(x)
  lead = shape[:tf.rank(x) - inner_rank]
  flat = tf.reshape(x, tf.concat([[-1], shape[tf.rank(x) - inner_rank:]], 0))
  y = layer(flat)
  return tf.reshape(y, tf.concat([lead, tf.shape(y)[1:]], 0))


@dataclasses.dataclass
class ItemEncoderConfig:
  """Which parts make up an item's representation (their outputs are concatenated).

  Attributes:
    hash_bins: > 0 adds a hashed item-ID embedding with this many rows (memorisation of head items).
    hash_dim: Width of the hashed item-ID embedding.
    num_clusters: > 0 adds a trainable cluster-ID embedding (Kuaishou) over ``cluster_id``.
    cluster_dim: Width of the cluster-ID embedding.
    content_dim: > 0 adds a Dense projection of ``content`` to this width.
    use_sid: Adds the ``item_representation`` layer (a semrec.sid ``ItemRepresentation``) over the
      SID / content / id features. Needs ``item_representation`` at construction.
    sid_from_content: Computes ``sid`` in-graph from ``content`` with the frozen ``sid_assigner``.
    cluster_from_content: Computes ``cluster_id`` in-graph with the frozen ``cluster_assigner``.
  """
  hash_bins: int = 0
  hash_dim: int = 32
  num_clusters: int = 0
  cluster_dim: int = 32
  content_dim: int = 0
  use_sid: bool = False
  sid_from_content: bool = False
  cluster_from_content: bool = False

  def __post_init__(self):
    for f in ("hash_bins", "num_clusters", "content_dim"):
      if getattr(self, f) < 0:
        raise ValueError(f"ItemEncoderConfig.{f} must be >= 0, got {getattr(self, f)}")
    if not (self.hash_bins or self.num_clusters or self.content_dim or self.use_sid):
      raise ValueError("ItemEncoderConfig enables no part: set hash_bins, num_clusters, content_dim or use_sid")


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


def _config_from(cls, value):
  if isinstance(value, cls):
    return value
  return cls(**dict(value or {}))


def _mlp(dims, output_dim, name):
  layers = [tf.keras.layers.Dense(d, activation="relu", name=f"{name}_hidden{i}") for i, d in enumerate(dims)]
  layers.append(tf.keras.layers.Dense(output_dim, name=f"{name}_out"))
  return tf.keras.Sequential(layers, name=name)


@tf.keras.utils.register_keras_serializable(package="semrec")
class ItemEncoder(tf.keras.layers.Layer):
  """Item features -> [..., F] concatenation of the configured parts; padding items -> zeros.

  Args:
    config: ``ItemEncoderConfig`` (or its dict).
    item_representation: A semrec.sid ``ItemRepresentation`` layer (required if ``config.use_sid``).
    sid_assigner: A frozen semrec.sid ``SidAssigner`` ([N, D] -> [N, L] int32), if ``sid_from_content``.
    cluster_assigner: A frozen semrec.sid ``ClusterIdLayer`` ([N, D] -> [N] int32), if ``cluster_from_content``.
  """

  def __init__(self, config=None, item_representation=None, sid_assigner=None, cluster_assigner=None, **kwargs):
    super().__init__(**kwargs)
    self.config = _config_from(ItemEncoderConfig, config)
    c = self.config
    if c.use_sid and item_representation is None:
      raise ValueError("ItemEncoderConfig.use_sid=True needs an item_representation layer (semrec.sid)")
    if c.sid_from_content and sid_assigner is None:
      raise ValueError("ItemEncoderConfig.sid_from_content=True needs a sid_assigner layer (semrec.sid.SidAssigner)")
    if c.cluster_from_content and cluster_assigner is None:
      raise ValueError("ItemEncoderConfig.cluster_from_content=True needs a cluster_assigner (semrec.sid.ClusterIdLayer)")
    self.item_representation = item_representation if c.use_sid else None
    self.sid_assigner = sid_assigner if c.sid_from_content else None
    self.cluster_assigner = cluster_assigner if c.cluster_from_content else None
    if self.sid_assigner is not None:
      self.sid_assigner.trainable = False
    if self.cluster_assigner is not None:
      self.cluster_assigner.trainable = False
    self.hash_embedding = (tf.keras.layers.Embedding(c.hash_bins, c.hash_dim, name="item_hash_embedding")
                           if c.hash_bins else None)
    self.cluster_embedding = None
    if c.num_clusters:
      from semrec.sid import ClusterIdEmbedding
      self.cluster_embedding = ClusterIdEmbedding(c.num_clusters, c.cluster_dim, name="cluster_embedding")
    self.content_projection = (tf.keras.layers.Dense(c.content_dim, name="content_projection")
                               if c.content_dim else None)

  def required_features(self) -> list:
    c = self.config
    keys = {"item_id"}
    if c.num_clusters:
      keys.add("content" if c.cluster_from_content else "cluster_id")
    if c.content_dim or c.sid_from_content:
      keys.add("content")
    if c.use_sid:
      keys.add("content" if c.sid_from_content else "sid")
    return sorted(keys)

  def call(self, features, training=False):
    c = self.config
    missing = [k for k in self.required_features() if k not in features]
    if missing:
      raise KeyError(f"{self.name}: item features {missing} are missing (got {sorted(features)})")
    ids = tf.convert_to_tensor(features["item_id"])
    mask = tf.cast(tf.not_equal(ids, ""), tf.float32)[..., None]
    parts = []
    if self.item_representation is not None:
      rep_in = {"item_id": ids}
      if c.sid_from_content:
        rep_in["sid"] = tf.cast(_apply_flat(self.sid_assigner, features["content"], 1), tf.int32)
      elif "sid" in features:
        rep_in["sid"] = tf.cast(features["sid"], tf.int32)
      if "content" in features:
        rep_in["content"] = tf.cast(features["content"], tf.float32)
      parts.append(self.item_representation(rep_in))
    if self.hash_embedding is not None:
      parts.append(self.hash_embedding(_hash_embedding_input(ids, c.hash_bins)))
    if self.cluster_embedding is not None:
      if c.cluster_from_content:
        cid = _apply_flat(self.cluster_assigner, features["content"], 1)
      else:
        cid = features["cluster_id"]
      cid = tf.cast(cid, tf.int32)  # -1 = unknown item: zero vector
      parts.append(self.cluster_embedding(tf.maximum(cid, 0)) * tf.cast(cid >= 0, tf.float32)[..., None])
    if self.content_projection is not None:
      parts.append(self.content_projection(tf.cast(features["content"], tf.float32)))
    x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
    return x * mask

  def get_config(self):
    config = super().get_config()
    ser = tf.keras.utils.serialize_keras_object
    config.update({
        "config": dataclasses.asdict(self.config),
        "item_representation": ser(self.item_representation) if self.item_representation is not None else None,
        "sid_assigner": ser(self.sid_assigner) if self.sid_assigner is not None else None,
        "cluster_assigner": ser(self.cluster_assigner) if self.cluster_assigner is not None else None,
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for k in ("item_representation", "sid_assigner", "cluster_assigner"):
      if config.get(k) is not None:
        config[k] = tf.keras.utils.deserialize_keras_object(config[k])
    return cls(**config)


@tf.keras.utils.register_keras_serializable(package="semrec")
class CandidateTower(tf.keras.layers.Layer):
  """Item features [B] -> [B, d] candidate embedding (item encoder, then MLP).

  Args:
    item_encoder: An ``ItemEncoder`` (shared with the query tower).
    config: ``CandidateTowerConfig`` (or its dict).
  """

  def __init__(self, item_encoder, config=None, **kwargs):
    super().__init__(**kwargs)
    if isinstance(item_encoder, dict):
      item_encoder = tf.keras.utils.deserialize_keras_object(item_encoder)
    self.item_encoder = item_encoder
    self.config = _config_from(CandidateTowerConfig, config)
    self.mlp = _mlp(self.config.mlp_dims, self.config.output_dim, "candidate_mlp")

  def call(self, features, training=False):
    x = self.mlp(self.item_encoder(features, training=training), training=training)
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
    self.config = c = _config_from(QueryTowerConfig, config)
    self.user_embedding = (tf.keras.layers.Embedding(c.user_hash_bins, c.user_dim, name="user_hash_embedding")
                           if c.user_hash_bins else None)
    self.attention_proj = self.attention_vector = self.gru = None
    if c.pooling == "attention":
      self.attention_proj = tf.keras.layers.Dense(32, activation="tanh", name="attention_proj")
      self.attention_vector = tf.keras.layers.Dense(1, use_bias=False, name="attention_vector")
    elif c.pooling == "gru":
      self.gru = tf.keras.layers.GRU(c.output_dim, name="history_gru")
    self.mlp = _mlp(c.mlp_dims, c.output_dim, "query_mlp")

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
    return tf.math.l2_normalize(x, axis=-1) if c.normalize else x

  def get_config(self):
    config = super().get_config()
    config.update({"item_encoder": tf.keras.utils.serialize_keras_object(self.item_encoder),
                   "config": dataclasses.asdict(self.config)})
    return config
