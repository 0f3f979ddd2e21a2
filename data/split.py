"""Evaluation protocols (docs/protocols.md) and the time-based splits of the ranking stage.

``make_split(dataset, kind)`` builds an ``EvalSplit``: the train log plus validation and test ``Queries`` of
one protocol: ``temporal`` (train before a validation window, test after a cutoff), ``leave_one_out``
(per user: last positive = test, second-to-last = validation) or ``cold_items`` (item-disjoint hold-out);
the containers (``Queries``, ``EvalSplit``) live in ``semrec.data.queries``.
``temporal_split`` / ``time_periods`` are the row-level splits the ranking stage trains on.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data.dataset import DataError, RecDataset
from semrec.data.queries import SPLITS, EvalSplit, Queries, isin  # noqa: F401  (SPLITS, Queries re-exported)


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
    return isin(np.asarray(item_ids, dtype=object), self.cold_items)

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
  """Splits ``dataset`` at ``cutoff`` (or at the ``train_fraction`` quantile of timestamps).

  The row-level split used by the ranking stage; retrieval evaluation uses ``make_split``.
  """
  inter = dataset.interactions
  cutoff = _temporal_cutoff(inter, dataset.name, train_fraction, cutoff)
  train = inter[inter["timestamp"] < cutoff].reset_index(drop=True)
  test = inter[inter["timestamp"] >= cutoff].reset_index(drop=True)
  warm = np.sort(train["item_id"].unique()).astype(object)
  cold = np.sort(np.setdiff1d(test["item_id"].unique(), warm)).astype(object)
  return TemporalSplit(train=train, test=test, cutoff=int(cutoff), cold_items=cold, warm_items=warm)


def _temporal_cutoff(inter: pd.DataFrame, name: str, train_fraction: float, cutoff: Optional[int] = None) -> int:
  """The ``train_fraction`` quantile of timestamps (or ``cutoff``); both sides must be non-empty."""
  if len(inter) < 2:
    raise DataError(f"dataset {name!r}: needs at least 2 interactions to split, has {len(inter)}")
  ts = np.sort(inter["timestamp"].to_numpy())
  if cutoff is None:
    if not 0.0 < train_fraction < 1.0:
      raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    cutoff = int(ts[min(int(len(ts) * train_fraction), len(ts) - 1)])
  if not ts[0] < cutoff <= ts[-1]:
    raise DataError(f"dataset {name!r}: cutoff {cutoff} leaves an empty train or test set")
  return int(cutoff)


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


# ----------------------------------------------------------------------------------------------------------------
# Evaluation protocols (docs/protocols.md): one ``EvalSplit`` per run, with validation and test query sets.
# ----------------------------------------------------------------------------------------------------------------


def _prepare_log(dataset: RecDataset) -> tuple[pd.DataFrame, int]:
  """Interactions with duplicate (user, item, timestamp) rows kept once (the first), plus ``_order``.

  ``_order`` is the row's position in ``dataset.interactions``: the stable tie-break for equal timestamps.
  """
  inter = dataset.interactions
  if len(inter) < 2:
    raise DataError(f"dataset {dataset.name!r}: needs at least 2 interactions to split, has {len(inter)}")
  log = inter.reset_index(drop=True)
  dup = log.duplicated(["user_id", "item_id", "timestamp"], keep="first").to_numpy()
  log = log[~dup].copy()
  log["_order"] = np.flatnonzero(~dup)
  return log, int(dup.sum())


def _by_user(log: pd.DataFrame) -> pd.DataFrame:
  """``log`` sorted per user by (timestamp, _order), with ``_start`` (first row of the user) and ``_tie``
  (first row of the user with the same timestamp) positions."""
  ulog = log.sort_values(["user_id", "timestamp", "_order"], kind="stable").reset_index(drop=True)
  pos = np.arange(len(ulog))
  ulog["_start"] = pos - ulog.groupby("user_id", sort=False).cumcount().to_numpy()
  ulog["_tie"] = pos - ulog.groupby(["user_id", "timestamp"], sort=False).cumcount().to_numpy()
  return ulog


def _queries_from_log(ulog: pd.DataFrame, target: np.ndarray, strict_time: bool, train_items) -> Queries:
  """One single-target query per ``target`` row of ``ulog`` (see ``_by_user``), in (timestamp, _order) order.

  History = the user's positive rows before the target: rows at an earlier position in the user's order,
  or (``strict_time``) only rows with a strictly earlier timestamp. ``exclude`` = those rows' items (any label).
  """
  items = ulog["item_id"].to_numpy().astype(object)
  pos = ulog["label"].to_numpy() > 0
  start, tie = ulog["_start"].to_numpy(), ulog["_tie"].to_numpy()
  rows = np.flatnonzero(target)
  rows = rows[np.lexsort((ulog["_order"].to_numpy()[rows], ulog["timestamp"].to_numpy()[rows]))]
  histories, exclude = [], []
  for r in rows:
    s, e = start[r], (tie[r] if strict_time else r)
    seen, p = items[s:e], pos[s:e]
    h = seen if p.all() else seen[p]
    histories.append(h)
    exclude.append(h if len(h) == len(seen) else seen)
  targets = [items[r:r + 1] for r in rows]
  return Queries(user_ids=ulog["user_id"].to_numpy().astype(object)[rows], histories=histories, targets=targets,
                 timestamps=ulog["timestamp"].to_numpy(np.int64)[rows], exclude=exclude,
                 cold=~isin(items[rows], train_items))


def _strip(df: pd.DataFrame) -> pd.DataFrame:
  return df.drop(columns=[c for c in df.columns if c.startswith("_")]).reset_index(drop=True)


def _temporal(log: pd.DataFrame, name: str, train_fraction: float, val_fraction: float) -> tuple:
  if not 0.0 < val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
  cutoff = _temporal_cutoff(log, name, train_fraction)
  t = log["timestamp"].to_numpy()
  ts = np.sort(t[t < cutoff])
  valid_start = int(ts[min(int(len(ts) * (1 - val_fraction)), len(ts) - 1)])
  train = log[t < valid_start]
  if len(train) == 0:
    raise DataError(f"dataset {name!r}: val_fraction={val_fraction} leaves no interactions before the "
                    f"validation window (starts at {valid_start})")
  train_items = np.unique(train["item_id"].to_numpy().astype(object))
  ulog = _by_user(log)
  ut, positive = ulog["timestamp"].to_numpy(), ulog["label"].to_numpy() > 0
  stages = {"valid": _queries_from_log(ulog, positive & (ut >= valid_start) & (ut < cutoff), True, train_items),
            "test": _queries_from_log(ulog, positive & (ut >= cutoff), True, train_items)}
  return train, stages, {"cutoff": int(cutoff), "valid_start": valid_start}


def _leave_one_out(log: pd.DataFrame) -> tuple:
  ulog = _by_user(log)
  positive = ulog["label"].to_numpy() > 0
  users = ulog["user_id"]
  npos = pd.Series(positive).groupby(users.to_numpy()).transform("sum").to_numpy()
  # 0 = the user's last positive, 1 = second-to-last, ... (only meaningful on positive rows).
  from_end = pd.Series(positive[::-1].astype(np.int64)).groupby(users.to_numpy()[::-1]).cumsum().to_numpy()[::-1] - 1
  eligible = npos >= 3
  test = positive & eligible & (from_end == 0)
  valid = positive & eligible & (from_end == 1)
  valid_pos = pd.Series(np.where(valid, np.arange(len(ulog)), -1)).groupby(users.to_numpy()).transform("max")
  train_mask = ~eligible | (np.arange(len(ulog)) < valid_pos.to_numpy())
  train = ulog[train_mask].sort_values("_order", kind="stable")
  train_items = np.unique(train["item_id"].to_numpy().astype(object))
  stages = {"valid": _queries_from_log(ulog, valid, False, train_items),
            "test": _queries_from_log(ulog, test, False, train_items)}
  return train, stages, {"users_train_only": int(pd.Series(~eligible).groupby(users.to_numpy()).all().sum())}


def _cold_items(log: pd.DataFrame, catalogue: np.ndarray, cold_fraction: float, seed: int) -> tuple:
  """Item-disjoint split: a seeded ``cold_fraction`` of the items with a positive is held out (half valid,
  half test) with all their interactions; one query per user and stage (see docs/protocols.md)."""
  if not 0.0 < cold_fraction < 1.0:
    raise ValueError(f"cold_fraction must be in (0, 1), got {cold_fraction}")
  positive_items = set(log.loc[log["label"] > 0, "item_id"])
  pool = np.array([i for i in catalogue if i in positive_items], dtype=object)  # catalogue order
  n_held = int(round(cold_fraction * len(pool)))
  if n_held < 2 or n_held >= len(pool):
    raise DataError(f"cold_fraction={cold_fraction} of {len(pool)} items with a positive interaction holds out "
                    f"{n_held} items; need at least 2 held out and 1 left for training")
  held = pool[np.random.default_rng(seed).permutation(len(pool))[:n_held]]
  stage_items = {"valid": held[:n_held // 2], "test": held[n_held // 2:]}
  item = log["item_id"].to_numpy()
  train = log[~isin(item, held)]
  seqs = _user_rows(train)
  stages = {}
  for stage, items in stage_items.items():
    cands = catalogue[isin(catalogue, items)]
    rows = log[isin(item, items) & (log["label"].to_numpy() > 0)]
    rows = rows.sort_values(["timestamp", "_order"], kind="stable")
    users, hist, targets, times, excl = [], [], [], [], []
    for u, g in rows.groupby("user_id", sort=True):
      seen = seqs.get(u)
      if seen is None or not (seen[1] > 0).any():
        continue  # a user without train positives has no history to query from
      users.append(u)
      hist.append(seen[0][seen[1] > 0])
      excl.append(seen[0])
      targets.append(pd.unique(g["item_id"].to_numpy()).astype(object))
      times.append(int(g["timestamp"].iloc[0]))
    stages[stage] = Queries(np.array(users, dtype=object), hist, targets, np.array(times, np.int64), excl,
                            np.ones(len(users), bool), cands)
  return train, stages, {"cold_fraction": float(cold_fraction), "seed": int(seed),
                         "valid_items": int(len(stage_items["valid"])), "test_items": int(len(stage_items["test"]))}


def _user_rows(log: pd.DataFrame) -> dict:
  """{user_id: (items [n] object, labels [n] float)} time-ordered (ties: ``_order``)."""
  ulog = log.sort_values(["user_id", "timestamp", "_order"], kind="stable")
  return {u: (g["item_id"].to_numpy().astype(object), g["label"].to_numpy())
          for u, g in ulog.groupby("user_id", sort=False)}


def _check_queries(dataset: RecDataset, kind: str, log: pd.DataFrame, stages: dict):
  """Refuses a protocol that leaves no test query (nothing to evaluate) or, for leave_one_out / cold_items, no
  validation query (nothing to select the served model on), naming what the data lacks for it. Runs before any
  model is trained (``semrec.pipeline.preflight``)."""
  need = ("test",) if kind == "temporal" else ("valid", "test")
  empty = [{"valid": "validation"}.get(s, s) for s in ("valid", "test") if s in need and len(stages[s]) == 0]
  if not empty:
    return
  pos = log[log["label"].to_numpy() > 0]
  per_user = pos.groupby("user_id").size()
  users, most = int(log["user_id"].nunique()), int(per_user.max()) if len(per_user) else 0
  if kind == "leave_one_out":
    why = (f"no user has the 3 positive interactions it needs (train, validation, test): {users} users, at most "
           f"{most} positive(s) per user")
  elif kind == "cold_items":
    why = ("no user with a positive among the remaining (training) items also interacted positively with the "
           f"held-out items ({users} users, at most {most} positive(s) per user); a cold query needs both")
  else:
    why = "no positive interaction falls in the validation window / after the test cutoff"
  raise DataError(f"dataset {dataset.name!r}: split {kind!r} leaves no {' and no '.join(empty)} queries: {why}; "
                  "use a split the data supports (--split temporal / leave_one_out / cold_items, docs/protocols.md)")


def make_split(dataset: RecDataset, kind: str = "temporal", *, train_fraction: float = 0.8,
               val_fraction: float = 0.1, cold_fraction: float = 0.2, seed: int = 0) -> EvalSplit:
  """Builds the ``kind`` protocol's train log and validation / test queries (docs/protocols.md).

  Duplicate (user, item, timestamp) rows are kept once (the first row in dataset order); equal timestamps
  are ordered by their row order in ``dataset.interactions``.

  Args:
    dataset: A ``RecDataset``.
    kind: "temporal", "leave_one_out" or "cold_items".
    train_fraction: temporal: fraction of interactions (by time) before the test cutoff.
    val_fraction: temporal: the latest fraction of the pre-cutoff interactions forming the validation window.
    cold_fraction: cold_items: fraction of the items with a positive interaction held out.
    seed: cold_items: seeds which items are held out.

  Raises:
    DataError: the data cannot be split this way, e.g. a protocol with no test query, or leave_one_out /
      cold_items without validation queries (leave_one_out where no user has 3 positives, cold_items where no
      user has both a train positive and a held-out positive), naming the cause.
  """
  if kind not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {kind!r}")
  log, dropped = _prepare_log(dataset)
  if kind == "temporal":
    train, stages, info = _temporal(log, dataset.name, train_fraction, val_fraction)
  elif kind == "leave_one_out":
    train, stages, info = _leave_one_out(log)
  else:
    train, stages, info = _cold_items(log, dataset.item_ids.astype(object), cold_fraction, seed)
  _check_queries(dataset, kind, log, stages)
  train_items = set(train["item_id"])
  targets = [t for q in stages.values() for ts in q.targets for t in ts]
  cold = np.sort(np.array(sorted({t for t in targets if t not in train_items}), dtype=object))
  return EvalSplit(kind=kind, train=_strip(train), cold_items=cold, candidates=stages["test"].candidates,
                   stage_queries=stages, info={"duplicates_dropped": dropped, **info})
