"""The two-tower retriever (tfrs.Model + tfrs.tasks.Retrieval) with an optional Etsy quality vector.

Shape letters: B batch, N catalogue items, d tower width, Q quality features.

Scores: with quality features the candidate embedding is [p ; f(p)] ([B, d + Q]) and the query
embedding [q ; w] with one shared vector w [Q], so score = q.p + w.f(p). w is either learned with the
towers (``quality_mode="learned"``) or held at zero during training and tuned afterwards on a
validation window (``quality_mode="tuned"``, see ``semrec.towers.quality.tune_quality_weights``) without retraining; the
tuned w is a model variable, so serving (``query_embedding`` / an index built from
``candidate_embedding``) applies it.

Training: in-batch softmax (``tfrs.tasks.Retrieval``) with logQ correction from train item
frequencies (``candidate_sampling_probability``), optional hard-negative mining,
``remove_accidental_hits`` on item ids, and a temperature. The task has no FactorizedTopK metric, so
training computes the loss only; full-catalogue metrics come from ``evaluate_retriever``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from semrec.towers.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QueryTower,
                                  QueryTowerConfig)

QUALITY_MODES = ("none", "learned", "tuned")


@dataclasses.dataclass
class RetrieverConfig:
  """A two-tower retriever.

  Attributes:
    item: Parts of the item representation (shared by both towers).
    candidate: Candidate-tower MLP.
    query: Query-tower settings.
    temperature: Softmax temperature (scores / temperature); None = 1.
    logq_correction: Subtract log(item train frequency) from in-batch logits (needs ``item_prob``).
    remove_accidental_hits: Mask in-batch negatives that are the positive item itself.
    num_hard_negatives: If set, keep only this many highest-scoring negatives per query.
    quality_dim: Q, the number of quality features (0 = no quality vector).
    quality_mode: "none", "learned" (w trained with the towers) or "tuned" (w set after training).
    learning_rate: Adam learning rate used by ``compile_retriever``.
  """
  item: ItemEncoderConfig = dataclasses.field(default_factory=ItemEncoderConfig)
  candidate: CandidateTowerConfig = dataclasses.field(default_factory=CandidateTowerConfig)
  query: QueryTowerConfig = dataclasses.field(default_factory=QueryTowerConfig)
  temperature: Optional[float] = 0.05
  logq_correction: bool = True
  remove_accidental_hits: bool = True
  num_hard_negatives: Optional[int] = None
  quality_dim: int = 0
  quality_mode: str = "none"
  learning_rate: float = 3e-3

  def __post_init__(self):
    if isinstance(self.item, dict):
      self.item = ItemEncoderConfig(**self.item)
    if isinstance(self.candidate, dict):
      self.candidate = CandidateTowerConfig(**self.candidate)
    if isinstance(self.query, dict):
      self.query = QueryTowerConfig(**self.query)
    if self.quality_mode not in QUALITY_MODES:
      raise ValueError(f"RetrieverConfig.quality_mode must be one of {QUALITY_MODES}, got {self.quality_mode!r}")
    if self.quality_mode != "none" and self.quality_dim < 1:
      raise ValueError(f"quality_mode={self.quality_mode!r} needs quality_dim >= 1")
    if self.candidate.output_dim != self.query.output_dim:
      raise ValueError(f"candidate.output_dim ({self.candidate.output_dim}) != query.output_dim "
                       f"({self.query.output_dim})")
    if self.temperature is not None and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  @property
  def uses_quality(self) -> bool:
    return self.quality_mode != "none" and self.quality_dim > 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


class TwoTowerRetriever(tfrs.Model):
  """Two-tower retrieval model.

  Args:
    config: ``RetrieverConfig``.
    item_representation: optional prebuilt semrec.sid ``ItemRepresentation`` (e.g. with a trained SPM);
      default built from ``config.item.representation``.
    sid_assigner: frozen semrec.sid ``SidAssigner`` when ``config.item.sid_from_content``.
    cluster_assigner: frozen semrec.sid ``ClusterIdLayer`` when ``config.item.cluster_from_content``.

  Inputs: the nested batch dict of ``semrec.towers.RetrievalInputs.dataset`` (user_id, timestamp,
  item_prob, item{...}, history{...}).
  """

  def __init__(self, config: RetrieverConfig, item_representation=None, sid_assigner=None, cluster_assigner=None,
               **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.item_encoder = ItemEncoder(config.item, item_representation=item_representation,
                                    sid_assigner=sid_assigner, cluster_assigner=cluster_assigner, name="item_encoder")
    self.candidate_tower = CandidateTower(self.item_encoder, config.candidate, name="candidate_tower")
    self.query_tower = QueryTower(self.item_encoder, config.query, name="query_tower")
    self.quality_weights = None
    if config.uses_quality:
      self.quality_weights = self.add_weight(name="quality_w", shape=(config.quality_dim,), initializer="zeros",
                                             trainable=config.quality_mode == "learned")
    self.task = tfrs.tasks.Retrieval(temperature=config.temperature, num_hard_negatives=config.num_hard_negatives,
                                     remove_accidental_hits=config.remove_accidental_hits)

  def query_embedding(self, features, training=False):
    """[B, d] query embedding, or [B, d + Q] = [q ; w] with the quality vector."""
    q = self.query_tower(features, training=training)
    if self.quality_weights is None:
      return q
    w = tf.broadcast_to(self.quality_weights[None, :], [tf.shape(q)[0], self.config.quality_dim])
    return tf.concat([q, w], axis=-1)

  def candidate_embedding(self, item_features, training=False):
    """[B, d] candidate embedding, or [B, d + Q] = [p ; f(p)] with the quality vector."""
    p = self.candidate_tower(item_features, training=training)
    if self.quality_weights is None:
      return p
    if "quality" not in item_features:
      raise KeyError("the model uses a quality vector but the item features have no 'quality' key")
    f = tf.cast(item_features["quality"], tf.float32)
    return tf.concat([p, f], axis=-1)

  def call(self, features, training=False):
    return self.query_embedding(features, training=training), self.candidate_embedding(features["item"], training)

  def compute_loss(self, features, training=False):
    q, c = self(features, training=training)
    prob = features["item_prob"] if self.config.logq_correction else None
    ids = features["item"]["item_id"] if self.config.remove_accidental_hits else None
    return self.task(q, c, candidate_sampling_probability=prob, candidate_ids=ids, compute_metrics=False,
                     compute_batch_metrics=False)

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
  built outside ``tf.function``.
  """
  model(batch, training=False)
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
    meta = {"config": model.config.to_dict(),
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
  model = TwoTowerRetriever(RetrieverConfig(**meta["config"]), **layers)
  # Read before building: variables are restored as they are created (deferred restoration), so layers
  # whose call needs their saved state (e.g. an SPM piece table) already hold it on the first call.
  status = tf.train.Checkpoint(model=model).read(os.path.join(directory, "weights", "ckpt"))
  init_model(model, example_batch)
  status.assert_existing_objects_matched()
  return model
