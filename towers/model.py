"""The two-tower retriever: towers + an injected task + ``compute_loss`` (tfrs.Model).

Shape letters: B batch, N catalogue items, d tower width, d' served width (d + the score blocks' parts).

Scores: q.p of the query and candidate towers, plus any extra score terms (Etsy quality vector, content and
lexical similarity) as score blocks composed by a ``semrec.towers.ScoreComposer`` (``RetrieverConfig.scores``):
``query_embedding`` / ``candidate_embedding`` are the composed [q ; ...] / [p ; ...] vectors, so the served score
is one dot product (ScaNN, multi-interest queries and the exports use it as is). The blocks' post-hoc weights
are chosen after training by ``semrec.towers.tuning``.

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

from semrec.config import from_dict, to_dict
from semrec.towers.score_blocks import ScoreComposer, ScoreConfig
from semrec.towers.sequential import SequentialQueryTower, SequentialTowerConfig
from semrec.towers.tasks import MixedNegativeRetrieval
from semrec.towers.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QueryTower,
                                  QueryTowerConfig)

QUERY_TOWERS = ("pooled", "sequential")


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
    scores: The score blocks (``semrec.towers.ScoreConfig``: quality vector, content / lexical similarity).
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
  scores: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)
  learning_rate: float = 3e-3

  # Keys of files written before the score blocks had their own config (``semrec.config.from_dict``).
  MOVED_KEYS = {k: f"scores.{k}" for k in ("quality_dim", "quality_mode", "content_mix", "content_mix_pooling",
                                           "content_mix_lexical")}

  def __post_init__(self):
    if isinstance(self.item, dict):
      self.item = ItemEncoderConfig(**self.item)
    if isinstance(self.candidate, dict):
      self.candidate = CandidateTowerConfig(**self.candidate)
    if isinstance(self.query, dict):
      self.query = QueryTowerConfig(**self.query)
    if isinstance(self.sequential, dict):
      self.sequential = SequentialTowerConfig(**self.sequential)
    if isinstance(self.scores, dict):
      self.scores = ScoreConfig(**self.scores)
    if self.query_tower not in QUERY_TOWERS:
      raise ValueError(f"RetrieverConfig.query_tower must be one of {QUERY_TOWERS}, got {self.query_tower!r}")
    if self.num_negatives < -1:
      raise ValueError(f"RetrieverConfig.num_negatives must be >= -1, got {self.num_negatives}")
    if not self.in_batch_negatives and self.num_negatives == 0:
      raise ValueError("in_batch_negatives=False needs num_negatives != 0 (no negatives at all otherwise)")
    if self.query_tower == "pooled" and self.candidate.output_dim != self.query.output_dim:
      raise ValueError(f"candidate.output_dim ({self.candidate.output_dim}) != query.output_dim "
                       f"({self.query.output_dim})")
    if self.temperature is not None and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")

  @property
  def max_history(self) -> int:
    return self.sequential.max_history if self.query_tower == "sequential" else self.query.max_history


class TwoTowerRetriever(tfrs.Model):
  """Two-tower retrieval model; the loss is an injected task layer and extra score terms injected score
  blocks (TFRS style).

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
    score_blocks: The ``ScoreComposer`` of the extra score terms; default built from ``config.scores``.

  Inputs: the nested batch dicts of ``semrec.towers.RetrievalInputs``: pointwise rows (``dataset``: user_id,
  timestamp, item_prob, item{...}, history{...}) or, for the sequential tower, sequences
  (``sequence_dataset``: history{... [B, H]}, target{... [B, H]}, target_prob [B, H]); either may carry
  ``negatives{... [S]}`` and ``num_items`` (uniformly sampled items for the softmax).
  """

  def __init__(self, config: RetrieverConfig, item_representation=None, sid_assigner=None, cluster_assigner=None,
               task: Optional[tf.keras.layers.Layer] = None, spm=None, content_basis=None,
               score_blocks: Optional[ScoreComposer] = None, **kwargs):
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
    self.score_blocks = score_blocks if score_blocks is not None else ScoreComposer.of(config.scores)
    self.task = task or MixedNegativeRetrieval(temperature=config.temperature, logq_correction=config.logq_correction,
                                               remove_accidental_hits=config.remove_accidental_hits,
                                               in_batch=config.in_batch_negatives, name="task")

  def required_features(self) -> list:
    """Item-feature keys the model reads (the item encoder's and the score blocks')."""
    return sorted(set(self.item_encoder.required_features()) | self.score_blocks.required_features())

  @property
  def multi_interest(self) -> bool:
    """True when ``query_embedding`` is [B, K, d'] (a score block with a multi-interest query part)."""
    return self.score_blocks.multi_interest

  def query_embedding(self, features, training=False):
    """[B, d'] served query vector [q ; score-block query parts]; [B, K, d'] with ``multi_interest`` (score a
    candidate by the max over the K rows, ``semrec.towers.dot_scores``)."""
    return self.score_blocks.query(self.query_tower(features, training=training), features)

  def candidate_embedding(self, item_features, training=False):
    """[B, d'] served candidate vector [p ; score-block candidate parts]."""
    return self.score_blocks.candidate(self.candidate_tower(item_features, training=training), item_features)

  def call(self, features, training=False):
    return self.query_embedding(features, training=training), self.candidate_embedding(features["item"], training)

  def _positive_pairs(self, features, training):
    """(q [M, d'], c [M, d'], positive ids [M], P(positive) [M]) of a pointwise or a sequence batch."""
    if "target" not in features:
      q = self.score_blocks.training_query(self.query_tower(features, training=training), features["item"])
      c = self.candidate_embedding(features["item"], training=training)
      return q, c, features["item"]["item_id"], features["item_prob"]
    if self.config.query_tower != "sequential":
      raise ValueError("sequence batches (with 'target') need query_tower='sequential'")
    seq, _ = self.query_tower.sequence_output(features, training=training)  # [B, H, d]
    h = tf.shape(seq)[1]
    target = {k: v[:, -h:] for k, v in features["target"].items()}
    valid = tf.not_equal(target["item_id"], "")  # one positive per non-padding position
    flat = {k: tf.boolean_mask(v, valid) for k, v in target.items()}
    q = self.score_blocks.training_query(tf.boolean_mask(seq, valid), flat)
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
                     with_blocks: bool = True) -> np.ndarray:
  """[N, d'] served candidate vectors of ``item_ids`` (default the whole catalogue), catalogue order;
  ``with_blocks=False``: [N, d], the candidate tower alone (no score-block parts)."""
  out = []
  for b in inputs.catalogue_dataset(batch_size, item_ids):
    out.append((model.candidate_embedding(b) if with_blocks else model.candidate_tower(b)).numpy())
  return np.concatenate(out)


