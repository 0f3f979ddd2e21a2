"""Training and evaluation of one retriever on an ``EvalSplit``: the single path the comparison, the pipeline's
served retriever and the benchmarks share.

Shape letters: Q queries, N catalogue items, d embedding width (+ Q_f quality features).

``train_and_evaluate`` builds the training batches (pooled tower: one row per train positive with its
history; sequential tower: every prefix of each user's train sequence), trains with Adam and early stopping
on the validation selection score (``selection_score``: Recall@k on warm and cold validation targets,
weighted), restores the best epoch, and scores the validation and test queries with
``semrec.towers.evaluate_scores`` (full catalogue, or the split's candidates). With ``output_dir`` the
finished model and its results are written atomically, and a later call with the same fingerprint reuses
them instead of retraining (an interrupted sweep resumes after its last finished variant).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from semrec.towers.inputs import RetrievalInputs, item_frequencies
from semrec.towers.model import TwoTowerRetriever, compile_retriever, embed_candidates, init_model


@dataclasses.dataclass
class FitConfig:
  """How a retriever is trained and how its best epoch is chosen.

  Attributes:
    max_epochs: Upper bound on training epochs.
    patience: Stop after this many epochs without a better validation selection score (0 = never stop early).
    batch_size: Rows (pooled tower) or sequences (sequential tower) per batch.
    selection_k: k of the validation Recall@k used for early stopping and for choosing the served variant.
    cold_weight: Weight of the cold-target recall in the selection score (see ``selection_score``).
    min_cold_queries: The cold slice counts in the selection score only with at least this many validation
      queries (fewer, e.g. the ~30 of 8k leave-one-out targets that are new items, are noise).
    ks: Recall cut-offs reported.
  """
  max_epochs: int = 20
  patience: int = 2
  batch_size: int = 128
  selection_k: int = 10
  cold_weight: float = 0.5
  min_cold_queries: int = 100
  ks: tuple = (5, 10, 20, 50, 100)

  def __post_init__(self):
    self.ks = tuple(int(k) for k in self.ks)
    if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 0:
      raise ValueError(f"FitConfig needs max_epochs >= 1, batch_size >= 1, patience >= 0, got {self}")
    if not 0.0 <= self.cold_weight <= 1.0:
      raise ValueError(f"FitConfig.cold_weight must be in [0, 1], got {self.cold_weight}")


def selection_score(metrics: dict, k: int = 10, cold_weight: float = 0.5, min_cold_queries: int = 100) -> float:
  """Validation score weighing warm and cold targets: (1 - w) * warm R@k + w * cold R@k.

  Where the validation set has only warm or only cold targets (cold_items), or fewer than
  ``min_cold_queries`` cold ones (leave-one-out), the overall recall alone. Weighing the slices, not the
  queries, keeps a model that ignores new items from winning just because new-item targets are rare.
  """
  key = f"recall@{k}"
  warm, cold = metrics.get("warm", {}).get(key), metrics.get("cold", {}).get(key)
  n_cold = metrics.get("cold", {}).get("queries", 0)
  if warm is None or cold is None or n_cold < min_cold_queries or not np.isfinite(warm) or not np.isfinite(cold):
    return float(metrics["overall"][key])
  return float((1.0 - cold_weight) * warm + cold_weight * cold)


def training_dataset(model: TwoTowerRetriever, inputs: RetrievalInputs, split, batch_size: int, seed: int = 0):
  """Batches for ``split.train``: sequences for the sequential tower, (history, item) rows otherwise."""
  cfg = model.config
  pos = split.train_positives
  probs = item_frequencies(pos)
  if cfg.query_tower == "sequential":
    return inputs.sequence_dataset(split.train_sequences(), batch_size, item_probs=probs,
                                   num_negatives=cfg.num_negatives, shuffle=True, seed=seed)
  enc = inputs.encode(pos, item_probs=probs)
  return inputs.dataset(enc, batch_size, shuffle=True, seed=seed, num_negatives=cfg.num_negatives)


def query_features(inputs: RetrievalInputs, queries, rows, max_history: int) -> dict:
  """Model query features of ``queries[rows]``: user_id [q], timestamp [q], history{item_id [q, H], ...}."""
  rows = np.asarray(rows, np.int64)
  hist = queries.subset(rows).padded_histories(max_history)
  table_rows = inputs.rows_of(hist)
  inputs._ensure_tf()
  h = {"item_id": tf.constant(hist.astype(str))}
  for k in inputs.feature_names:
    h[k] = tf.gather(inputs._tf_tables[k], table_rows)
  return {"history": h, "user_id": tf.constant(queries.user_ids[rows].astype(str)),
          "timestamp": tf.constant(np.asarray(queries.timestamps)[rows].astype(np.int64))}


def query_embeddings(model: TwoTowerRetriever, inputs: RetrievalInputs, queries, batch_size: int = 1024,
                     with_blocks: bool = True) -> np.ndarray:
  """[Q, d'] (or [Q, K, d'] for a multi-interest model) served query vectors of a ``Queries`` set (history =
  most recent ``max_history`` items); ``with_blocks=False``: [Q, d], the query tower alone."""
  out = []
  for s in range(0, len(queries), batch_size):
    feats = query_features(inputs, queries, np.arange(s, min(s + batch_size, len(queries))),
                           model.config.max_history)
    q = model.query_embedding(feats) if with_blocks else model.query_tower(feats)
    out.append(q.numpy())
  return np.concatenate(out) if out else np.zeros((0, model.config.candidate.output_dim), np.float32)


def evaluate_retriever(model: TwoTowerRetriever, inputs: RetrievalInputs, queries, ks=(5, 10, 20, 50, 100),
                       candidate_embeddings: Optional[np.ndarray] = None) -> dict:
  """``evaluate_scores`` metrics of the model's dot-product scores over the catalogue on ``queries``."""
  from semrec.towers.evaluation import dot_scores, evaluate_scores
  q = query_embeddings(model, inputs, queries)
  c = embed_candidates(model, inputs) if candidate_embeddings is None else candidate_embeddings
  return evaluate_scores(lambda rows: dot_scores(q[rows], c), queries, inputs.item_features.item_ids, ks=tuple(ks))


