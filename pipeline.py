"""The end-to-end job (`semrec run`): one config, stages in data-flow order, a resumable run directory.

A run directory holds ``config.yaml``, one sub-directory per stage (each finished stage writes
``<stage>/_DONE.json`` atomically, with its metrics), ``metrics.json``, ``report.md`` and ``plots/``.
Re-running the same command on the same directory skips finished stages, so an interrupted job
resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional

from semrec.config import save_yaml, to_dict
from semrec.data import (RecDataset, SyntheticConfig, load_generic, load_movielens, make_synthetic,
                         temporal_split)
from semrec.report import atomic_write_json

STAGE_ORDER = ("encode", "sid", "retrieval", "index", "ranking", "export", "verify")


@dataclasses.dataclass
class DataConfig:
  """Which dataset a run uses.

  Attributes:
    type: "movielens" (bundled default), "synthetic" (multimodal world) or "generic" (CSV/Parquet files).
    interactions: Path of the interactions table (generic only).
    items: Path of the items table (generic only).
    text_columns: Item text columns (generic only).
    quality_columns: Numeric item quality columns (generic only).
    synthetic: Sizes and seed of the synthetic world.
    train_fraction: Fraction of interactions (by time) before the train/test cutoff.
  """
  type: str = "movielens"
  interactions: str = ""
  items: str = ""
  text_columns: tuple = ("title",)
  quality_columns: tuple = ()
  synthetic: SyntheticConfig = dataclasses.field(default_factory=lambda: SyntheticConfig(
      num_items=600, num_users=200, num_topics=8, num_days=30))
  train_fraction: float = 0.8

  def __post_init__(self):
    if self.type not in ("movielens", "synthetic", "generic"):
      raise ValueError(f"data.type must be movielens, synthetic or generic, got {self.type!r}")
    if self.type == "generic" and not (self.interactions and self.items):
      raise ValueError("data.type 'generic' needs data.interactions and data.items paths")


def load_dataset(config: DataConfig) -> RecDataset:
  """Loads the dataset a :class:`DataConfig` names."""
  if config.type == "movielens":
    return load_movielens()
  if config.type == "synthetic":
    return make_synthetic(config.synthetic)
  return load_generic(config.interactions, config.items, config.text_columns, config.quality_columns)


class Run:
  """A run directory plus the lazily loaded dataset and split; stages read and write through it."""

  def __init__(self, config, run_dir: str):
    self.config = config
    self.run_dir = os.path.abspath(run_dir)
    os.makedirs(self.run_dir, exist_ok=True)
    os.makedirs(self.path("plots"), exist_ok=True)
    self._dataset = None
    self._split = None

  def path(self, *parts) -> str:
    return os.path.join(self.run_dir, *parts)

  def stage_dir(self, stage: str) -> str:
    d = self.path(stage)
    os.makedirs(d, exist_ok=True)
    return d

  @property
  def dataset(self) -> RecDataset:
    if self._dataset is None:
      self._dataset = load_dataset(self.config.data)
    return self._dataset

  @property
  def split(self):
    if self._split is None:
      self._split = temporal_split(self.dataset, self.config.data.train_fraction)
    return self._split

  def is_done(self, stage: str) -> bool:
    return os.path.exists(self.path(stage, "_DONE.json"))

  def stage_result(self, stage: str) -> dict:
    with open(self.path(stage, "_DONE.json")) as f:
      return json.load(f)

  def mark_done(self, stage: str, result: dict):
    atomic_write_json(os.path.join(self.stage_dir(stage), "_DONE.json"), result)


def run_stages(run: Run, stages, registry: dict[str, Callable], log: Callable[[str], None] = print,
               force: bool = False) -> dict:
  """Runs ``stages`` in order, skipping finished ones; returns {stage: result}."""
  unknown = [s for s in stages if s not in registry]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(registry)}")
  results = {}
  for stage in stages:
    if run.is_done(stage) and not force:
      log(f"[semrec] {stage}: already done in {run.path(stage)} (resuming)")
      results[stage] = run.stage_result(stage)
      continue
    log(f"[semrec] {stage}: running")
    t0 = time.time()
    result = registry[stage](run) or {}
    result = {"seconds": round(time.time() - t0, 1), **result}
    run.mark_done(stage, result)
    log(f"[semrec] {stage}: done in {result['seconds']:.0f}s")
    results[stage] = result
  return results


def write_config(run: Run):
  save_yaml(run.config, run.path("config.yaml"))
