"""Etsy-style item quality vector f(p), computed from TRAIN interactions only.

Served through ``semrec.towers.QualityBlock``: the candidate vector gets [p ; f(p)] and the query vector
[q ; w] with a constant vector w, so score = q.p + w.f(p): quality shifts every query's scores for an item by the same learned or
tuned amount, independent of the towers.

Raw features per item (Q of them, in this order, those that apply):
  smoothed_rating  Bayesian average rating: (sum r + m * global_mean) / (n + m)   (if a ``rating`` column)
  positive_rate    Beta-smoothed positive rate: (sum label + a) / (n + a + b), prior = global rate
  like_rate        Beta-smoothed like rate (if a ``like`` column)
  log_count        log(1 + number of train interactions)
  freshness        exp(-(reference_time - first_seen) / tau); tau = median train item age by default
  <quality_columns> the dataset's numeric item columns, as given

f(p) is the raw table standardised with mean/std fitted on the items that have train interactions;
the arrays are stored (``save``/``load``) so serving uses exactly the training normalisation.

Items with no train interaction (new / cold items, and ids unknown to the catalogue) have no behavioural
evidence. ``QualityConfig.new_item_policy`` decides their interaction-derived features:
  "prior" (default): the smoothed priors (the global mean rating and rates, which is what the Bayesian
    average of an item with 0 interactions is), log_count 0, and freshness 1 (age 0 since first seen:
    a brand-new item is the freshest there is). Its catalogue ``quality_columns`` are kept.
  "neutral": f = 0 (the train mean) for smoothed_rating / rates / log_count / freshness, so w.f(p)
    neither rewards nor punishes a new item.
A w tuned for plain recall on warm-dominated traffic rewards log_count and so ranks new items (log_count
0) below seen ones (measured on MovieLens before the constraint: cold Recall@100 dropped to ~0). The w
search (``semrec.towers.tuning.tune_quality_weights``) therefore keeps the cold slice's recall within ``max_cold_drop`` of its
value without quality; the freshness feature is what lets it favour new items where that pays.

NaN in a dataset quality column raises ``DataError`` naming the item and the column, unless
``QualityConfig.nan_policy="mean"``, which imputes the column's train mean (documented fallback).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.atomic import write_json
from semrec.data import DataError, PAD_ITEM


BEHAVIOURAL_FEATURES = ("smoothed_rating", "positive_rate", "like_rate", "log_count", "freshness")


@dataclasses.dataclass
class QualityConfig:
  """How raw quality features are computed.

  Attributes:
    rating_prior_count: m in the Bayesian average rating (pseudo-ratings at the global mean).
    rate_prior_count: a + b of the Beta prior on positive / like rates (its mean is the global rate).
    freshness_tau_seconds: Age decay time constant; None = median age of train items at the reference time.
    quality_columns: Dataset item columns appended as extra raw features (None = the dataset's own).
    nan_policy: "raise" (DataError naming the item and column) or "mean" (impute the column mean).
    new_item_policy: "prior" or "neutral" (see the module docstring).
  """
  rating_prior_count: float = 10.0
  rate_prior_count: float = 10.0
  freshness_tau_seconds: Optional[float] = None
  quality_columns: Optional[Sequence[str]] = None
  nan_policy: str = "raise"
  new_item_policy: str = "prior"

  def __post_init__(self):
    if self.nan_policy not in ("raise", "mean"):
      raise ValueError(f"QualityConfig.nan_policy must be 'raise' or 'mean', got {self.nan_policy!r}")
    if self.new_item_policy not in ("neutral", "prior"):
      raise ValueError(f"QualityConfig.new_item_policy must be 'neutral' or 'prior', got {self.new_item_policy!r}")
    if self.rating_prior_count < 0 or self.rate_prior_count <= 0:
      raise ValueError("QualityConfig prior counts must be positive")


class QualityVector:
  """Fitted per-item quality features f(p) for a catalogue.

  Attributes:
    item_ids: [N] object array (catalogue order).
    feature_names: the Q feature names.
    raw: [N, Q] float32 raw features.
    mean, std: [Q] float32 normalisation fitted on items with train interactions.
    new_item_raw: [Q] raw features of an item without train interactions (the priors).
    reference_time: The "now" of freshness (int seconds).
    new_item_policy: "prior" or "neutral".
  """

  def __init__(self, item_ids, feature_names, raw, mean, std, new_item_raw, reference_time: int,
               new_item_policy: str = "prior"):
    self.item_ids = np.asarray(item_ids, dtype=object)
    self.feature_names = list(feature_names)
    self.raw = np.asarray(raw, np.float32)
    self.mean = np.asarray(mean, np.float32)
    self.std = np.asarray(std, np.float32)
    self.new_item_raw = np.asarray(new_item_raw, np.float32)
    self.reference_time = int(reference_time)
    self.new_item_policy = new_item_policy
    self._index = pd.Index(self.item_ids)

  @property
  def dim(self) -> int:
    return len(self.feature_names)

  @classmethod
  def fit(cls, train: pd.DataFrame, items: pd.DataFrame, reference_time: Optional[int] = None,
          quality_columns: Sequence[str] = (), config: Optional[QualityConfig] = None) -> "QualityVector":
    """Fits f(p) for every row of ``items`` from the ``train`` interactions.

    Args:
      train: Train interactions (user_id, item_id, timestamp, label[, rating, like]); nothing after the
        cutoff may be passed here.
      items: The catalogue (item_id + any ``quality_columns``).
      reference_time: "Now" for freshness; default the last train timestamp.
      quality_columns: Numeric item columns to append (``config.quality_columns`` overrides).
    """
    cfg = config or QualityConfig()
    cols = tuple(cfg.quality_columns if cfg.quality_columns is not None else quality_columns)
    if len(train) == 0:
      raise DataError("QualityVector.fit: no train interactions")
    ids = items["item_id"].astype(str).to_numpy().astype(object)
    ref = int(train["timestamp"].max() if reference_time is None else reference_time)
    g = train.groupby("item_id")
    n = g.size().reindex(ids).fillna(0).to_numpy(np.float64)
    seen = n > 0
    names, feats, prior = [], [], []
    if "rating" in train.columns:
      mu = float(train["rating"].mean())
      s = g["rating"].sum().reindex(ids).fillna(0).to_numpy(np.float64)
      names.append("smoothed_rating")
      prior.append(mu)
      feats.append((s + cfg.rating_prior_count * mu) / (n + cfg.rating_prior_count))
    for col, name in (("label", "positive_rate"), ("like", "like_rate")):
      if col in train.columns:
        p0 = float(train[col].mean())
        s = g[col].sum().reindex(ids).fillna(0).to_numpy(np.float64)
        names.append(name)
        prior.append(p0)
        feats.append((s + cfg.rate_prior_count * p0) / (n + cfg.rate_prior_count))
    names.append("log_count")
    prior.append(0.0)
    feats.append(np.log1p(n))
    first = g["timestamp"].min().reindex(ids).to_numpy(np.float64)
    age = np.where(seen, np.maximum(ref - np.nan_to_num(first, nan=ref), 0.0), 0.0)
    tau = cfg.freshness_tau_seconds or float(np.median(age[seen])) or 1.0
    names.append("freshness")
    prior.append(1.0)
    feats.append(np.exp(-age / max(tau, 1e-9)))
    for c in cols:
      if c not in items.columns:
        raise DataError(f"quality column {c!r} is missing from the items table")
      v = pd.to_numeric(items[c], errors="coerce").to_numpy(np.float64)
      bad = ~np.isfinite(v)
      if bad.any():
        if cfg.nan_policy == "raise":
          raise DataError(f"item {ids[np.argmax(bad)]!r}: quality feature {c!r} is NaN/inf "
                          f"({int(bad.sum())} items); fix the data or use QualityConfig(nan_policy='mean')")
        fill = float(np.mean(v[~bad & seen])) if (~bad & seen).any() else 0.0
        v = np.where(bad, fill, v)
      names.append(c)
      feats.append(v)
      prior.append(float(np.mean(v[seen])) if seen.any() else float(np.mean(v)))
    raw = np.stack(feats, axis=1).astype(np.float32)
    ref_rows = raw[seen] if seen.any() else raw
    mean = ref_rows.mean(axis=0)
    std = ref_rows.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return cls(ids, names, raw, mean, std, np.asarray(prior, np.float32), ref, cfg.new_item_policy)

  @property
  def behavioural(self) -> np.ndarray:
    """[Q] bool: which features come from interactions (as opposed to catalogue quality columns)."""
    return np.array([n in BEHAVIOURAL_FEATURES for n in self.feature_names])

  @property
  def seen(self) -> np.ndarray:
    """[N] bool: items with at least one train interaction."""
    return self.raw[:, self.feature_names.index("log_count")] > 0

  def features(self) -> np.ndarray:
    """[N, Q] float32 normalised f(p), catalogue order (new items per ``new_item_policy``)."""
    f = ((self.raw - self.mean) / self.std).astype(np.float32)
    if self.new_item_policy == "neutral":
      f[np.ix_(~self.seen, self.behavioural)] = 0.0
    return f

  def gather(self, item_ids) -> np.ndarray:
    """[..., Q] f(p) for ``item_ids``; unknown items get the new-item prior row, PAD_ITEM gets zeros."""
    ids = np.asarray(item_ids, dtype=object)
    idx = self._index.get_indexer(ids.reshape(-1)).reshape(ids.shape)
    out = self.features()[np.maximum(idx, 0)]
    unknown = (idx < 0) & (ids != PAD_ITEM)
    out[unknown] = self.new_item_features()
    out[ids == PAD_ITEM] = 0.0
    return out

  def new_item_features(self) -> np.ndarray:
    """[Q] f(p) of an id without train interactions or catalogue row (per ``new_item_policy``)."""
    f = ((self.new_item_raw - self.mean) / self.std).astype(np.float32)
    if self.new_item_policy == "neutral":
      f[self.behavioural] = 0.0
    return f

  def save(self, directory: str) -> str:
    """Writes ``quality.npz`` + ``quality.json`` into ``directory`` (atomically)."""
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz")
    os.close(fd)
    np.savez(tmp, item_ids=self.item_ids.astype(str), raw=self.raw, mean=self.mean, std=self.std,
             new_item_raw=self.new_item_raw)
    os.replace(tmp, os.path.join(directory, "quality.npz"))
    meta = {"feature_names": self.feature_names, "reference_time": self.reference_time,
            "new_item_policy": self.new_item_policy}
    write_json(os.path.join(directory, "quality.json"), meta)
    return directory

  @classmethod
  def load(cls, directory: str) -> "QualityVector":
    with open(os.path.join(directory, "quality.json")) as f:
      meta = json.load(f)
    z = np.load(os.path.join(directory, "quality.npz"))
    return cls(z["item_ids"].astype(object), meta["feature_names"], z["raw"], z["mean"], z["std"],
               z["new_item_raw"], meta["reference_time"], meta.get("new_item_policy", "neutral"))
