"""The two-tower retriever (tfrs.Model + tfrs.tasks.Retrieval) with an optional Etsy quality vector.

Shape letters: B batch, N catalogue items, d tower width, Q quality features.

Scores: with quality features the candidate embedding is [p ; f(p)] ([B, d + Q]) and the query
embedding [q ; w] with one shared vector w [Q], so score = q.p + w.f(p). w is either learned with the
towers (``quality_mode="learned"``) or held at zero during training and tuned afterwards on a
validation window (``quality_mode="tuned"``, see ``tune_quality_weights``) without retraining; the
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
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from semrec.config import from_dict, to_dict
from semrec.towers.distributed import gather_candidates
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
  item: ItemEncoderConfig = dataclasses.field(default_factory=lambda: ItemEncoderConfig(hash_bins=10_000))
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


class TwoTowerRetriever(tfrs.Model):
  """Two-tower retrieval model.

  Args:
    config: ``RetrieverConfig``.
    item_representation: semrec.sid ``ItemRepresentation`` layer when ``config.item.use_sid``.
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
    c, prob, ids = gather_candidates(c, prob, ids)  # [scale] cross-replica negatives; no-op with one replica
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


def tune_quality_weights(query_base: np.ndarray, candidate_base: np.ndarray, quality: np.ndarray,
                         target_rows: np.ndarray, exclude=None, grid: Sequence[float] = (-0.5, -0.2, -0.1, -0.05, 0.0,
                                                                                         0.05, 0.1, 0.2, 0.5, 1.0),
                         k: int = 100, passes: int = 2, query_weights: Optional[np.ndarray] = None
                         ) -> tuple[np.ndarray, dict]:
  """Coordinate-wise grid search for w maximising Recall@k on a validation window (towers frozen).

  Args:
    query_base: [V, d] validation query embeddings q (without w).
    candidate_base: [N, d] candidate embeddings p (without f).
    quality: [N, Q] f(p) of the same candidates (computed only from data before the window).
    target_rows: [V] row of each validation query's target in ``candidate_base``.
    exclude: optional per-query arrays of candidate rows to remove (items seen before).
    grid: candidate values for each coordinate of w (q.p is a cosine when the towers normalise).
    k: the Recall@k cut-off optimised (ties broken by NDCG@10).
    query_weights: optional [V] weights of the queries in the objective (e.g. > 1 for queries whose target
      is a new item, to keep w from trading new-item recall for popularity).

  Returns:
    (w [Q] float32, {"recall": best validation recall, "baseline_recall": recall at w = 0, "evaluations": n}).
  """
  base = np.asarray(query_base, np.float32) @ np.asarray(candidate_base, np.float32).T  # [V, N]
  t = np.asarray(target_rows, np.int64)
  if exclude is not None:
    for i, ex in enumerate(exclude):
      ex = np.asarray(ex, np.int64)
      base[i, ex[ex != t[i]]] = -np.inf
  f = np.asarray(quality, np.float32)
  rows = np.arange(len(t))
  qw = np.ones(len(t)) if query_weights is None else np.asarray(query_weights, np.float64)
  if qw.shape != (len(t),) or (qw < 0).any() or qw.sum() <= 0:
    raise ValueError(f"query_weights must be {len(t)} non-negative values with a positive sum")

  def score(w):
    bias = f @ w  # [N]
    s = base + bias[None, :]
    ts = s[rows, t]
    rank = (s > ts[:, None]).sum(axis=1)
    return (float(np.average(rank < k, weights=qw)),
            float(np.average(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0), weights=qw)))

  w = np.zeros(f.shape[1], np.float32)
  best = score(w)
  baseline = best
  evals = 1
  for _ in range(passes):
    for j in range(f.shape[1]):
      for v in grid:
        cand = w.copy()
        cand[j] = v
        s = score(cand)
        evals += 1
        if s > best:
          best, w = s, cand
  return w, {"recall": best[0], "ndcg@10": best[1], "baseline_recall": baseline[0], "evaluations": evals}


def save_retriever(model: TwoTowerRetriever, directory: str) -> str:
  """Writes config.json (incl. serialised SID layers) + TF checkpoint of all weights, atomically."""
  from semrec.atomic import atomic_directory
  with atomic_directory(directory) as tmp:
    ser = tf.keras.utils.serialize_keras_object
    enc = model.item_encoder
    meta = {"config": to_dict(model.config),
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