def embed_queries(model: TwoTowerRetriever, inputs, encoded: dict, batch_size: int = 2048,
                  with_blocks: bool = True) -> np.ndarray:
  """[n, d'] served query vectors of the rows in ``encoded`` (from ``RetrievalInputs.encode``);
  ``with_blocks=False``: [n, d], the query tower alone."""
  out = []
  for b in inputs.dataset(encoded, batch_size):
    out.append((model.query_embedding(b) if with_blocks else model.query_tower(b)).numpy())
  return np.concatenate(out) if out else np.zeros((0, model.config.query.output_dim), np.float32)


def save_retriever(model: TwoTowerRetriever, directory: str) -> str:
  """Writes config.json (the config as given, serialised SID layers, and ``score_settings``: the score blocks'
  post-hoc values, ``ScoreComposer.settings()``, their one record) + a TF checkpoint of the trained weights,
  atomically."""
  from semrec.atomic import atomic_directory
  with atomic_directory(directory) as tmp:
    ser = tf.keras.utils.serialize_keras_object
    enc = model.item_encoder
    meta = {"config": to_dict(model.config), "score_settings": model.score_blocks.settings(),
            "item_representation": ser(enc.item_representation) if enc.item_representation is not None else None,
            "sid_assigner": ser(enc.sid_assigner) if enc.sid_assigner is not None else None,
            "cluster_assigner": ser(enc.cluster_assigner) if enc.cluster_assigner is not None else None}
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(meta, f, indent=2, default=str)
    tf.train.Checkpoint(model=model).write(os.path.join(tmp, "weights", "ckpt"))
  return directory


def saved_score_settings(directory: str) -> dict:
  """The ``score_settings`` a ``save_retriever`` directory records ({} when it has none)."""
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f).get("score_settings") or {}


def load_retriever(directory: str, example_batch) -> TwoTowerRetriever:
  """Rebuilds a retriever saved by ``save_retriever`` (score blocks with their recorded settings);
  ``example_batch`` (one input batch) builds variables."""
  with open(os.path.join(directory, "config.json")) as f:
    meta = json.load(f)
  de = tf.keras.utils.deserialize_keras_object
  layers = {k: de(meta[k]) if meta.get(k) else None for k in ("item_representation", "sid_assigner",
                                                              "cluster_assigner")}
  config = from_dict(RetrieverConfig, meta["config"])
  settings = meta.get("score_settings") or {}
  model = TwoTowerRetriever(config, score_blocks=ScoreComposer.of(config.scores, settings), **layers)
  # Read before building: variables are restored as they are created (deferred restoration), so layers
  # whose call needs their saved state (e.g. an SPM piece table) already hold it on the first call.
  status = tf.train.Checkpoint(model=model).read(os.path.join(directory, "weights", "ckpt"))
  init_model(model, example_batch)
  status.assert_existing_objects_matched()
  return model
