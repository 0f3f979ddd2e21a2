"""The one in-memory dataset type every loader returns.

Column contract (all loaders enforce it, so downstream code never re-checks):

``interactions`` (one row per impression/rating, sorted by timestamp):
  user_id: str; item_id: str; timestamp: int64 seconds since epoch;
  label: float32 in {0, 1} (click / positive); optional ``rating`` float32, ``like`` float32 {0, 1}.
``items`` (one row per item, unique ``item_id``):
  item_id: str; the ``text_columns`` (str, may be empty); optional ``image_path`` / ``audio_path``
  (str, "" when absent); the ``quality_columns`` (float).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd


class DataError(ValueError):
  """Bad input data. The message names the file, row, column and/or item at fault."""


class DataWarning(UserWarning):
  """A documented conversion changed the input (duplicates dropped, fractional timestamps floored...)."""


INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "label")
MEDIA_COLUMNS = ("image_path", "audio_path")


@dataclasses.dataclass
class RecDataset:
  """Interactions + item catalogue (+ optional ground truth for synthetic data).

  Attributes:
    name: Short dataset name, used in run directories and manifests.
    interactions: DataFrame, see module docstring.
    items: DataFrame, see module docstring.
    text_columns: Item columns joined (in this order) into the text the text encoder sees.
    quality_columns: Numeric item columns usable as Etsy-style quality features.
    item_topics: Optional int array aligned with ``items`` (synthetic ground-truth topics).
    user_topics: Optional float array [num_users, num_topics] (synthetic user preferences).
  """
  name: str
  interactions: pd.DataFrame
  items: pd.DataFrame
  text_columns: Sequence[str] = ("title",)
  quality_columns: Sequence[str] = ()
  item_topics: Optional[np.ndarray] = None
  user_topics: Optional[np.ndarray] = None

  def __post_init__(self):
    self.text_columns = tuple(self.text_columns)
    self.quality_columns = tuple(self.quality_columns)

  def validate(self) -> "RecDataset":
    """Checks the column contract (module docstring) whatever the loader; returns ``self``.

    Raises:
      DataError: naming the dataset, column and first offending row.
    """
    inter = self.interactions
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing or "item_id" not in self.items.columns:
      raise DataError(f"{self.name}: missing column(s) {missing or ['item_id']}")
    if inter["timestamp"].dtype != np.int64:
      raise DataError(f"{self.name}: column 'timestamp' must be int64 epoch seconds, got {inter['timestamp'].dtype}")
    for column in ("label", "like"):
      if column in inter.columns:
        bad = ~np.isin(inter[column].to_numpy(), (0.0, 1.0))
        if bad.any():
          row = int(np.argmax(bad))
          raise DataError(f"{self.name}: interaction {row}, column {column!r}: expected 0 or 1, got "
                          f"{inter[column].iloc[row]!r}")
    if not (inter["label"].to_numpy() > 0).any():
      raise DataError(f"{self.name}: no positive interaction in {len(inter)} rows; retrieval and ranking need "
                      "at least one")
    if self.items["item_id"].duplicated().any():
      raise DataError(f"{self.name}: duplicate item_id in the items table")
    return self

  @property
  def num_items(self) -> int:
    return len(self.items)

  @property
  def num_users(self) -> int:
    return int(self.interactions["user_id"].nunique())

  @property
  def item_ids(self) -> np.ndarray:
    """[num_items] object array of item ids, in catalogue order."""
    return self.items["item_id"].to_numpy()

  def has_modality(self, modality: str) -> bool:
    """True if any item has a non-empty value for ``text`` / ``image`` / ``audio``."""
    if modality == "text":
      return bool(self.text_columns)
    col = f"{modality}_path"
    return col in self.items.columns and bool((self.items[col].astype(str) != "").any())

  def item_texts(self, separator: str = " | ") -> list[str]:
    """The text of each item: non-empty ``text_columns`` joined by ``separator``."""
    parts = [self.items[c].fillna("").astype(str) for c in self.text_columns]
    out = []
    for row in zip(*parts):
      out.append(separator.join(p.strip() for p in row if p and p.strip()))
    return out

  def first_seen(self) -> pd.Series:
    """Timestamp of each item's first interaction, indexed by item_id (NaN if never seen)."""
    first = self.interactions.groupby("item_id")["timestamp"].min()
    return first.reindex(self.items["item_id"])

  def fingerprint(self) -> str:
    """A short content hash of interactions and items (for manifests)."""
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(self.interactions, index=False).values.tobytes())
    h.update(pd.util.hash_pandas_object(self.items.astype(str), index=False).values.tobytes())
    return h.hexdigest()[:16]

  def summary(self) -> dict:
    return {
        "name": self.name,
        "num_interactions": int(len(self.interactions)),
        "num_users": self.num_users,
        "num_items": self.num_items,
        "text_columns": list(self.text_columns),
        "quality_columns": list(self.quality_columns),
        "modalities": [m for m in ("text", "image", "audio") if self.has_modality(m)],
        "positive_rate": float(self.interactions["label"].mean()) if len(self.interactions) else 0.0,
    }