class ValidationEarlyStopping(tf.keras.callbacks.Callback):
  """Scores the validation queries after each epoch; keeps the best weights; stops after ``patience``
  epochs without improvement and restores the best weights at the end."""

  def __init__(self, score_fn: Callable[[], tuple], patience: int):
    super().__init__()
    self.score_fn, self.patience = score_fn, patience
    self.best, self.best_epoch, self.best_metrics, self.best_weights, self.history = -np.inf, -1, None, None, []

  def on_epoch_end(self, epoch, logs=None):
    score, metrics = self.score_fn()
    self.history.append({"epoch": epoch, "loss": float((logs or {}).get("loss", np.nan)), "score": score})
    if score > self.best:
      self.best, self.best_epoch, self.best_metrics = score, epoch, metrics
      self.best_weights = self.model.get_weights()
    elif self.patience and epoch - self.best_epoch >= self.patience:
      self.model.stop_training = True

  def on_train_end(self, logs=None):
    if self.best_weights is not None:
      self.model.set_weights(self.best_weights)


def fingerprint(obj) -> str:
  """Short SHA-256 of a JSON-able object (configs, split summaries): the key of a finished variant."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_finished(directory: str, key: str) -> Optional[dict]:
  path = os.path.join(directory, "result.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    res = json.load(f)
  return res if res.get("fingerprint") == key else None


def _save_finished(directory: str, model: TwoTowerRetriever, result: dict):
  from semrec.atomic import write_json
  from semrec.towers.model import save_retriever
  save_retriever(model, os.path.join(directory, "model"))
  write_json(os.path.join(directory, "result.json"), result)


def post_hoc_settings(model: TwoTowerRetriever) -> dict:
  """The score-block settings chosen or used after training (``semrec.towers.score_blocks.POST_HOC_FIELDS``;
  not part of a training fingerprint): a model resumed with different ones keeps its weights and is re-tuned
  and re-evaluated."""
  from semrec.towers.score_blocks import POST_HOC_FIELDS
  if "content" not in model.score_blocks:  # the content block is the one the tuner sets in training runs
    return {}
  return {f: getattr(model.config.scores, f) for f in POST_HOC_FIELDS}


def train_and_evaluate(model: TwoTowerRetriever, inputs: RetrievalInputs, split, fit: FitConfig, seed: int = 0,
                       output_dir: Optional[str] = None, key: Optional[str] = None,
                       callbacks: tuple = (), stages: tuple = ("valid", "test")) -> dict:
  """Trains ``model`` on ``split.train`` (early stopping on the validation selection score) and evaluates it.

  After training the content block (if any) is tuned on validation (``semrec.towers.tune_content_mix``).

  Args:
    model: An untrained ``TwoTowerRetriever``.
    inputs: ``RetrievalInputs`` over the catalogue with the model's required features.
    split: A ``semrec.data.EvalSplit``.
    fit: ``FitConfig``.
    output_dir: If set, where the finished model (``model/``) and ``result.json`` are written; if a result with
      the same ``key`` is there, the model's weights are loaded from it instead of training (and, if its
      ``post_hoc_settings`` differ from the model's, re-tuned and re-evaluated without retraining).
    key: Fingerprint of everything the trained weights depend on (config, split, features).
    callbacks: Extra Keras callbacks for ``fit``.

  Returns:
    {"valid": metrics, "test": metrics, "selection_score": float, "best_epoch": int, "epochs": [...],
     "train_seconds": float, "content_mix": tune_content_mix's result or None (its grid scores; the chosen
     values are recorded once, in the saved model's ``score_settings``), "post_hoc": dict,
     "resumed": bool (weights loaded, not trained)}.
  """
  ds = training_dataset(model, inputs, split, fit.batch_size, seed)
  init_model(model, next(iter(ds)))
  valid = split.queries("valid")
  done = _load_finished(output_dir, key) if output_dir and key else None
  if done is not None:
    tf.train.Checkpoint(model=model).read(os.path.join(output_dir, "model", "weights", "ckpt")).expect_partial()
    if done.get("post_hoc", {}) == _jsonable(post_hoc_settings(model)):
      from semrec.towers.model import saved_score_settings
      model.score_blocks.apply(saved_score_settings(os.path.join(output_dir, "model")))
      return {**done, "resumed": True}
    trained = {k: done[k] for k in ("best_epoch", "epochs", "train_seconds")}
  else:
    stopper = ValidationEarlyStopping(lambda: _score(model, inputs, valid, fit), fit.patience)
    compile_retriever(model)
    t0 = time.time()
    model.fit(ds, epochs=fit.max_epochs, verbose=0, callbacks=[stopper, *callbacks])
    trained = {"best_epoch": stopper.best_epoch, "epochs": stopper.history, "train_seconds": round(time.time() - t0, 1)}
  from semrec.towers.tuning import tune_content_mix
  mix = tune_content_mix(model, inputs, valid, fit) if "content" in model.score_blocks else None
  cands = embed_candidates(model, inputs)
  result = {s: evaluate_retriever(model, inputs, split.queries(s), fit.ks, cands) for s in stages}
  result.update({"selection_score": selection_score(result["valid"], fit.selection_k, fit.cold_weight,
                                                    fit.min_cold_queries),
                 **trained, "content_mix": mix, "post_hoc": _jsonable(post_hoc_settings(model)), "fingerprint": key})
  if output_dir and key:
    _save_finished(output_dir, model, result)
  return {**result, "resumed": done is not None}


def _jsonable(settings: dict) -> dict:
  """``settings`` as they read back from result.json (tuples as lists)."""
  return json.loads(json.dumps(settings))


def _score(model, inputs, queries, fit: FitConfig) -> tuple:
  m = evaluate_retriever(model, inputs, queries, (fit.selection_k,))
  return selection_score(m, fit.selection_k, fit.cold_weight, fit.min_cold_queries), m


__all__ = ["FitConfig", "ValidationEarlyStopping", "evaluate_retriever", "fingerprint", "post_hoc_settings",
           "query_embeddings",
           "query_features",
           "selection_score", "train_and_evaluate", "training_dataset"]
