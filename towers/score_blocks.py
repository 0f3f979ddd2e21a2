"""Score blocks: the extra terms of a retrieval score, composed into one served dot product.

Shape letters: B batch, H history length, K query vectors of a multi-interest query, d tower width, Q quality
features, D content width, L lexical width.

A retriever scores q.p (query tower . candidate tower). A score block adds one term, block(u, i) =
query_part(u) . candidate_part(i), carrying its own weight in its query part. ``ScoreComposer`` concatenates the
parts, so that

  score(u, i) = [q ; query parts] . [p ; candidate parts] = q.p + sum over blocks of block(u, i)

is ONE dot product: a ScaNN / brute-force index over the composed candidate vectors, a multi-interest
[B, K, d'] query (``semrec.towers.multi_query_top_k``) and the exports serve it unchanged. Blocks:

- ``QualityBlock`` (Etsy): query part w [Q] (one vector shared by every user), candidate part f(p) [Q] (the
  item feature ``quality``); adds w.f(p). w is either trained with the towers (``quality_mode="learned"``, a
  trainable variable) or chosen after training (``"tuned"``).
- ``ContentBlock``: the raw-content similarity of the candidate to the user's recent history, a * cos(u, x)
  (``pooling="mean"``: u the recency-weighted mean of the last ``num_recent`` unit content rows) or
  a * max_t cos(x_t, x) (``pooling="max"``: one query vector per history item, a multi-interest query),
  optionally plus a lexical channel b * cos(lexical), pooled with it (for "max" per history item, so the two
  channels share one max and cannot be separate blocks).

A post-hoc weight (the content block's a, pooling and b, a tuned w) is 0 while training (the block's part of
every training score is 0) and chosen afterwards on validation by ``semrec.towers.tuning`` without retraining.
Post-hoc values are plain numbers, not variables: a checkpoint holds the trained weights only, and a saved
model records the chosen values in one place, ``ScoreComposer.settings()`` (``save_retriever`` writes it next
to the config; ``load_retriever`` applies it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from semrec.config import setting

QUALITY_MODES = ("none", "learned", "tuned")
MIX_POOLINGS = ("mean", "max")
MIX_LEXICAL = ("off", "on", "auto")
# The content weights a tried after training (0 = the learned score alone).
DEFAULT_ALPHA_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


@dataclasses.dataclass
class ScoreConfig:
  """The score blocks of a retriever (``RetrieverConfig.scores``).

  Attributes:
    quality_dim: Q, the number of quality features (0 = no quality block).
    quality_mode: "none", "learned" (w trained with the towers) or "tuned" (w chosen after training,
      ``semrec.towers.tune_quality_weights``).
    content_mix: Add the content block: score = learned + a * content similarity (see ``ContentBlock``); a is
      0 while training and chosen on validation from ``alpha_grid``.
    content_mix_pooling: "mean" (one recency-weighted user vector), "max" (the best cosine to any of the last
      ``num_recent`` history items: a multi-interest query [B, K, d']) or "auto" (chosen on validation with a).
    content_mix_lexical: A lexical channel in the content similarity, read from the item feature ``lexical``
      [N, L] (e.g. ``semrec.encoders.LexicalEncoder``): similarity = cos(content) + b * cos(lexical). "off" (no
      ``lexical`` feature needed), "on" (b = 1) or "auto" (b in {0, 1} chosen on validation with a).
    num_recent: K, the most recent history items the content block reads (the content-kNN baseline's window).
    decay: Recency weight of the "mean" pooling: history item t ages ago weighs decay^t.
    alpha_grid: The content weights a tried on validation (0 = the learned score alone).

  Every field but ``quality_dim``, ``quality_mode`` and ``content_mix`` is post-hoc (``POST_HOC_FIELDS``): the
  trained weights do not depend on it, so a training fingerprint leaves it out.
  """
  quality_dim: int = setting(0, min=0)
  quality_mode: str = setting("none", choices=QUALITY_MODES)
  content_mix: bool = False
  content_mix_pooling: str = setting("mean", choices=MIX_POOLINGS + ("auto",))
  content_mix_lexical: str = setting("off", choices=MIX_LEXICAL)
  num_recent: int = setting(10, min=1)
  decay: float = setting(0.8, min=0.0, max=1.0, min_exclusive=True)
  alpha_grid: tuple = setting(DEFAULT_ALPHA_GRID, min=0.0)

  def __post_init__(self):
    self.alpha_grid = tuple(float(a) for a in self.alpha_grid)
    if self.quality_mode not in QUALITY_MODES:
      raise ValueError(f"ScoreConfig.quality_mode must be one of {QUALITY_MODES}, got {self.quality_mode!r}")
    if self.quality_mode != "none" and self.quality_dim < 1:
      raise ValueError(f"ScoreConfig.quality_mode={self.quality_mode!r} needs quality_dim >= 1, "
                       f"got {self.quality_dim}")
    if self.content_mix_pooling not in MIX_POOLINGS + ("auto",):
      raise ValueError(f"ScoreConfig.content_mix_pooling must be one of {MIX_POOLINGS + ('auto',)}, "
                       f"got {self.content_mix_pooling!r}")
    if self.content_mix_lexical not in MIX_LEXICAL:
      raise ValueError(f"ScoreConfig.content_mix_lexical must be one of {MIX_LEXICAL}, "
                       f"got {self.content_mix_lexical!r}")
    if self.num_recent < 1:
      raise ValueError(f"ScoreConfig.num_recent must be >= 1, got {self.num_recent}")
    if not 0.0 < self.decay <= 1.0:
      raise ValueError(f"ScoreConfig.decay must be in (0, 1], got {self.decay}")
    if not self.alpha_grid or min(self.alpha_grid) < 0:
      raise ValueError(f"ScoreConfig.alpha_grid must be non-empty and >= 0, got {self.alpha_grid}")

  @property
  def uses_quality(self) -> bool:
    return self.quality_mode != "none" and self.quality_dim > 0


# ScoreConfig fields chosen or used only after training: not in a training fingerprint.
POST_HOC_FIELDS = ("content_mix_pooling", "content_mix_lexical", "num_recent", "decay", "alpha_grid")


class ScoreBlock(tf.keras.layers.Layer):
  """One extra score term query_part(u) . candidate_part(i).

  Subclasses define ``keys`` (item features read), ``width``, ``query_part``, ``candidate_part``,
  ``settings`` / ``apply`` (the post-hoc values, JSON-able) and ``trained`` (True when the block's weight is
  trained with the towers; otherwise its part of every training score is 0).
  """

  trained = False

  @property
  def keys(self) -> tuple:
    return ()

  @property
  def multi_interest(self) -> bool:
    """True when ``query_part`` is [B, K, d_b]."""
    return False

  def width(self, item_features) -> int:
    raise NotImplementedError

  def query_part(self, features, batch_shape):
    """[B, d_b] (or [B, K, d_b]) float32 from the query ``features``; ``batch_shape`` is the query tower's
    leading shape."""
    raise NotImplementedError

  def candidate_part(self, item_features):
    """[B, d_b] float32 from the item features."""
    raise NotImplementedError

  def training_part(self, rows, item_features):
    """[M, d_b] query part of ``rows`` training pairs: zeros (a post-hoc weight is 0 while training)."""
    return tf.zeros([rows, self.width(item_features)])

  def settings(self) -> dict:
    return {}

  def apply(self, settings: dict):
    if settings:
      raise ValueError(f"score block {self.name!r} has no post-hoc settings, got {sorted(settings)}")


@tf.keras.utils.register_keras_serializable(package="semrec")
class QualityBlock(ScoreBlock):
  """Etsy's quality vector: query part w [Q] (shared), candidate part f(p) = item feature ``quality`` [B, Q].

  ``learned=True``: w is a trainable variable (zeros at start) trained with the towers. Otherwise w is a
  post-hoc value, 0 until ``apply({"w": ...})``.
  """

  def __init__(self, dim: int, learned: bool = False, **kwargs):
    super().__init__(**kwargs)
    if int(dim) < 1:
      raise ValueError(f"QualityBlock dim must be >= 1, got {dim}")
    self.dim, self.learned = int(dim), bool(learned)
    self.trained = self.learned
    self.w = self.add_weight(name="quality_w", shape=(self.dim,), initializer="zeros") if self.learned else None
    self.value = np.zeros(self.dim, np.float32)

  @property
  def keys(self) -> tuple:
    return ("quality",)

  def width(self, item_features) -> int:
    return self.dim

  def weights_now(self):
    """[Q] float32 w in use."""
    return tf.convert_to_tensor(self.w) if self.learned else tf.constant(self.value)

  def query_part(self, features, batch_shape):
    return tf.broadcast_to(self.weights_now(), tf.concat([batch_shape, [self.dim]], 0))

  def training_part(self, rows, item_features):
    if not self.learned:
      return super().training_part(rows, item_features)
    return tf.broadcast_to(self.w, [rows, self.dim])

  def candidate_part(self, item_features):
    if "quality" not in item_features:
      raise KeyError("the model uses a quality vector but the item features have no 'quality' key")
    return tf.cast(item_features["quality"], tf.float32)

  def settings(self) -> dict:
    return {} if self.learned else {"w": [float(v) for v in self.value]}

  def apply(self, settings: dict):
    if self.learned and settings:
      raise ValueError(f"quality block {self.name!r}: w is learned with the towers (quality_mode='learned'), "
                       "not set after training")
    if "w" in settings:
      w = np.asarray(settings["w"], np.float32).reshape(-1)
      if w.shape != (self.dim,):
        raise ValueError(f"quality block {self.name!r}: w must have {self.dim} values, got {w.shape}")
      self.value = w

  def get_config(self):
    return {**super().get_config(), "dim": self.dim, "learned": self.learned}


@tf.keras.utils.register_keras_serializable(package="semrec")
class ContentBlock(ScoreBlock):
  """a x the raw-content similarity of a candidate to the user's recent history; x unit content rows.

  pooling "mean": query part a * u [B, D], u = normalize(sum_t decay^age_t * x_t) over the last ``num_recent``
  history items (padding excluded), as ``semrec.towers.ContentKnnBaseline``.
  pooling "max": query part a * x_t [B, K, D], one vector per slot of the last K = ``num_recent`` history items
  (K = H if the history is shorter); a padding slot repeats the most recent item (all zeros for an empty
  history), so the max over the K vectors is the max over the real items.

  With ``lexical=True`` the candidate part is [x ; l] (D + L: unit ``content`` and unit ``lexical`` rows) and
  each query vector [a * u ; a * b * u_l] (mean) or [a * x_t ; a * b * l_t] (max), so the similarity is
  cos(content) + b * cos(lexical).

  Post-hoc settings: ``alpha`` (a, 0 until set), ``pooling`` (changeable only with ``tunable_pooling``),
  ``lexical_weight`` (b, 1 until set; changeable only with ``tunable_lexical``).
  """

  def __init__(self, num_recent: int = 10, decay: float = 0.8, pooling: str = "mean", lexical: bool = False,
               tunable_pooling: bool = False, tunable_lexical: bool = False, **kwargs):
    super().__init__(**kwargs)
    if pooling not in MIX_POOLINGS:
      raise ValueError(f"ContentBlock pooling must be one of {MIX_POOLINGS}, got {pooling!r}")
    self.num_recent, self.decay, self.pooling, self.lexical = int(num_recent), float(decay), pooling, bool(lexical)
    self.tunable_pooling, self.tunable_lexical = bool(tunable_pooling), bool(tunable_lexical)
    self.alpha = 0.0
    self.lexical_weight = 1.0 if self.lexical else 0.0

  @property
  def keys(self) -> tuple:
    return ("content", "lexical") if self.lexical else ("content",)

  @property
  def multi_interest(self) -> bool:
    return self.pooling == "max"

  def width(self, item_features) -> int:
    return sum(int(item_features[k].shape[-1]) for k in self.keys)

  def candidate_part(self, item_features):
    """[B, D (+ L)] float32 unit content (and unit lexical) rows."""
    return tf.concat([tf.math.l2_normalize(tf.cast(item_features[k], tf.float32), axis=-1) for k in self.keys], -1)

  def query_part(self, features, batch_shape=None):
    """[B, D'] (mean) or [B, K, D'] (max) float32 from ``features["history"]`` {content [B, H, D],
    (lexical [B, H, L],) item_id [B, H]}; D' = D (+ L)."""
    history = features["history"]
    mask = tf.cast(tf.not_equal(history["item_id"][:, -self.num_recent:], ""), tf.float32)  # [B, K]
    parts = [self._pool(tf.math.l2_normalize(tf.cast(history[k][:, -self.num_recent:], tf.float32), axis=-1), mask)
             for k in self.keys]
    if self.lexical:
      parts[1] = self.lexical_weight * parts[1]
    return self.alpha * tf.concat(parts, axis=-1)

  def _pool(self, x, mask):
    """x [B, K, D] unit rows, mask [B, K] -> [B, K, D] (max) or [B, D] (mean)."""
    if self.pooling == "max":
      x = x * mask[..., None]
      return tf.where(mask[..., None] > 0, x, x[:, -1:])  # padding slot -> most recent item
    h = tf.shape(x)[1]
    w = tf.pow(self.decay, tf.cast(tf.range(h - 1, -1, -1), tf.float32))[None] * mask  # age 0 = last slot
    return tf.math.l2_normalize(tf.reduce_sum(x * w[..., None], axis=1), axis=-1)

  def settings(self) -> dict:
    return {"alpha": float(self.alpha), "pooling": self.pooling,
            "lexical_weight": float(self.lexical_weight) if self.lexical else None}

  def apply(self, settings: dict):
    """Sets any of ``alpha`` (a >= 0), ``pooling`` and ``lexical_weight`` (b; None = no lexical channel)."""
    pooling, b = settings.get("pooling"), settings.get("lexical_weight")
    if pooling is not None and pooling != self.pooling:
      if not self.tunable_pooling or pooling not in MIX_POOLINGS:
        raise ValueError(f"content block {self.name!r}: pooling {pooling!r} needs content_mix_pooling='auto' "
                         f"and one of {MIX_POOLINGS} (fixed pooling: {self.pooling!r})")
      self.pooling = pooling
    if "lexical_weight" in settings and (b or 0.0) != self.lexical_weight:
      if not self.tunable_lexical:
        raise ValueError(f"content block {self.name!r}: lexical_weight {b} needs content_mix_lexical='auto' "
                         f"(fixed b: {self.lexical_weight})")
      self.lexical_weight = float(b or 0.0)
    if "alpha" in settings:
      if float(settings["alpha"]) < 0:
        raise ValueError(f"content block {self.name!r}: alpha must be >= 0, got {settings['alpha']}")
      self.alpha = float(settings["alpha"])

  def get_config(self):
    return {**super().get_config(), "num_recent": self.num_recent, "decay": self.decay, "pooling": self.pooling,
            "lexical": self.lexical, "tunable_pooling": self.tunable_pooling,
            "tunable_lexical": self.tunable_lexical}


class ScoreComposer(tf.keras.layers.Layer):
  """Owns the score blocks and builds the served vectors [q ; query parts] / [p ; candidate parts].

  Args:
    blocks: ``ScoreBlock`` layers with distinct names, in the order of their parts in the composed vectors.
  """

  def __init__(self, blocks: Sequence[ScoreBlock] = (), **kwargs):
    super().__init__(**kwargs)
    self.blocks = list(blocks)
    names = [b.name for b in self.blocks]
    if len(set(names)) != len(names):
      raise ValueError(f"score block names must be distinct, got {names}")

  @classmethod
  def of(cls, config: ScoreConfig, settings: Optional[dict] = None, name: str = "score_blocks") -> "ScoreComposer":
    """The blocks a ``ScoreConfig`` asks for (quality, then content), with ``settings`` (``settings()``-shaped,
    e.g. a saved model's) applied. Without settings "auto" pooling scores with the mean and "auto" lexical
    with b = 1 until tuned; a recorded b = 0 builds the content block without the lexical channel (the model
    then needs no ``lexical`` feature)."""
    settings = settings or {}
    blocks = []
    if config.uses_quality:
      blocks.append(QualityBlock(config.quality_dim, learned=config.quality_mode == "learned", name="quality"))
    if config.content_mix:
      chosen = settings.get("content", {})
      pooling = config.content_mix_pooling
      lexical = config.content_mix_lexical == "on" or (config.content_mix_lexical == "auto" and
                                                        chosen.get("lexical_weight", 1.0) not in (0.0, None))
      blocks.append(ContentBlock(config.num_recent, config.decay, "mean" if pooling == "auto" else pooling,
                                 lexical=lexical, tunable_pooling=pooling == "auto",
                                 tunable_lexical=config.content_mix_lexical == "auto" and lexical,
                                 name="content"))
    composer = cls(blocks, name=name)
    composer.apply(settings)
    return composer

  def __getitem__(self, name: str) -> ScoreBlock:
    for b in self.blocks:
      if b.name == name:
        return b
    raise KeyError(f"no score block {name!r} (blocks: {[b.name for b in self.blocks]})")

  def __contains__(self, name: str) -> bool:
    return any(b.name == name for b in self.blocks)

  @property
  def multi_interest(self) -> bool:
    """True when ``query`` is [B, K, d'] (a block with a multi-interest query part)."""
    return any(b.multi_interest for b in self.blocks)

  def required_features(self) -> set:
    """Item-feature keys the blocks read (their candidate parts, and the history for the content block)."""
    return {k for b in self.blocks for k in b.keys}

  def width(self, item_features) -> int:
    """Total width of the candidate parts."""
    return sum(b.width(item_features) for b in self.blocks)

  def query(self, q, features):
    """[B, d + sum d_b] = [q ; query parts]; [B, K, d'] when a part is multi-interest (q and the other parts
    repeated along K)."""
    if not self.blocks:
      return q
    parts = [b.query_part(features, tf.shape(q)[:-1]) for b in self.blocks]
    multi = [p for p in parts if p.shape.rank == 3]
    if multi:
      k = tf.shape(multi[0])[1]
      parts = [p if p.shape.rank == 3 else tf.repeat(p[:, None], k, axis=1) for p in parts]
      q = tf.repeat(q[:, None], k, axis=1)
    return tf.concat([q, *parts], axis=-1)

  def candidate(self, p, item_features):
    """[B, d + sum d_b] = [p ; candidate parts]."""
    if not self.blocks:
      return p
    return tf.concat([p, *(b.candidate_part(item_features) for b in self.blocks)], axis=-1)

  def training_query(self, q, item_features):
    """[M, d + sum d_b] query vectors of M training pairs: trained blocks' parts, zeros for post-hoc ones.

    ``item_features`` are the positives' (only their widths are read)."""
    if not self.blocks:
      return q
    rows = tf.shape(q)[0]
    return tf.concat([q, *(b.training_part(rows, item_features) for b in self.blocks)], axis=-1)

  def settings(self) -> dict:
    """{block name: its post-hoc settings} (JSON-able): what ``save_retriever`` records."""
    return {b.name: b.settings() for b in self.blocks if b.settings()}

  def apply(self, settings: Optional[dict]):
    """Applies ``settings()``-shaped values; an unknown block name raises."""
    for name, values in (settings or {}).items():
      self[name].apply(values)


__all__ = ["DEFAULT_ALPHA_GRID", "MIX_LEXICAL", "MIX_POOLINGS", "POST_HOC_FIELDS", "QUALITY_MODES", "ContentBlock",
           "QualityBlock", "ScoreBlock", "ScoreComposer", "ScoreConfig"]
