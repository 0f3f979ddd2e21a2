"""The containers of the evaluation protocols (docs/protocols.md): ``Queries`` and ``EvalSplit``.

``semrec.data.split.make_split`` builds an ``EvalSplit``: a protocol's train log plus its validation and test
``Queries`` (one row per query: user, history, targets, excluded items, cold flag, candidate items).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from semrec.data.pipelines import PAD_ITEM

SPLITS = ("temporal", "leave_one_out", "cold_items")
STAGES = ("valid", "test")


def isin(values, items) -> np.ndarray:
  """[n] bool: ``values`` in ``items`` (hash-based; ``np.isin`` on object arrays is quadratic)."""
  values = pd.Series(np.asarray(values, dtype=object).reshape(-1))
  return values.isin(pd.Series(np.asarray(items, dtype=object).reshape(-1))).to_numpy()


@dataclasses.dataclass
class Queries:
  """One row per query (Q queries); every array/list is aligned with ``user_ids``.

  Attributes:
    user_ids: [Q] object array of user ids.
    histories: Q object arrays of item ids: the user's earlier positives, OLDEST FIRST, untruncated
      (``padded_histories`` truncates to the most recent ``max_len``).
    targets: Q object arrays of target item ids (1 element in temporal / leave_one_out; the user's held-out
      items of the stage in cold_items, in order of first interaction).
    timestamps: [Q] int64 request time (the target's time; for several targets, the first target's).
    exclude: Q object arrays of item ids removed from the ranking: every item the user interacted with
      before the request (any label; may repeat; a repeated target is among them).
    cold: [Q] bool, True when the target item(s) have no interaction in ``EvalSplit.train``.
    candidates: Item ids ranked for these queries (cold_items: the stage's held-out items), or None for the
      whole catalogue.
  """
  user_ids: np.ndarray
  histories: list
  targets: list
  timestamps: np.ndarray
  exclude: list
  cold: np.ndarray
  candidates: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.user_ids)

  def subset(self, rows) -> "Queries":
    """The queries at ``rows`` ([q] int or [Q] bool), same candidates."""
    rows = np.arange(len(self))[np.asarray(rows)] if np.asarray(rows).dtype == bool else np.asarray(rows, np.int64)
    pick = lambda seq: [seq[i] for i in rows]  # noqa: E731
    return Queries(self.user_ids[rows], pick(self.histories), pick(self.targets), self.timestamps[rows],
                   pick(self.exclude), self.cold[rows], self.candidates)

  def last_items(self) -> np.ndarray:
    """[Q] object: each query's most recent history item (PAD_ITEM when the history is empty)."""
    return np.array([h[-1] if len(h) else PAD_ITEM for h in self.histories], dtype=object)

  def padded_histories(self, max_len: int) -> np.ndarray:
    """[Q, max_len] object: the most recent ``max_len`` history items, most recent last, PAD_ITEM-padded.

    A history longer than ``max_len`` is truncated to its most recent items (the query tower's view);
    ``exclude`` keeps the full history, so evaluation still removes every earlier item.
    """
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.full((len(self), max_len), PAD_ITEM, dtype=object)
    for r, h in enumerate(self.histories):
      h = h[-max_len:]
      if len(h):
        out[r, max_len - len(h):] = h
    return out


@dataclasses.dataclass
class EvalSplit:
  """A protocol's train log plus its validation and test query sets.

  Attributes:
    kind: One of ``SPLITS``.
    train: Interactions for fitting models and baselines (all labels, columns as in
      ``RecDataset.interactions``, dataset order).
    cold_items: Sorted object array of items without any train interaction that are a target somewhere.
    candidates: Item ids ranked for the test queries (cold_items: the test items), None = whole catalogue.
    stage_queries: {"valid": Queries, "test": Queries}.
    info: Protocol parameters and counts (cutoff / valid_start for temporal, duplicates dropped, ...).
  """
  kind: str
  train: pd.DataFrame
  cold_items: np.ndarray
  candidates: Optional[np.ndarray]
  stage_queries: dict
  info: dict = dataclasses.field(default_factory=dict)

  def queries(self, stage: str) -> Queries:
    """The query set of ``stage`` ("valid" or "test")."""
    if stage not in STAGES:
      raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return self.stage_queries[stage]

  def candidates_for(self, stage: str) -> Optional[np.ndarray]:
    return self.queries(stage).candidates

  def train_sequences(self) -> dict:
    """{user_id: [n_u] object array of the user's train positives, time-ordered (ties: dataset order)}.

    Computed once and cached: treat the arrays as read-only.
    """
    if "_sequences" not in self.__dict__:
      pos = self.train_positives.sort_values(["user_id", "timestamp"], kind="stable")
      self.__dict__["_sequences"] = {u: g.to_numpy().astype(object)
                                     for u, g in pos.groupby("user_id", sort=False)["item_id"]}
    return self.__dict__["_sequences"]

  @property
  def train_positives(self) -> pd.DataFrame:
    """The rows of ``train`` with label > 0 (computed once and cached: treat as read-only)."""
    if "_positives" not in self.__dict__:
      self.__dict__["_positives"] = self.train[self.train["label"] > 0]
    return self.__dict__["_positives"]

  @property
  def train_items(self) -> np.ndarray:
    """Sorted object array of items with at least one train interaction."""
    if "_train_items" not in self.__dict__:
      self.__dict__["_train_items"] = np.sort(self.train["item_id"].unique()).astype(object)
    return self.__dict__["_train_items"]

  def is_cold(self, item_ids) -> np.ndarray:
    """[n] bool: which of ``item_ids`` have no train interaction."""
    return ~isin(np.asarray(item_ids, dtype=object), self.train_items)

  def summary(self) -> dict:
    out = {"split": self.kind, "train_interactions": int(len(self.train)),
           "train_users": int(self.train["user_id"].nunique()), "train_items": int(len(self.train_items)),
           "cold_items": int(len(self.cold_items))}
    for stage in STAGES:
      q = self.stage_queries[stage]
      out[f"{stage}_queries"] = int(len(q))
      out[f"{stage}_cold_queries"] = int(q.cold.sum())
      if q.candidates is not None:
        out[f"{stage}_candidates"] = int(len(q.candidates))
    return {**out, **self.info}
