"""The item encoder both retrieval towers share: item features -> item parts, plus the content residual.

Shape letters: B batch, H history length, L SID levels, D content width, F item-encoder width,
d tower output width.

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

import tensorflow as tf

from semrec.sid.adapters import ItemRepresentation, ItemRepresentationConfig
from semrec.towers.residual import ContentResidual


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


def config_from(cls, value):
  """``value`` as a ``cls`` config: itself, or ``cls(**value)`` for a dict (None -> defaults)."""
  if isinstance(value, cls):
    return value
  return cls(**dict(value or {}))



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
    self.config = c = config_from(ItemEncoderConfig, config)
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
