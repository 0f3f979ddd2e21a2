"""Time-based splits with warm/cold item slices (DESIGN.md, evaluation protocol).

Train on interactions before a cutoff, evaluate on those at or after it. A *cold* item is one
whose first interaction is at or after the cutoff; every other evaluated item is *warm*.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data.dataset import DataError, RecDataset


@dataclasses.dataclass
class TemporalSplit:
  """A time-based split.

  Attributes:
    train: Interactions with ``timestamp < cutoff``.
    test: Interactions with ``timestamp >= cutoff``.
    cutoff: The cutoff timestamp (int seconds).
    cold_items: Sorted array of item ids first seen at or after the cutoff.
    warm_items: Sorted array of item ids seen before the cutoff.
  """
  train: pd.DataFrame
  test: pd.DataFrame
  cutoff: int
  cold_items: np.ndarray
  warm_items: np.ndarray

  @property
  def test_cold(self) -> pd.DataFrame:
    return self.test[self.test["item_id"].isin(self.cold_items)]

  @property
  def test_warm(self) -> pd.DataFrame:
    return self.test[~self.test["item_id"].isin(self.cold_items)]

  def is_cold(self, item_ids) -> np.ndarray:
    """[n] bool: which of ``item_ids`` are cold."""
    return np.isin(np.asarray(item_ids, dtype=object), self.cold_items)

  def summary(self) -> dict:
    return {
        "cutoff": int(self.cutoff),
        "train_interactions": int(len(self.train)),
        "test_interactions": int(len(self.test)),
        "test_cold_interactions": int(len(self.test_cold)),
        "warm_items": int(len(self.warm_items)),
        "cold_items": int(len(self.cold_items)),
    }


def temporal_split(dataset: RecDataset, train_fraction: float = 0.8,
                   cutoff: Optional[int] = None) -> TemporalSplit:
  """Splits ``dataset`` at ``cutoff`` (or at the ``train_fraction`` quantile of timestamps)."""
  inter = dataset.interactions
  if len(inter) < 2:
    raise DataError(f"dataset {dataset.name!r}: needs at least 2 interactions to split, has {len(inter)}")
  if cutoff is None:
    if not 0.0 < train_fraction < 1.0:
      raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    ts = np.sort(inter["timestamp"].to_numpy())
    cutoff = int(ts[min(int(len(ts) * train_fraction), len(ts) - 1)])
  train = inter[inter["timestamp"] < cutoff].reset_index(drop=True)
  test = inter[inter["timestamp"] >= cutoff].reset_index(drop=True)
  if len(train) == 0 or len(test) == 0:
    raise DataError(f"dataset {dataset.name!r}: cutoff {cutoff} leaves an empty train or test set")
  warm = np.sort(train["item_id"].unique()).astype(object)
  cold = np.sort(np.setdiff1d(test["item_id"].unique(), warm)).astype(object)
  return TemporalSplit(train=train, test=test, cutoff=int(cutoff), cold_items=cold, warm_items=warm)


def time_periods(interactions: pd.DataFrame, num_periods: int) -> list[pd.DataFrame]:
  """Cuts interactions into ``num_periods`` consecutive, equally-populated time periods.

  Used for sequential (production-style) training: train on periods 1..N in order, evaluate on N+1.
  Ties in timestamp never straddle a boundary.
  """
  if num_periods < 2:
    raise ValueError(f"num_periods must be >= 2, got {num_periods}")
  inter = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
  ts = inter["timestamp"].to_numpy()
  edges = [ts[min(int(len(ts) * i / num_periods), len(ts) - 1)] for i in range(1, num_periods)]
  bounds = [-np.inf, *edges, np.inf]
  periods = [inter[(ts >= lo) & (ts < hi)].reset_index(drop=True) for lo, hi in zip(bounds[:-1], bounds[1:])]
  if any(len(p) == 0 for p in periods):
    raise DataError(f"cannot cut {len(inter)} interactions into {num_periods} non-empty periods")
  return periods
