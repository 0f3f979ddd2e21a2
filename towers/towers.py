"""Query and candidate towers for two-tower retrieval.

Shape letters: B batch, H history length, L SID levels, D content width, F item-encoder width,
Q quality features, d tower output width.

Item features (a dict, the same keys for the candidate item and for each history item):
  item_id     string [B] or [B, H]; "" is padding (its representation is all zeros)
  sid         int32 [..., L] Semantic ID codes (or computed in-graph from ``content`` by a SidAssigner)
  content     float32 [..., D] content embedding
  cluster_k<k> int32 [...] k-means cluster at granularity k, -1 = unknown (or computed in-graph from
              ``content`` by a ClusterIdLayer)
Only the keys the configured parts need must be present (``ItemEncoder.required_features()``).

One ``ItemEncoder`` (parts chosen by ``ItemEncoderConfig``) is shared by both towers: the candidate
tower applies it to the target item, the query tower to each history item, so what is learned about
an item's SID pieces serves both sides. Its parts are one ``semrec.sid.ItemRepresentation`` (the layer
the ranker uses too); around it the encoder adds the cold-start mechanics: ID dropout (in the
representation config), in-graph SID / cluster assignment, and the content residual both towers add.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from semrec.sid.adapters import ItemRepresentation, ItemRepresentationConfig
from semrec.towers.residual import ContentResidual, content_basis  # noqa: F401  (content_basis re-exported)

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


def _default_representation():
  return ItemRepresentationConfig(modes=("random_hash",), hash_buckets=10_000)


@dataclasses.dataclass
class ItemEncoderConfig:
  """An item's representation in the towers: the parts (one ``semrec.sid.ItemRepresentation``) and
  the cold-start mechanics around them.

  Attributes:
    representation: ``semrec.sid.ItemRepresentationConfig`` (or its dict): which parts are concatenated
      (modes "random_hash" = hashed item ID, "dense" = projection of ``content``, "cluster" = trainable
      k-means cluster-ID embeddings over ``cluster_k<k>``, "unigram"/"bigram"/"prefix"/"spm" = SID pieces),
      their widths and table sizes, and ``id_dropout`` (the fraction of rows whose hashed-ID part is zeroed
      in each training batch). The ranker takes the same config. Default: a 10,000-row hashed ID.
    sid_from_content: Computes ``sid`` in-graph from ``content`` with the frozen ``sid_assigner``.
    cluster_from_content: Computes every ``cluster_k<k>`` in-graph from ``content`` with the frozen
      ``cluster_assigner`` layers (one ``semrec.sid.ClusterIdLayer`` per ``cluster_sizes`` entry).
    content_residual: Adds a residual path from the L2-normalised frozen ``content`` to both towers'
      outputs: tower(x) = MLP(parts) + s * normalize(content) @ P, with P [D, d] a frozen projection
      (the catalogue's top-d content directions when a ``content_basis`` is given, else a random
      orthogonal map), s a trainable scale, and the MLP's output layer initialised at zero. An untrained
      retriever therefore scores by content cosine, and training learns corrections on top of what the
      content already knows; a new item gets the same content term as a warm one.
    residual_trainable: Lets P train too (default frozen: the content geometry is kept for new items).
    residual_history_decay: The query side's residual is the recency-weighted mean of its history items'
      residual terms, weight ``decay ** age`` (age 0 = the most recent item), as the content-kNN baseline
      weighs them; 1 = plain mean.
  """
  representation: ItemRepresentationConfig = dataclasses.field(default_factory=_default_representation)
  sid_from_content: bool = False
  cluster_from_content: bool = False
  content_residual: bool = False
  residual_trainable: bool = False
  residual_history_decay: float = 0.8

  def __post_init__(self):
    if isinstance(self.representation, dict):
      self.representation = ItemRepresentationConfig(**self.representation)
    if not isinstance(self.representation, ItemRepresentationConfig):
      raise ValueError(f"ItemEncoderConfig.representation must be an ItemRepresentationConfig or dict, "
                       f"got {type(self.representation).__name__}")
    if self.sid_from_content and not self.representation.uses_sid:
      raise ValueError("ItemEncoderConfig.sid_from_content=True but the representation has no SID mode")
    if not 0.0 < self.residual_history_decay <= 1.0:
      raise ValueError(f"ItemEncoderConfig.residual_history_decay must be in (0, 1], got {self.residual_history_decay}")
    if self.cluster_from_content and not self.representation.cluster_sizes:
      raise ValueError("ItemEncoderConfig.cluster_from_content=True but the representation has no cluster_sizes")

  @property
  def needs_content(self) -> bool:
    return bool(self.content_residual or self.sid_from_content or self.cluster_from_content
                or "content" in self.representation.input_features)


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


def _mlp(dims, output_dim, name, zero_output: bool = False):
  # zero_output: the last layer starts at 0, so a tower with a content residual starts as pure content.
  layers = [tf.keras.layers.Dense(d, activation="relu", name=f"{name}_hidden{i}") for i, d in enumerate(dims)]
  layers.append(tf.keras.layers.Dense(output_dim, name=f"{name}_out",
                                      kernel_initializer="zeros" if zero_output else "glorot_uniform"))
  return tf.keras.Sequential(layers, name=name)


@tf.keras.utils.register_keras_serializable(package="semrec")
class ItemEncoder(tf.keras.layers.Layer):
  """Item features -> [..., F] item parts (one ``semrec.sid.ItemRepresentation``); padding items -> zeros.

  Also owns the content residual (``residual``) both towers add to their outputs when
  ``config.content_residual``: the towers call ``residual_layer(d)`` once and ``anchor(features)``.

  Args:
    config: ``ItemEncoderConfig`` (or its dict).
    item_representation: A prebuilt ``ItemRepresentation`` (e.g. one holding a trained SPM piece table);
      it replaces ``config.representation`` (the config is updated to the layer's). Default: built
      from ``config.representation``.
    spm: A trained ``SidSpm`` for an "spm" representation built here.
    sid_assigner: A frozen semrec.sid ``SidAssigner`` ([N, D] -> [N, L] int32), if ``sid_from_content``.
    cluster_assigner: Frozen semrec.sid ``ClusterIdLayer`` ([N, D] -> [N] int32), or a list of them in
      ``cluster_sizes`` order, if ``cluster_from_content``.
    content_basis: Optional [D, d] initial residual projection (``content_basis(content, d)``).
  """

  def __init__(self, config=None, item_representation=None, spm=None, sid_assigner=None, cluster_assigner=None,
               content_basis=None, **kwargs):
    super().__init__(**kwargs)
    self.config = c = _config_from(ItemEncoderConfig, config)
    if item_representation is None:
      item_representation = ItemRepresentation(c.representation, spm=spm, name="item_representation")
    else:
      c.representation = item_representation.config
    self.item_representation = item_representation
    if c.sid_from_content and sid_assigner is None:
      raise ValueError("ItemEncoderConfig.sid_from_content=True needs a sid_assigner layer (semrec.sid.SidAssigner)")
    assigners = [] if cluster_assigner is None else (
        list(cluster_assigner) if isinstance(cluster_assigner, (list, tuple)) else [cluster_assigner])
    if c.cluster_from_content and len(assigners) != len(c.representation.cluster_sizes):
      raise ValueError(f"ItemEncoderConfig.cluster_from_content=True needs one cluster_assigner "
                       f"(semrec.sid.ClusterIdLayer) per cluster size {c.representation.cluster_sizes}, "
                       f"got {len(assigners)}")
    for a, k in zip(assigners, c.representation.cluster_sizes):
      if a.num_clusters != k:
        raise ValueError(f"cluster_assigner {a.name!r} has {a.num_clusters} clusters, the representation expects {k}")
      a.trainable = False
    self.sid_assigner = sid_assigner if c.sid_from_content else None
    self.cluster_assigner = (assigners[0] if len(assigners) == 1 else assigners) if c.cluster_from_content else None
    self._cluster_assigners = assigners if c.cluster_from_content else []
    if self.sid_assigner is not None:
      self.sid_assigner.trainable = False
    self._content_basis = content_basis
    self.residual = None

  @property
  def output_dim(self) -> int:
    return self.item_representation.output_dim

  def residual_layer(self, dim: int):
    """The shared ``ContentResidual`` of width ``dim`` (created on first use); None without a residual."""
    if not self.config.content_residual:
      return None
    if self.residual is None:
      basis = self._content_basis
      self.residual = ContentResidual(dim, basis=basis, trainable_projection=self.config.residual_trainable,
                                      name="content_residual")
    elif self.residual.dim != dim:
      raise ValueError(f"content residual has width {self.residual.dim}, a tower asked for {dim}: "
                       "both towers' output_dim must match")
    return self.residual

  def required_features(self) -> list:
    c = self.config
    keys = {"item_id"}
    for k in c.representation.input_features:
      from_content = (k == "sid" and c.sid_from_content) or (k.startswith("cluster_k") and c.cluster_from_content)
      keys.add("content" if from_content else k)
    if c.needs_content:
      keys.add("content")
    return sorted(keys)

  def _check(self, features):
    missing = [k for k in self.required_features() if k not in features]
    if missing:
      raise KeyError(f"{self.name}: item features {missing} are missing (got {sorted(features)})")

  def call(self, features, training=False):
    c = self.config
    self._check(features)
    ids = tf.convert_to_tensor(features["item_id"])
    rep_in = {"item_id": ids}
    for k in c.representation.input_features:
      if k in rep_in:
        continue
      if k == "sid" and c.sid_from_content:
        rep_in[k] = tf.cast(_apply_flat(self.sid_assigner, features["content"], 1), tf.int32)
      elif k.startswith("cluster_k") and c.cluster_from_content:
        layer = self._cluster_assigners[c.representation.cluster_sizes.index(int(k[len("cluster_k"):]))]
        rep_in[k] = _apply_flat(layer, features["content"], 1)
      else:
        rep_in[k] = features[k]
    x = self.item_representation(rep_in, training=training)
    return x * tf.cast(tf.not_equal(ids, ""), x.dtype)[..., None]

  def anchor(self, features):
    """[..., d] content residual term of each item (zeros for padding); needs ``residual_layer`` first."""
    if self.residual is None:
      raise ValueError(f"{self.name}: no content residual (config.content_residual=False or not built)")
    self._check(features)
    ids = tf.convert_to_tensor(features["item_id"])
    a = self.residual(tf.cast(features["content"], tf.float32))
    return a * tf.cast(tf.not_equal(ids, ""), a.dtype)[..., None]

  def history_anchor(self, history):
    """[B, d] query-side residual: recency-weighted mean of the [B, H] history items' ``anchor`` terms
    (most recent item last, "" padding ignored; zeros for an empty history)."""
    a = self.anchor(history)  # [B, H, d]
    mask = tf.cast(tf.not_equal(history["item_id"], ""), a.dtype)
    h = tf.shape(mask)[1]
    age = tf.cast(tf.range(h - 1, -1, -1), a.dtype)  # the last column is the most recent
    w = tf.pow(tf.constant(self.config.residual_history_decay, a.dtype), age)[None, :] * mask
    return tf.reduce_sum(a * w[..., None], axis=1) / tf.maximum(tf.reduce_sum(w, 1, keepdims=True), 1e-12)

  def get_config(self):
    config = super().get_config()
    ser = tf.keras.utils.serialize_keras_object
    config.update({
        "config": dataclasses.asdict(self.config),
        "item_representation": ser(self.item_representation),
        "sid_assigner": ser(self.sid_assigner) if self.sid_assigner is not None else None,
        "cluster_assigner": [ser(a) for a in self._cluster_assigners] or None,
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    de = tf.keras.utils.deserialize_keras_object
    for k in ("item_representation", "sid_assigner"):
      if config.get(k) is not None:
        config[k] = de(config[k])
    if config.get("cluster_assigner") is not None:
      v = config["cluster_assigner"]
      config["cluster_assigner"] = [de(a) for a in v] if isinstance(v, list) else de(v)
    return cls(**config)


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
    self.config = _config_from(CandidateTowerConfig, config)
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
    self.config = c = _config_from(QueryTowerConfig, config)
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
