"""The multitask ranker: shared item representation, DCN crosses, an MLP and one head per task.

Shape letters: B batch, H history length, L SID levels, D content width, C context width,
d item-representation width, T tasks.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import tensorflow as tf
import tensorflow_recommenders as tfrs

from semrec.config import from_dict, to_dict
from semrec.ranking.data import CONTEXT_DIM, ITEM_SLOTS
from semrec.sid.adapters import ItemRepresentationConfig


@dataclasses.dataclass
class RankerConfig:
  """Configuration of :class:`Ranker` and of its training.

  Attributes:
    item_representation: ``semrec.sid.ItemRepresentationConfig``; the one representation every item
      feature (candidate, last item, history) goes through. Its ``mode`` is what the comparison varies.
    use_history: Feed the user's positive history (mean of its item representations) to the model.
    history_length: H, history items kept per example (most recent last).
    tasks: Target columns, one ``tfrs.tasks.Ranking`` head each (MovieLens: ``label`` = rating >= 3.5,
      ``like`` = rating >= 4.5; synthetic: ``label`` = click, ``like``).
    task_weights: Loss weight per task (default 1 each).
    context_dim: C, width of the ``context`` feature.
    num_cross_layers: Number of stacked ``tfrs.layers.dcn.Cross`` layers (0 disables crosses).
    cross_projection_dim: Low-rank projection of each cross layer (None = full rank).
    hidden_units: Widths of the MLP after the crosses.
    dropout: Dropout rate after each hidden layer (training only).
    learning_rate: Adam learning rate.
    batch_size: Training batch size.
    seed: Seed for weight initialisation and shuffling.
  """
  item_representation: Optional[ItemRepresentationConfig] = None
  use_history: bool = True
  history_length: int = 20
  tasks: Sequence[str] = ("label", "like")
  task_weights: Optional[Sequence[float]] = None
  context_dim: int = CONTEXT_DIM
  num_cross_layers: int = 2
  cross_projection_dim: Optional[int] = None
  hidden_units: Sequence[int] = (128, 64)
  dropout: float = 0.0
  learning_rate: float = 3e-3
  batch_size: int = 256
  seed: int = 0

  def __post_init__(self):
    self.tasks = tuple(self.tasks)
    self.hidden_units = tuple(int(u) for u in self.hidden_units)
    if not self.tasks:
      raise ValueError("RankerConfig.tasks must name at least one task")
    if len(set(self.tasks)) != len(self.tasks):
      raise ValueError(f"RankerConfig.tasks has duplicates: {self.tasks}")
    if self.task_weights is not None:
      self.task_weights = tuple(float(w) for w in self.task_weights)
      if len(self.task_weights) != len(self.tasks):
        raise ValueError(f"task_weights {self.task_weights} must have one weight per task {self.tasks}")
    for f in ("history_length", "context_dim", "batch_size"):
      if getattr(self, f) < 1:
        raise ValueError(f"RankerConfig.{f} must be >= 1, got {getattr(self, f)}")
    if self.num_cross_layers < 0:
      raise ValueError(f"num_cross_layers must be >= 0, got {self.num_cross_layers}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.learning_rate <= 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
    if self.item_representation is None:
      self.item_representation = ItemRepresentationConfig()


def needs_content(rep_config) -> bool:
  """Whether an item representation config reads the ``content`` input (a ``dense`` mode)."""
  return "dense" in tuple(getattr(rep_config, "modes", ()) or ())


def _glorot(seed: int):
  return tf.keras.initializers.GlorotUniform(seed=seed)


@tf.keras.utils.register_keras_serializable(package="semrec")
class CrossStack(tf.keras.layers.Layer):
  """The default feature interaction: ``num_layers`` stacked DCN crosses, x_{i+1} = x0 * W x_i + b + x_i.

  Input and output: [B, F] float32 (F unchanged). ``num_layers=0`` is the identity.

  Args:
    num_layers: Number of ``tfrs.layers.dcn.Cross`` layers.
    projection_dim: Low-rank projection of each cross (None = full rank).
    seed: Seed of the kernel initialisers (layer i uses ``seed + i``).
  """

  def __init__(self, num_layers: int = 2, projection_dim: Optional[int] = None, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.num_layers, self.projection_dim, self.seed = int(num_layers), projection_dim, int(seed)
    self.crosses = [tfrs.layers.dcn.Cross(projection_dim=projection_dim, kernel_initializer=_glorot(seed + i),
                                          name=f"cross_{i}") for i in range(self.num_layers)]

  def call(self, x0: tf.Tensor) -> tf.Tensor:
    x = x0
    for cross in self.crosses:
      x = cross(x0, x)
    return x

  def get_config(self) -> dict:
    return {**super().get_config(), "num_layers": self.num_layers, "projection_dim": self.projection_dim,
            "seed": self.seed}


@tf.keras.utils.register_keras_serializable(package="semrec")
class MlpStack(tf.keras.layers.Layer):
  """ReLU MLP with optional dropout after each hidden layer: [B, F] -> [B, units[-1]] (identity if empty)."""

  def __init__(self, units: Sequence[int] = (128, 64), dropout: float = 0.0, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.units, self.dropout_rate, self.seed = tuple(int(u) for u in units), float(dropout), int(seed)
    self.dense = [tf.keras.layers.Dense(u, activation="relu", kernel_initializer=_glorot(seed + i), name=f"mlp_{i}")
                  for i, u in enumerate(self.units)]
    self.dropout = tf.keras.layers.Dropout(self.dropout_rate, seed=self.seed) if self.dropout_rate else None

  def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
    for layer in self.dense:
      x = layer(x)
      if self.dropout is not None:
        x = self.dropout(x, training=training)
    return x

  def get_config(self) -> dict:
    return {**super().get_config(), "units": list(self.units), "dropout": self.dropout_rate, "seed": self.seed}


def binary_task(name: str) -> tfrs.tasks.Ranking:
  """The default task of one label: logits -> per-example binary cross-entropy (``Reduction.NONE``, so
  the model can average over the *global* batch under any ``tf.distribute`` strategy) + an AUC metric."""
  return tfrs.tasks.Ranking(
      loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.NONE),
      metrics=[tf.keras.metrics.AUC(name=f"{name}_auc", from_logits=True)], name=f"task_{name}")


def masked_mean(hist: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
  """[B, d] mean of ``hist`` [B, H, d] over the non-padding items (``item_ids`` [B, H] != ""); 0 if none."""
  valid = tf.cast(tf.not_equal(item_ids, ""), hist.dtype)[..., None]
  return tf.reduce_sum(hist * valid, axis=1) / tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)


class Ranker(tfrs.Model):
  """Multitask pointwise ranker over (candidate, last item, history, context), TFRS-style.

  The same ``ItemRepresentation`` layer embeds the candidate, the last item and each history item,
  so swapping the representation mode (random hash, dense, unigram, bigram, prefix, SPM, SPM+hash)
  changes nothing else in the model. As in ``tfrs.experimental.models.Ranking``, the blocks are
  injected: ``feature_interaction`` ([B, F] -> [B, F'], default DCN crosses), ``top_stack``
  ([B, F'] -> [B, F''], default MLP) and ``tasks`` (name -> a ``tfrs.tasks.Task`` over [B, 1]
  labels and logits, default :func:`binary_task`); a variant is a different layer passed in.

  Inputs (see ``semrec.ranking.data``): ``candidate_item_id`` [B] string, ``candidate_sid`` [B, L]
  int32, ``last_item_id`` [B], ``last_sid`` [B, L], ``history_item_id`` [B, H], ``history_sid``
  [B, H, L] (if ``use_history``), ``*_content`` [..., D] float32 (dense modes), ``context`` [B, C].
  Output of ``call``: task -> [B] float32 probabilities.

  Args:
    config: The :class:`RankerConfig`.
    item_representation: An already built ``ItemRepresentation`` layer (e.g. holding a trained SPM
      piece table); built from ``config.item_representation`` when None.
    feature_interaction: Layer over the concatenated features x0 [B, F]; default
      ``CrossStack(config.num_cross_layers, config.cross_projection_dim)``.
    top_stack: Layer after the interaction; default ``MlpStack(config.hidden_units, config.dropout)``.
    tasks: Mapping task name (one per ``config.tasks``) -> task layer; default :func:`binary_task`.
  """

  def __init__(self, config: RankerConfig, item_representation: Optional[tf.keras.layers.Layer] = None,
               feature_interaction: Optional[tf.keras.layers.Layer] = None,
               top_stack: Optional[tf.keras.layers.Layer] = None,
               tasks: Optional[Mapping[str, tf.keras.layers.Layer]] = None, **kwargs):
    super().__init__(**kwargs)
    self.config = config
    if item_representation is None:
      from semrec.sid.adapters import ItemRepresentation
      item_representation = ItemRepresentation(config.item_representation)
    self.item_representation = item_representation
    self.uses_content = needs_content(config.item_representation)
    base = config.seed * 1000
    self.context_projection = tf.keras.layers.Dense(16, activation="relu", kernel_initializer=_glorot(base),
                                                    name="context_projection")
    self.feature_interaction = feature_interaction or CrossStack(
        config.num_cross_layers, config.cross_projection_dim, seed=base + 10, name="feature_interaction")
    self.top_stack = top_stack or MlpStack(config.hidden_units, config.dropout, seed=base + 20, name="top_stack")
    self.heads = {t: tf.keras.layers.Dense(1, kernel_initializer=_glorot(base + 40 + i), name=f"head_{t}")
                  for i, t in enumerate(config.tasks)}
    tasks = dict(tasks) if tasks is not None else {t: binary_task(t) for t in config.tasks}
    if set(tasks) != set(config.tasks):
      raise ValueError(f"Ranker: tasks {sorted(tasks)} must match config.tasks {list(config.tasks)}")
    self.tasks = {t: tasks[t] for t in config.tasks}
    self.task_weights = dict(zip(config.tasks, config.task_weights or [1.0] * len(config.tasks)))

  def _item_inputs(self, features, slot: str) -> dict:
    out = {"item_id": features[f"{slot}_item_id"], "sid": features[f"{slot}_sid"]}
    if self.uses_content:
      out["content"] = features[f"{slot}_content"]
    return out

  def embed_items(self, features, slot: str, dedupe: bool = True) -> tf.Tensor:
    """[B, d] (candidate/last) or [B, H, d] (history) representations of one item slot.

    With ``dedupe`` the representation is computed once per distinct item id in the batch and
    gathered back (a batch of B x H history slots holds far fewer distinct items, and SPM
    segmentation is the costly part); this assumes one id always comes with the same codes, which
    holds for features built from an ``ItemFeatures`` table. The serving module passes
    ``dedupe=False`` so every row is embedded from its own codes.
    """
    if slot not in ITEM_SLOTS:
      raise ValueError(f"unknown item slot {slot!r}; expected one of {ITEM_SLOTS}")
    inputs = self._item_inputs(features, slot)
    if not dedupe:
      return self.item_representation(inputs)
    ids = inputs["item_id"]
    flat_ids = tf.reshape(ids, [-1])
    uniq, idx = tf.unique(flat_ids, out_idx=tf.int32)
    first = tf.math.unsorted_segment_min(tf.range(tf.size(flat_ids)), idx, tf.size(uniq))
    sub = {"item_id": uniq}
    for key in ("sid", "content"):
      if key in inputs:
        v = inputs[key]
        flat = tf.reshape(v, tf.concat([[-1], tf.shape(v)[-1:]], 0))
        flat = tf.ensure_shape(flat, [None, v.shape[-1]])
        sub[key] = tf.gather(flat, first)
    rep = self.item_representation(sub)  # [U, d]
    out = tf.gather(rep, idx)
    return tf.reshape(out, tf.concat([tf.shape(ids), tf.shape(rep)[-1:]], 0))

  def pool_history(self, features, dedupe: bool = True) -> tf.Tensor:
    """[B, d] mean representation of the non-padding history items (zeros for an empty history)."""
    return masked_mean(self.embed_items(features, "history", dedupe=dedupe), features["history_item_id"])

  def score(self, candidate: tf.Tensor, last: tf.Tensor, history: Optional[tf.Tensor], context: tf.Tensor,
            training: bool = False) -> dict:
    """task -> [B] logits from item representations ([B, d] each) and context [B, C]."""
    parts = [candidate, last, candidate * last]
    if self.config.use_history:
      parts += [history, candidate * history]
    parts.append(self.context_projection(tf.cast(context, tf.float32)))
    x = self.feature_interaction(tf.concat(parts, axis=-1))
    x = self.top_stack(x, training=training)
    return {t: tf.squeeze(head(x), axis=-1) for t, head in self.heads.items()}

  def logits(self, features, training: bool = False) -> dict:
    """task -> [B] float32 logits."""
    history = self.pool_history(features) if self.config.use_history else None
    return self.score(self.embed_items(features, "candidate"), self.embed_items(features, "last"), history,
                      features["context"], training=training)

  def call(self, features, training: bool = False) -> dict:
    """task -> [B] float32 probabilities."""
    return {t: tf.sigmoid(v) for t, v in self.logits(features, training=training).items()}

  def get_config(self) -> dict:
    return {"config": to_dict(self.config),
            "feature_interaction": tf.keras.utils.serialize_keras_object(self.feature_interaction),
            "top_stack": tf.keras.utils.serialize_keras_object(self.top_stack)}

  @classmethod
  def from_config(cls, config: dict) -> "Ranker":
    """Rebuilds an untrained ranker (its interaction and top stack from their configs; default
    tasks); an SPM representation gets its piece table from the weights restored afterwards."""
    from semrec.sid.adapters import ItemRepresentation
    cfg = from_dict(RankerConfig, config["config"])
    blocks = {k: tf.keras.utils.deserialize_keras_object(config[k]) for k in ("feature_interaction", "top_stack")
              if config.get(k) is not None}
    return cls(cfg, item_representation=ItemRepresentation(cfg.item_representation), **blocks)

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    """Weighted sum over tasks of the per-example losses averaged over the *global* batch
    (``tf.nn.compute_average_loss``: sum / (local batch x replicas)), so the gradients all-reduced
    by a ``tf.distribute`` strategy equal the single-process ones."""
    features, labels = inputs
    logits = self.logits(features, training=training)
    loss = 0.0
    for t, task in self.tasks.items():
      per_example = task(labels=tf.reshape(labels[t], [-1, 1]), predictions=tf.reshape(logits[t], [-1, 1]),
                         training=training)
      loss += self.task_weights[t] * tf.nn.compute_average_loss(tf.reshape(per_example, [-1]))
    return loss
