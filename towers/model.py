"""The two-tower retriever (tfrs.Model + tfrs.tasks.Retrieval) with an optional Etsy quality vector.

Shape letters: B batch, N catalogue items, d tower width, Q quality features.

Scores: with quality features the candidate embedding is [p ; f(p)] ([B, d + Q]) and the query
embedding [q ; w] with one shared vector w [Q], so score = q.p + w.f(p). w is either learned with the
towers (``quality_mode="learned"``) or held at zero during training and tuned afterwards on a
validation window (``quality_mode="tuned"``, see ``semrec.towers.quality.tune_quality_weights``) without retraining; the
tuned w is a model variable, so serving (``query_embedding`` / an index built from
``candidate_embedding``) applies it.

Training: the injected task (default ``semrec.towers.MixedNegativeRetrieval``): softmax over in-batch
candidates (logQ-corrected with train item frequencies) plus S uniformly sampled catalogue items
(``num_negatives``; -1 = full softmax), accidental-hit masking on item ids, and a temperature. A pooled
query tower trains on one (history -> item) row per interaction; the sequential tower on whole sequences,
one target per position. Full-catalogue metrics come from ``semrec.towers.evaluate_scores``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from semrec.config import from_dict, setting, to_dict
from semrec.towers.sequential import SequentialQueryTower, SequentialTowerConfig
from semrec.towers.tasks import MixedNegativeRetrieval
from semrec.towers.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QueryTower,
                                  QueryTowerConfig)

QUALITY_MODES = ("none", "learned", "tuned")
QUERY_TOWERS = ("pooled", "sequential")
MIX_POOLINGS = ("mean", "max")
MIX_LEXICAL = ("off", "on", "auto")
# RetrieverConfig fields chosen after training: not in a training fingerprint.
POST_HOC_FIELDS = ("content_mix_pooling", "content_mix_lexical")


@dataclasses.dataclass
class RetrieverConfig:
  """A two-tower retriever.

  Attributes:
    item: Parts of the item representation (shared by both towers).
    candidate: Candidate-tower MLP.
    query: Pooled query-tower settings (``query_tower="pooled"``).
    query_tower: "pooled" (``QueryTower``: user id + mean/attention/GRU pooled history) or "sequential"
      (``SequentialQueryTower``: causal self-attention, trained on every prefix of each train sequence).
    sequential: Settings of the sequential tower.
    num_negatives: S uniformly sampled catalogue items added to the softmax per batch (mixed negative
      sampling); -1 = the whole catalogue (full softmax), 0 = in-batch negatives only.
    in_batch_negatives: Use the batch's other positives as negatives (with logQ correction).
    temperature: Softmax temperature (scores / temperature); None = 1.
    logq_correction: Subtract log(item train frequency) from in-batch logits (needs ``item_prob``).
    remove_accidental_hits: Mask in-batch negatives that are the positive item itself.
    quality_dim: Q, the number of quality features (0 = no quality vector).
    quality_mode: "none", "learned" (w trained with the towers) or "tuned" (w set after training).
    content_mix: Score mixing with the raw content: the query gets [.. ; a * u] and the candidate [.. ; x],
      with u the recency-weighted mean of the unit content of the last 10 history items (the content-kNN
      baseline's user vector) and x the item's unit content, so score = learned + a * cos(u, x). a is a
      model variable, 0 while training and set afterwards on validation (``set_content_mix``).
    content_mix_pooling: How the content part scores a candidate against the history. "mean": the one
      recency-weighted user vector above (one query vector). "max": multi-interest, the best cosine between the
      candidate and any of the last 10 history items (score = learned + a * max_t cos(x_t, x)); the query is then
      K = 10 vectors [B, K, d'], one per history item, and a candidate's score is the max over them, which an
      index serves exactly by searching each vector and merging (``semrec.towers.multi_query_top_k``).
      "auto": chosen on validation together with a (``tune_content_mix``); training does not depend on it.
      A saved model records the pooling in use.
    content_mix_lexical: A second, lexical channel in the content score, read from the item feature
      ``lexical`` [N, L] (unit rows, e.g. ``semrec.encoders.LexicalEncoder``: TF-IDF + SVD of the item texts).
      The content score becomes cos(content) + b * cos(lexical), pooled as above (per history item for "max").
      "off": no lexical channel (no ``lexical`` feature needed). "on": b = 1. "auto": b in {0, 1} chosen on
      validation together with a and the pooling (``tune_content_mix``); training does not depend on it. A
      saved model records "on" or "off" (b = 0).
    learning_rate: Adam learning rate used by ``compile_retriever``.
  """
  item: ItemEncoderConfig = dataclasses.field(default_factory=ItemEncoderConfig)
  candidate: CandidateTowerConfig = dataclasses.field(default_factory=CandidateTowerConfig)
  query: QueryTowerConfig = dataclasses.field(default_factory=QueryTowerConfig)
  query_tower: str = "pooled"
  sequential: SequentialTowerConfig = dataclasses.field(default_factory=SequentialTowerConfig)
  num_negatives: int = 0
  in_batch_negatives: bool = True
  temperature: Optional[float] = 0.05
  logq_correction: bool = True
  remove_accidental_hits: bool = True
  quality_dim: int = 0
  quality_mode: str = "none"
  content_mix: bool = False
  content_mix_pooling: str = setting("mean", choices=MIX_POOLINGS + ("auto",))
  content_mix_lexical: str = setting("off", choices=MIX_LEXICAL)
  learning_rate: float = 3e-3

  def __post_init__(self):
    if isinstance(self.item, dict):
      self.item = ItemEncoderConfig(**self.item)
    if isinstance(self.candidate, dict):
      self.candidate = CandidateTowerConfig(**self.candidate)
    if isinstance(self.query, dict):
      self.query = QueryTowerConfig(**self.query)
    if isinstance(self.sequential, dict):
      self.sequential = SequentialTowerConfig(**self.sequential)
    if self.query_tower not in QUERY_TOWERS:
      raise ValueError(f"RetrieverConfig.query_tower must be one of {QUERY_TOWERS}, got {self.query_tower!r}")
    if self.num_negatives < -1:
      raise ValueError(f"RetrieverConfig.num_negatives must be >= -1, got {self.num_negatives}")
    if not self.in_batch_negatives and self.num_negatives == 0:
      raise ValueError("in_batch_negatives=False needs num_negatives != 0 (no negatives at all otherwise)")
    if self.quality_mode not in QUALITY_MODES:
      raise ValueError(f"RetrieverConfig.quality_mode must be one of {QUALITY_MODES}, got {self.quality_mode!r}")
    if self.quality_mode != "none" and self.quality_dim < 1:
      raise ValueError(f"quality_mode={self.quality_mode!r} needs quality_dim >= 1")
    if self.content_mix_pooling not in MIX_POOLINGS + ("auto",):
      raise ValueError(f"RetrieverConfig.content_mix_pooling must be one of {MIX_POOLINGS + ('auto',)}, "
                       f"got {self.content_mix_pooling!r}")
    if self.content_mix_lexical not in MIX_LEXICAL:
      raise ValueError(f"RetrieverConfig.content_mix_lexical must be one of {MIX_LEXICAL}, "
                       f"got {self.content_mix_lexical!r}")
    if self.query_tower == "pooled" and self.candidate.output_dim != self.query.output_dim:
      raise ValueError(f"candidate.output_dim ({self.candidate.output_dim}) != query.output_dim "
                       f"({self.query.output_dim})")
    if self.temperature is not None and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  @property
  def max_history(self) -> int:
    return self.sequential.max_history if self.query_tower == "sequential" else self.query.max_history

  @property
  def uses_quality(self) -> bool:
    return self.quality_mode != "none" and self.quality_dim > 0


@tf.keras.utils.register_keras_serializable(package="semrec")
class ContentMix(tf.keras.layers.Layer):
  """The raw-content part of a mixed score; x are unit content rows, a (``alpha``) a non-trainable scalar, 0
  until set.

  pooling "mean": query a * u [B, D], u = normalize(sum_t decay^age_t * x_t) over the last ``num_recent``
  history items (padding excluded), as ``semrec.towers.ContentKnnBaseline``.
  pooling "max": query a * x_t [B, K, D], one vector per slot of the last K = ``num_recent`` history items
  (K = H if the history is shorter); a padding slot repeats the most recent item (all zeros for an empty
  history), so the max over the K vectors is the max over the real items.

  With ``lexical=True`` the item side is [x ; l] (D + L: unit ``content`` and unit ``lexical`` rows) and each
  query vector [a * u ; a * b * u_l] (mean) or [a * x_t ; a * b * l_t] (max), so the content score is
  cos(content) + b * cos(lexical); b (``lexical_weight``) is a non-trainable scalar, 1 until set.
  """

  def __init__(self, num_recent: int = 10, decay: float = 0.8, pooling: str = "mean", lexical: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if pooling not in MIX_POOLINGS:
      raise ValueError(f"ContentMix pooling must be one of {MIX_POOLINGS}, got {pooling!r}")
    self.num_recent, self.decay, self.pooling, self.lexical = int(num_recent), float(decay), pooling, bool(lexical)
    self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", trainable=False)
    self.lexical_weight = (self.add_weight(name="lexical_weight", shape=(), initializer="ones", trainable=False)
                           if self.lexical else None)

  @property
  def keys(self) -> tuple:
    """The item-feature keys the mix reads."""
    return ("content", "lexical") if self.lexical else ("content",)

  def width(self, item_features) -> int:
    return sum(int(item_features[k].shape[-1]) for k in self.keys)

  def candidate(self, item_features):
    """[B, D (+ L)] float32 unit content (and unit lexical) rows."""
    return tf.concat([tf.math.l2_normalize(tf.cast(item_features[k], tf.float32), axis=-1) for k in self.keys], -1)

  def query(self, history):
    """[B, D'] (mean) or [B, K, D'] (max) float32 from ``history`` {content [B, H, D], (lexical [B, H, L],)
    item_id [B, H]}; D' = D (+ L)."""
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

  def get_config(self):
    return {**super().get_config(), "num_recent": self.num_recent, "decay": self.decay, "pooling": self.pooling,
            "lexical": self.lexical}


class TwoTowerRetriever(tfrs.Model):
  """Two-tower retrieval model; the loss is an injected task layer (TFRS style).

  Args:
    config: ``RetrieverConfig``.
    item_representation: optional prebuilt semrec.sid ``ItemRepresentation`` (e.g. with a trained SPM);
      default built from ``config.item.representation``.
    sid_assigner: frozen semrec.sid ``SidAssigner`` when ``config.item.sid_from_content``.
    cluster_assigner: frozen semrec.sid ``ClusterIdLayer`` when ``config.item.cluster_from_content``.
    spm: trained ``SidSpm`` for an "spm" representation built from the config.
    content_basis: optional [D, d] initial content-residual projection (``config.item.content_residual``).
    task: The loss layer, called as ``task(q, c, candidate_ids=, candidate_sampling_probability=,
      sampled_embeddings=, sampled_ids=, num_items=, sample_weight=)``; default a ``MixedNegativeRetrieval``
      built from the config (temperature, logQ, accidental hits, in-batch negatives).

  Inputs: the nested batch dicts of ``semrec.towers.RetrievalInputs``: pointwise rows (``dataset``: user_id,
  timestamp, item_prob, item{...}, history{...}) or, for the sequential tower, sequences
  (``sequence_dataset``: history{... [B, H]}, target{... [B, H]}, target_prob [B, H]); either may carry
  ``negatives{... [S]}`` and ``num_items`` (uniformly sampled items for the softmax).
  """

  def __init__(self, config: RetrieverConfig, item_representation=None, sid_assigner=None, cluster_assigner=None,
               task: Optional[tf.keras.layers.Layer] = None, spm=None, content_basis=None, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.item_encoder = ItemEncoder(config.item, item_representation=item_representation, spm=spm,
                                    sid_assigner=sid_assigner, cluster_assigner=cluster_assigner,
                                    content_basis=content_basis, name="item_encoder")
    self.candidate_tower = CandidateTower(self.item_encoder, config.candidate, name="candidate_tower")
    if config.query_tower == "sequential":
      self.query_tower = SequentialQueryTower(self.candidate_tower, config.sequential,
                                              output_dim=config.candidate.output_dim, name="query_tower")
    else:
      self.query_tower = QueryTower(self.item_encoder, config.query, name="query_tower")
    self.quality_weights = None
    if config.uses_quality:
      self.quality_weights = self.add_weight(name="quality_w", shape=(config.quality_dim,), initializer="zeros",
                                             trainable=config.quality_mode == "learned")
    pooling = "mean" if config.content_mix_pooling == "auto" else config.content_mix_pooling  # until tuned
    self.content_mix = (ContentMix(pooling=pooling, lexical=config.content_mix_lexical != "off", name="content_mix")
                        if config.content_mix else None)
    self.task = task or MixedNegativeRetrieval(temperature=config.temperature, logq_correction=config.logq_correction,
                                               remove_accidental_hits=config.remove_accidental_hits,
                                               in_batch=config.in_batch_negatives, name="task")

  def _with_w(self, q):
    if self.quality_weights is None:
      return q
    w = tf.broadcast_to(self.quality_weights, tf.concat([tf.shape(q)[:-1], [self.config.quality_dim]], 0))
    return tf.concat([q, w], axis=-1)

  def required_features(self) -> list:
    """Item-feature keys the model reads (the item encoder's, plus ``content`` (and ``lexical``) for the content
    mix)."""
    keys = set(self.item_encoder.required_features())
    return sorted(keys | set(self.content_mix.keys) if self.content_mix is not None else keys)

  @property
  def multi_interest(self) -> bool:
    """True when ``query_embedding`` is [B, K, d'] (content mix with "max" pooling)."""
    return self.content_mix is not None and self.content_mix.pooling == "max"

  def query_embedding(self, features, training=False):
    """[B, d] query embedding; [q ; w] with the quality vector; [.. ; a * u] with the content mix.

    With ``multi_interest`` it is [B, K, d']: row t is [q ; w ; a * x_t] (``ContentMix``); score a candidate
    by the max over the K rows (``semrec.towers.dot_scores``).
    """
    q = self._with_w(self.query_tower(features, training=training))
    if self.content_mix is None:
      return q
    mix = self.content_mix.query(features["history"])
    if self.multi_interest:
      q = tf.repeat(q[:, None], tf.shape(mix)[1], axis=1)
    return tf.concat([q, mix], axis=-1)

  def candidate_embedding(self, item_features, training=False):
    """[B, d] candidate embedding; [p ; f(p)] with the quality vector; [.. ; x] with the content mix."""
    p = self.candidate_tower(item_features, training=training)
    if self.quality_weights is not None:
      if "quality" not in item_features:
        raise KeyError("the model uses a quality vector but the item features have no 'quality' key")
      p = tf.concat([p, tf.cast(item_features["quality"], tf.float32)], axis=-1)
    if self.content_mix is None:
      return p
    return tf.concat([p, self.content_mix.candidate(item_features)], axis=-1)

  def set_content_mix(self, alpha: float, pooling: Optional[str] = None, lexical_weight: Optional[float] = None):
    """Sets a, the weight of the content score in every later score, and (``content_mix_pooling="auto"``
    only) the pooling, "mean" or "max", and (``content_mix_lexical="auto"`` only) b, the lexical channel's
    weight."""
    if self.content_mix is None:
      raise ValueError("this model has no content mix (config.content_mix=False)")
    if lexical_weight is not None and float(lexical_weight) != float(self.content_mix.lexical_weight.numpy()
                                                                      if self.content_mix.lexical else 0.0):
      if self.config.content_mix_lexical != "auto":
        raise ValueError(f"lexical_weight {lexical_weight} needs content_mix_lexical='auto' "
                         f"(config: {self.config.content_mix_lexical!r})")
      self.content_mix.lexical_weight.assign(float(lexical_weight))
    if pooling is not None and pooling != self.content_mix.pooling:
      if self.config.content_mix_pooling != "auto" or pooling not in MIX_POOLINGS:
        raise ValueError(f"pooling {pooling!r} needs content_mix_pooling='auto' and one of {MIX_POOLINGS} "
                         f"(config: {self.config.content_mix_pooling!r})")
      self.content_mix.pooling = pooling
    self.content_mix.alpha.assign(float(alpha))

  def call(self, features, training=False):
    return self.query_embedding(features, training=training), self.candidate_embedding(features["item"], training)

  def _positive_pairs(self, features, training):
    """(q [M, d'], c [M, d'], positive ids [M], P(positive) [M]) of a pointwise or a sequence batch."""
    if "target" not in features:
      q = self._with_w(self.query_tower(features, training=training))
      c = self.candidate_embedding(features["item"], training=training)
      if self.content_mix is not None:  # a = 0 while training: the mix part of every training score is 0
        q = tf.concat([q, tf.zeros([tf.shape(q)[0], self.content_mix.width(features["item"])])], axis=-1)
      return q, c, features["item"]["item_id"], features["item_prob"]
    if self.config.query_tower != "sequential":
      raise ValueError("sequence batches (with 'target') need query_tower='sequential'")
    seq, _ = self.query_tower.sequence_output(features, training=training)  # [B, H, d]
    h = tf.shape(seq)[1]
    target = {k: v[:, -h:] for k, v in features["target"].items()}
    valid = tf.not_equal(target["item_id"], "")  # one positive per non-padding position
    flat = {k: tf.boolean_mask(v, valid) for k, v in target.items()}
    q = self._with_w(tf.boolean_mask(seq, valid))
    if self.content_mix is not None:  # a = 0 while training: the mix part of every training score is 0
      q = tf.concat([q, tf.zeros([tf.shape(q)[0], self.content_mix.width(flat)])], axis=-1)
    c = self.candidate_embedding(flat, training=training)
    return q, c, flat["item_id"], tf.boolean_mask(features["target_prob"][:, -h:], valid)

  def compute_loss(self, features, training=False):
    q, c, ids, prob = self._positive_pairs(features, training)
    sampled = sampled_ids = None
    if "negatives" in features:
      sampled = self.candidate_embedding(features["negatives"], training=training)
      sampled_ids = features["negatives"]["item_id"]
    return self.task(q, c, candidate_ids=ids, candidate_sampling_probability=prob, sampled_embeddings=sampled,
                     sampled_ids=sampled_ids, num_items=features.get("num_items"))

  def set_quality_weights(self, w):
    """Sets w (e.g. the result of ``tune_quality_weights``); used by every later query embedding."""
    if self.quality_weights is None:
      raise ValueError("this model has no quality vector (quality_mode='none')")
    w = np.asarray(w, np.float32).reshape(-1)
    if w.shape != (self.config.quality_dim,):
      raise ValueError(f"w must have {self.config.quality_dim} values, got {w.shape}")
    self.quality_weights.assign(w)


def compile_retriever(model: TwoTowerRetriever, learning_rate: Optional[float] = None) -> TwoTowerRetriever:
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate or model.config.learning_rate))
  return model


def init_model(model: TwoTowerRetriever, batch) -> TwoTowerRetriever:
  """Builds all variables by running one batch through both towers eagerly.

  Call it before ``fit``: layers that create lookup tables in ``build`` (e.g. SPM segmenters) are then
  built outside ``tf.function``. Runs the loss, so sequence batches (which have no single candidate item)
  and sampled negatives build their paths too.
  """
  model.compute_loss(batch, training=False)
  return model


def embed_candidates(model: TwoTowerRetriever, inputs, item_ids=None, batch_size: int = 2048,
                     with_quality: bool = True) -> np.ndarray:
  """[N, d (+Q)] candidate embeddings of ``item_ids`` (default the whole catalogue), catalogue order."""
  out = []
  for b in inputs.catalogue_dataset(batch_size, item_ids):
    out.append((model.candidate_embedding(b) if with_quality else model.candidate_tower(b)).numpy())
  return np.concatenate(out)


def embed_queries(model: TwoTowerRetriever, inputs, encoded: dict, batch_size: int = 2048,
                  with_quality: bool = True) -> np.ndarray:
  """[n, d (+Q)] query embeddings of the rows in ``encoded`` (from ``RetrievalInputs.encode``)."""
  out = []
  for b in inputs.dataset(encoded, batch_size):
    out.append((model.query_embedding(b) if with_quality else model.query_tower(b)).numpy())
  return np.concatenate(out) if out else np.zeros((0, model.config.query.output_dim), np.float32)


def save_retriever(model: TwoTowerRetriever, directory: str) -> str:
  """Writes config.json (incl. serialised SID layers) + TF checkpoint of all weights, atomically."""
  from semrec.atomic import atomic_directory
  with atomic_directory(directory) as tmp:
    ser = tf.keras.utils.serialize_keras_object
    enc = model.item_encoder
    config = model.config
    if model.content_mix is not None:  # "auto" is saved as the pooling (and lexical channel) chosen
      lexical = config.content_mix_lexical
      if lexical == "auto":
        lexical = "on" if float(model.content_mix.lexical_weight.numpy()) > 0 else "off"
      config = dataclasses.replace(config, content_mix_pooling=model.content_mix.pooling, content_mix_lexical=lexical)
    meta = {"config": to_dict(config),
            "item_representation": ser(enc.item_representation) if enc.item_representation is not None else None,
            "sid_assigner": ser(enc.sid_assigner) if enc.sid_assigner is not None else None,
            "cluster_assigner": ser(enc.cluster_assigner) if enc.cluster_assigner is not None else None}
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(meta, f, indent=2, default=str)
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, "weights", "ckpt"))
  return directory


def load_retriever(directory: str, example_batch) -> TwoTowerRetriever:
  """Rebuilds a retriever saved by ``save_retriever``; ``example_batch`` (one input batch) builds variables."""
  with open(os.path.join(directory, "config.json")) as f:
    meta = json.load(f)
  de = tf.keras.utils.deserialize_keras_object
  layers = {k: de(meta[k]) if meta.get(k) else None for k in ("item_representation", "sid_assigner",
                                                              "cluster_assigner")}
  model = TwoTowerRetriever(from_dict(RetrieverConfig, meta["config"]), **layers)
  # Read before building: variables are restored as they are created (deferred restoration), so layers
  # whose call needs their saved state (e.g. an SPM piece table) already hold it on the first call.
  status = tf.train.Checkpoint(model=model).read(os.path.join(directory, "weights", "ckpt"))
  init_model(model, example_batch)
  status.assert_existing_objects_matched()
  return model
