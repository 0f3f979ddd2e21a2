"""Sequential (production-style) training and sliced evaluation of the ranker.

Protocol (Singh et al. 4.1): train on periods 1..N in time order, one pass over each, then evaluate
on period N+1, which the model has never seen. Report AUC overall and on items first seen in
period N+1 (the paper's CTR/1D slice), per task.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from semrec.data import ItemFeatures
from semrec.ranking.data import RankingExamples, RankingFeaturizer, SequentialSplit, sequential_split
from semrec.ranking.metrics import sliced_auc
from semrec.ranking.model import Ranker, RankerConfig, needs_content


class EpochMeanLoss(tf.keras.callbacks.Callback):
  """Mean training loss over the batches of the last epoch.

  A ``tfrs.Model``'s ``train_step`` returns the *batch* loss, so ``History.history["loss"]`` holds the last
  batch's value (a 3-example remainder batch can read 1e-6 while the epoch averaged 0.2); ``mean`` is the
  epoch's average over batches (float, NaN before any batch).
  """

  def __init__(self):
    super().__init__()
    self._losses = []

  def on_epoch_begin(self, epoch, logs=None):
    self._losses = []

  def on_train_batch_end(self, batch, logs=None):
    if logs and "loss" in logs:
      self._losses.append(float(logs["loss"]))

  @property
  def mean(self) -> float:
    return float(np.mean(self._losses)) if self._losses else float("nan")


@dataclasses.dataclass
class RankerRun:
  """A trained ranker and its sequential-protocol evaluation.

  Attributes:
    model: The trained :class:`Ranker`.
    featurizer: The :class:`RankingFeaturizer` that built its inputs (reuse it for serving/eval).
    split: The :class:`SequentialSplit` used.
    metrics: ``{task: {"auc", "cold_auc", "warm_auc", "n", "n_cold", ...}}`` on the eval period.
    train_examples: Examples trained on (sum over periods).
    train_seconds: Wall time of the sequential training loop.
    examples_per_second: ``train_examples / train_seconds``.
    period_metrics: Per training period, the training loss/AUC Keras reported.
  """
  model: Ranker
  featurizer: RankingFeaturizer
  split: SequentialSplit
  metrics: dict
  train_examples: int
  train_seconds: float
  examples_per_second: float
  period_metrics: list


@dataclasses.dataclass
class SequentialData:
  """A :class:`SequentialSplit` turned into examples once, reusable by every run of a comparison.

  Attributes:
    split: The split (train periods, eval period, cold items).
    train_examples: One :class:`RankingExamples` per training period, oldest first.
    eval_examples: Examples of the eval period.
    cold_mask: [n_eval] bool, True where the candidate is first seen in the eval period.
    item_features: The item table the example rows index.
  """
  split: SequentialSplit
  train_examples: list
  eval_examples: RankingExamples
  cold_mask: np.ndarray
  item_features: ItemFeatures

  def item_impressions(self) -> np.ndarray:
    """[N] training-period interaction count per item of ``item_features`` (SPM corpus weights)."""
    counts = np.zeros(len(self.item_features.item_ids), np.int64)
    for ex in self.train_examples:
      np.add.at(counts, ex.candidate, 1)
    return counts


def prepare_sequential(interactions: pd.DataFrame, item_features: ItemFeatures, num_periods: int = 10,
                       history_length: int = 20, tasks: Sequence[str] = ("label", "like"),
                       split: Optional[SequentialSplit] = None) -> SequentialData:
  """Cuts ``interactions`` into periods and builds every period's examples (histories, context).

  Histories and context come causally from the full log: an example only sees interactions
  strictly before its own timestamp, so eval examples see the training periods but nothing later.

  Args:
    interactions: The full, time-sorted log (histories and context are drawn from it).
    item_features: The item table examples index.
    num_periods: Equal-count periods when ``split`` is None (the last is evaluated).
    history_length: H.
    tasks: Label columns.
    split: A prebuilt split (e.g. ``daily_split``: one period per day, sub-sampled training days).
  """
  split = split or sequential_split(interactions, num_periods)
  featurizer = RankingFeaturizer(item_features, history_length=history_length, tasks=tasks)
  # One featurizer pass over every period (the log is indexed once), then cut back into periods.
  frames = [*split.train_periods, split.eval_period]
  allx = featurizer.examples(pd.concat(frames, ignore_index=True), interactions)
  bounds = np.cumsum([0] + [len(f) for f in frames])
  parts = [allx.take(np.arange(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
  ev = parts[-1]
  return SequentialData(split=split, train_examples=parts[:-1], eval_examples=ev,
                        cold_mask=split.is_cold(ev.item_ids), item_features=item_features)


def make_featurizer(config: RankerConfig, item_features: ItemFeatures) -> RankingFeaturizer:
  """The featurizer matching ``config`` (history on/off, content only for dense modes)."""
  return RankingFeaturizer(item_features, history_length=config.history_length, tasks=config.tasks,
                           include_content=needs_content(config.item_representation),
                           include_history=config.use_history)


def compile_ranker(model: Ranker) -> Ranker:
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=model.config.learning_rate))
  return model


def predict(model: Ranker, featurizer: RankingFeaturizer, examples: RankingExamples,
            batch_size: int = 2048) -> dict:
  """task -> [n] float32 probabilities for ``examples``."""
  outs = {t: [] for t in model.config.tasks}
  call = tf.function(lambda f: model(f, training=False), reduce_retracing=True)  # one graph, not eager ops
  for feats, _ in featurizer.dataset(examples, batch_size):
    pred = call(feats)
    for t in outs:
      outs[t].append(pred[t].numpy())
  return {t: np.concatenate(v) if v else np.zeros(0, np.float32) for t, v in outs.items()}


def evaluate(model: Ranker, featurizer: RankingFeaturizer, examples: RankingExamples, cold_mask) -> dict:
  """Per-task AUC overall / cold / warm on ``examples``."""
  scores = predict(model, featurizer, examples)
  return sliced_auc(examples.labels, scores, cold_mask)


def train_sequential(config: RankerConfig, item_features: Optional[ItemFeatures] = None,
                     interactions: Optional[pd.DataFrame] = None, num_periods: int = 10,
                     item_representation: Optional[tf.keras.layers.Layer] = None,
                     data: Optional[SequentialData] = None, verbose: int = 0, progress: bool = True,
                     on_period_end: Optional[Callable[[int, Ranker], None]] = None) -> RankerRun:
  """Trains a fresh :class:`Ranker` on periods 1..N in order (one pass each), evaluates on N+1.

  Args:
    config: Model and training configuration.
    item_features: ``sid`` [N, L] int32 codes (and ``content`` [N, D] for dense modes) per item.
    interactions: The full, time-sorted interaction log.
    num_periods: N + 1, the number of equal-size time periods (the last one is evaluated).
    item_representation: Optional prebuilt ``ItemRepresentation`` (required for SPM modes: it holds
      the trained piece table).
    data: Precomputed :class:`SequentialData` (from :func:`prepare_sequential`); when given,
      ``item_features``, ``interactions`` and ``num_periods`` are not needed.
    verbose: Keras fit verbosity.
    progress: Show a tqdm bar over periods.
    on_period_end: Called as ``on_period_end(i, model)`` after training period i (e.g. to snapshot
      weights; the causality test uses it).

  Returns:
    A :class:`RankerRun`.
  """
  if data is None:
    if item_features is None or interactions is None:
      raise ValueError("train_sequential needs either `data` or both `item_features` and `interactions`")
    data = prepare_sequential(interactions, item_features, num_periods, config.history_length, config.tasks)
  featurizer = make_featurizer(config, data.item_features)
  tf.keras.utils.set_random_seed(config.seed)
  model = compile_ranker(Ranker(config, item_representation=item_representation))

  period_metrics = []
  n_train = 0
  modes = "+".join(getattr(config.item_representation, "modes", ()) or ("?",))
  start = time.perf_counter()
  for i, ex in enumerate(tqdm(data.train_examples, desc=f"train {modes}", disable=not progress, leave=False)):
    ds = featurizer.dataset(ex, config.batch_size, shuffle=True, seed=config.seed * 7919 + i)
    mean_loss = EpochMeanLoss()
    hist = model.fit(ds, epochs=1, verbose=verbose, callbacks=[mean_loss])
    period_metrics.append({**{k: float(v[-1]) for k, v in hist.history.items()}, "loss": mean_loss.mean})
    n_train += len(ex)
    if on_period_end is not None:
      on_period_end(i, model)
  seconds = time.perf_counter() - start

  metrics = evaluate(model, featurizer, data.eval_examples, data.cold_mask)
  return RankerRun(model=model, featurizer=featurizer, split=data.split, metrics=metrics, train_examples=n_train,
                   train_seconds=seconds, examples_per_second=n_train / max(seconds, 1e-9),
                   period_metrics=period_metrics)


def build_item_representation(rep_config, data: SequentialData, spm=None) -> tf.keras.layers.Layer:
  """An ``ItemRepresentation`` for ``rep_config``; trains the SID SentencePiece model if needed.

  The SPM corpus is the impression-weighted SIDs of the *training* periods only (items first seen
  in the eval period have weight 0), with the vocabulary size = ``rep_config.table_budget``.
  """
  from semrec.sid.adapters import ItemRepresentation
  from semrec.sid.spm import train_sid_spm

  if "spm" in rep_config.modes and spm is None:
    codes = np.asarray(data.item_features.arrays["sid"])
    spm = train_sid_spm(codes, data.item_impressions(), vocab_size=rep_config.table_budget,
                        codebook_size=rep_config.codebook_size, item_ids=data.item_features.item_ids)
  return ItemRepresentation(rep_config, spm=spm if "spm" in rep_config.modes else None)


def train_ranker(config: RankerConfig, item_features: ItemFeatures, interactions: pd.DataFrame,
                 num_periods: int = 10, data: Optional[SequentialData] = None, spm=None,
                 progress: bool = True) -> RankerRun:
  """One call: prepare the sequential data, build the representation (training SPM if needed), train.

  Args:
    config: Ranker configuration (its ``item_representation`` picks the mode and table budget).
    item_features: ``sid`` [N, L] int32 (and ``content`` [N, D] for dense modes).
    interactions: The full interaction log.
    num_periods: N + 1 time periods; the last is evaluated.
    data: Optional precomputed :class:`SequentialData`.
    spm: Optional trained ``SidSpm`` (otherwise trained on the training periods' impressions).
    progress: tqdm progress bars.
  """
  data = data or prepare_sequential(interactions, item_features, num_periods, config.history_length, config.tasks)
  rep = build_item_representation(config.item_representation, data, spm=spm)
  return train_sequential(config, item_representation=rep, data=data, progress=progress)
