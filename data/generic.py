"""The generic input format: an interactions table and an items table, CSV or Parquet.

interactions: ``user_id, item_id, timestamp[, rating | label][, like]``; without ``rating`` and ``label`` the
              file is implicit feedback: every row is a positive (label 1).
items:        ``item_id``, text columns, optional ``image_path`` / ``audio_path``, numeric quality columns.

Every check raises :class:`DataError` naming the file, the row (1-based data row, header
excluded) and the column, so a bad export is fixed in one look.

Documented conversions (each one that changes data is reported with a :class:`DataWarning`):

* ``timestamp``: numbers are epoch seconds; a cell that is not a number is parsed as an ISO-8601
  date/time (``2016-01-02``, ``2016-01-02T03:04:05Z``, ``... +02:00``; no zone = UTC); Parquet/Arrow
  timestamp columns likewise (naive = UTC). Every value becomes whole int64 epoch seconds, sub-second
  parts floored (``12.7`` -> ``12``, ``-0.5`` -> ``-1``). Non-finite values and values outside the
  int64 range are refused.
* ``label`` and ``like`` must be 0 or 1; at least one interaction must be positive.
* Duplicate interactions (same ``user_id``, ``item_id`` and ``timestamp``) are one event: the last
  row in file order is kept (a later correction wins) and the number dropped is reported.
* A configured text column that is empty for every item is refused (the text encoder would see only
  empty strings and every SID would be trained on the same vector).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data.dataset import DataError, DataWarning, MEDIA_COLUMNS, RecDataset

# Timestamps must fit int64 seconds; float64 cannot represent 2**63 - 1 exactly, so the bound is 2**63.
_INT64_BOUND = float(2 ** 63)


def read_table(path: str) -> pd.DataFrame:
  """Reads a CSV or Parquet file; raises DataError for missing, unreadable or empty files."""
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")
  if os.path.getsize(path) == 0:
    raise DataError(f"{path}: file is empty")
  try:
    if path.endswith((".parquet", ".pq")):
      df = pd.read_parquet(path)
    else:
      df = pd.read_csv(path, dtype=str, keep_default_na=False)
  except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, ValueError) as e:
    raise DataError(f"{path}: cannot be read as a table ({e})") from e
  if len(df) == 0:
    raise DataError(f"{path}: file has a header but no rows")
  return df


def _require(df: pd.DataFrame, columns: Sequence[str], path: str):
  missing = [c for c in columns if c not in df.columns]
  if missing:
    raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")


def _numeric(df: pd.DataFrame, column: str, path: str, dtype=np.float64, allow_empty=False) -> np.ndarray:
  """Parses ``column`` as numbers; the first bad cell is reported by row and value."""
  raw = df[column]
  if raw.dtype.kind in "iufb":
    values = raw.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
  else:
    s = raw.astype(str).str.strip()
    values = pd.to_numeric(s.where(s != "", None), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values) & ~((s == "").to_numpy() & allow_empty)
    bad |= np.isinf(values)
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f"{path}: row {row + 1}, column {column!r}: expected a number, got {raw.iloc[row]!r}")
  return values.astype(dtype)


def _binary(df: pd.DataFrame, column: str, path: str) -> np.ndarray:
  """Parses a 0/1 column (``label``, ``like``) as float32; any other value is reported by row."""
  values = _numeric(df, column, path, np.float32)
  bad = ~np.isin(values, (0.0, 1.0))
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f"{path}: row {row + 1}, column {column!r}: expected 0 or 1, got {df[column].iloc[row]!r}")
  return values


def parse_timestamps(df: pd.DataFrame, path: str, column: str = "timestamp") -> np.ndarray:
  """[N] int64 epoch seconds from numbers, ISO-8601 strings or a datetime column (module docstring rule)."""
  raw = df[column]
  if raw.dtype.kind == "M":  # Parquet / Arrow timestamp column
    seconds = _datetime_seconds(raw)
    bad = np.isnan(seconds)
  elif raw.dtype.kind in "iufb":
    seconds = raw.to_numpy(dtype=np.float64, copy=True)
    bad = ~np.isfinite(seconds)
  else:
    s = raw.astype(str).str.strip()
    seconds = pd.to_numeric(s.where(s != "", None), errors="coerce").to_numpy(dtype=np.float64, copy=True)
    text = np.isnan(seconds) & (s != "").to_numpy()
    if text.any():
      dates = pd.to_datetime(s[text], format="ISO8601", utc=True, errors="coerce")
      seconds[text] = _datetime_seconds(dates)
    bad = ~np.isfinite(seconds)
  if bad.any():
    row = int(np.argmax(bad))
    raise DataError(f"{path}: row {row + 1}, column {column!r}: expected a number, got {raw.iloc[row]!r} "
                    "(timestamps are epoch seconds or ISO-8601 dates)")
  out_of_range = np.abs(seconds) >= _INT64_BOUND
  if out_of_range.any():
    row = int(np.argmax(out_of_range))
    raise DataError(f"{path}: row {row + 1}, column {column!r}: timestamp {raw.iloc[row]!r} is outside the int64 "
                    "range of epoch seconds")
  floored = np.floor(seconds)
  fractional = int((floored != seconds).sum())
  if fractional:
    warnings.warn(f"{path}: {fractional} fractional timestamp(s) in column {column!r} floored to whole seconds",
                  DataWarning, stacklevel=2)
  return floored.astype(np.int64)


def _datetime_seconds(values: pd.Series) -> np.ndarray:
  """[N] float64 epoch seconds (floored, NaN for NaT) of a datetime Series; naive values are UTC."""
  values = pd.Series(values)
  if values.dt.tz is None:
    values = values.dt.tz_localize("UTC")
  delta = values - pd.Timestamp(0, tz="UTC")
  whole = (delta // pd.Timedelta(seconds=1)).astype("float64")
  return whole.to_numpy(dtype=np.float64, na_value=np.nan)


def _ids(df: pd.DataFrame, column: str, path: str) -> pd.Series:
  s = df[column].astype(str).str.strip()
  # Integer-like floats from Parquet ("12.0") become "12" so ids match across tables.
  s = s.str.replace(r"^(-?\d+)\.0+$", r"\1", regex=True)
  empty = (s == "") | (s.str.lower() == "nan")
  if empty.any():
    row = int(np.argmax(empty.to_numpy()))
    raise DataError(f"{path}: row {row + 1}, column {column!r}: empty id")
  return s


def normalize_interactions(df: pd.DataFrame, path: str, positive_threshold: float = 3.5,
                           like_threshold: float = 4.5) -> pd.DataFrame:
  """Checks and converts a raw interactions table to the RecDataset contract.

  ``label`` is taken as given (0/1) or derived from ``rating >= positive_threshold``;
  ``like`` likewise from ``rating >= like_threshold`` when only ratings are present. A table with
  neither ``label`` nor ``rating`` is implicit feedback: every row is a positive (label 1).
  Timestamps, duplicates and the at-least-one-positive rule follow the module docstring.
  """
  _require(df, ["user_id", "item_id", "timestamp"], path)
  out = pd.DataFrame({
      "user_id": _ids(df, "user_id", path).to_numpy(),
      "item_id": _ids(df, "item_id", path).to_numpy(),
      "timestamp": parse_timestamps(df, path),
  })
  if "rating" in df.columns:
    out["rating"] = _numeric(df, "rating", path, np.float32)
  if "label" in df.columns:
    out["label"] = _binary(df, "label", path)
  elif "rating" in df.columns:
    out["label"] = (out["rating"] >= positive_threshold).astype(np.float32)
  else:  # implicit feedback
    out["label"] = np.ones(len(out), np.float32)
  if "like" in df.columns:
    out["like"] = _binary(df, "like", path)
  elif "rating" in df.columns:
    out["like"] = (out["rating"] >= like_threshold).astype(np.float32)
  check_has_positives(out, path, "every label is 0" if "label" in df.columns else
                      f"every rating is below positive_threshold={positive_threshold:g}")
  out = drop_duplicate_interactions(out, path)
  return out.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def check_has_positives(interactions: pd.DataFrame, path: str, why: str = "every label is 0"):
  """Refuses a table without a single positive: nothing to train a retriever or a ranker on."""
  if not (interactions["label"].to_numpy() > 0).any():
    raise DataError(f"{path}: no positive interaction in {len(interactions)} rows ({why}); retrieval and "
                    "ranking need at least one")


def drop_duplicate_interactions(interactions: pd.DataFrame, path: str) -> pd.DataFrame:
  """Keeps the last of rows sharing (user_id, item_id, timestamp), in file order; reports how many went."""
  dup = interactions.duplicated(["user_id", "item_id", "timestamp"], keep="last").to_numpy()
  if not dup.any():
    return interactions
  first = int(np.argmax(dup))
  warnings.warn(f"{path}: {int(dup.sum())} duplicate interaction row(s) (same user_id, item_id, timestamp; first "
                f"at row {first + 1}) dropped, keeping the last of each", DataWarning, stacklevel=2)
  return interactions[~dup].reset_index(drop=True)


def normalize_items(df: pd.DataFrame, path: str, text_columns: Sequence[str],
                    quality_columns: Sequence[str]) -> pd.DataFrame:
  """Checks and converts a raw items table to the RecDataset contract."""
  _require(df, ["item_id", *text_columns, *quality_columns], path)
  out = pd.DataFrame({"item_id": _ids(df, "item_id", path).to_numpy()})
  dup = out["item_id"].duplicated()
  if dup.any():
    row = int(np.argmax(dup.to_numpy()))
    raise DataError(f"{path}: row {row + 1}, column 'item_id': duplicate item {out['item_id'].iloc[row]!r}")
  for c in text_columns:
    out[c] = df[c].fillna("").astype(str).to_numpy()
    if not (out[c].str.strip() != "").any():
      raise DataError(f"{path}: column {c!r}: every item's text is empty; SIDs would all be trained on the same "
                      "vector (fill the column or leave it out of the text columns)")
  for c in MEDIA_COLUMNS:
    out[c] = df[c].fillna("").astype(str).to_numpy() if c in df.columns else ""
  for c in quality_columns:
    out[c] = _numeric(df, c, path, np.float32)
  extra = [c for c in df.columns if c not in out.columns]
  for c in extra:
    out[c] = df[c].to_numpy()
  return out


def check_item_references(interactions: pd.DataFrame, items: pd.DataFrame, path: str):
  """Every interaction must name a catalogued item."""
  known = pd.Index(items["item_id"])
  unknown = ~interactions["item_id"].isin(known)
  if unknown.any():
    row = int(np.argmax(unknown.to_numpy()))
    raise DataError(
        f"{path}: row {row + 1}, column 'item_id': unknown item {interactions['item_id'].iloc[row]!r} "
        f"(not in the items table; {int(unknown.sum())} such rows)")


TEXT_COLUMN_NAMES = ("title", "name", "text", "description", "brand", "categories", "category", "genres", "tags")


def auto_text_columns(items: pd.DataFrame, quality_columns: Sequence[str] = ()) -> tuple:
  """The item text columns used when none are named: those of ``TEXT_COLUMN_NAMES`` the table has (in that
  order), else every non-numeric column but ``item_id``, the media paths and the quality columns (file order).
  Raises ``DataError`` when the table has no such column."""
  named = tuple(c for c in TEXT_COLUMN_NAMES if c in items.columns)
  if named:
    return named
  skip = {"item_id", *MEDIA_COLUMNS, *quality_columns}
  rest = tuple(c for c in items.columns if c not in skip and not pd.api.types.is_numeric_dtype(items[c]))
  if not rest:
    raise DataError(f"items table: no text column (looked for {list(TEXT_COLUMN_NAMES)} or any non-numeric "
                    f"column besides item_id; columns: {list(items.columns)}); name one with --text-columns")
  return rest


def load_generic(interactions_path: str, items_path: str, text_columns: Optional[Sequence[str]] = None,
                 quality_columns: Sequence[str] = (), name: Optional[str] = None,
                 positive_threshold: float = 3.5, like_threshold: float = 4.5) -> RecDataset:
  """Loads the generic format (CSV or Parquet) into a :class:`RecDataset`.

  Relative ``image_path``/``audio_path`` values are resolved against the items file's folder. ``text_columns``
  None or empty: ``auto_text_columns`` (e.g. ``title``; ``text`` for a table whose text column is so named).
  """
  raw_inter = read_table(interactions_path)
  raw_items = read_table(items_path)
  if not text_columns:
    try:
      text_columns = auto_text_columns(raw_items, quality_columns)
    except DataError as e:
      raise DataError(f"{items_path}: {e}") from None
  text_columns = tuple(text_columns)
  inter = normalize_interactions(raw_inter, interactions_path, positive_threshold, like_threshold)
  # Row numbers in errors refer to the file, so check references before sorting matters: re-map.
  items = normalize_items(raw_items, items_path, text_columns, quality_columns)
  check_item_references(pd.DataFrame({"item_id": _ids(raw_inter, "item_id", interactions_path)}), items,
                        interactions_path)
  base = os.path.dirname(os.path.abspath(items_path))
  for c in MEDIA_COLUMNS:
    items[c] = [p if (not p or os.path.isabs(p)) else os.path.join(base, p) for p in items[c]]
  return RecDataset(name=name or os.path.splitext(os.path.basename(interactions_path))[0],
                    interactions=inter, items=items, text_columns=text_columns,
                    quality_columns=quality_columns).validate()
