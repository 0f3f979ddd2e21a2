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

import numpy as np

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


# ----------------------------------------------------------------------------------------------------
# The run config and the stages.
# ----------------------------------------------------------------------------------------------------
from semrec.encoders import EncoderConfig  # noqa: E402
from semrec.sid.rqvae import RQVAEConfig  # noqa: E402


@dataclasses.dataclass
class SidStageConfig:
  """The SID stage: cluster IDs and the Semantic-ID model.

  Attributes:
    model: The RQ-VAE / RQ-KMeans config (L, K, mode, epochs...).
    cluster_ks: k-means granularities of the cluster IDs (each clipped to the catalogue size).
    unique_suffix: Add the TIGER-style disambiguation suffix to the SID table.
  """
  model: RQVAEConfig = dataclasses.field(default_factory=RQVAEConfig)
  cluster_ks: tuple = (100, 1000)
  unique_suffix: bool = True


@dataclasses.dataclass
class RunConfig:
  """Everything `semrec run` does, in one place (written to ``<run_dir>/config.yaml``).

  Attributes:
    data: Which dataset.
    encoder: Content encoders; ``None`` picks the preset of the dataset (MiniLM text for MovieLens and
      generic data, text + image + audio for the synthetic world).
    sid: Cluster IDs and Semantic IDs.
    seed: Global seed (copied into the sub-configs that take one).
  """
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  encoder: Optional[EncoderConfig] = None
  sid: SidStageConfig = dataclasses.field(default_factory=SidStageConfig)
  seed: int = 0

  def encoder_config(self) -> EncoderConfig:
    if self.encoder is not None:
      return self.encoder
    if self.data.type == "synthetic":
      return EncoderConfig.synthetic(seed=self.seed)
    return EncoderConfig.movielens(seed=self.seed)

  def quick(self) -> "RunConfig":
    """A copy with tiny sizes (smoke test of the whole job in a couple of minutes)."""
    cfg = dataclasses.replace(self)
    cfg.sid = dataclasses.replace(self.sid, model=dataclasses.replace(self.sid.model, epochs=2),
                                  cluster_ks=(16,))
    return cfg

  def validate(self):
    """Cross-field checks (each sub-config validates itself at construction)."""
    if self.sid.model.codebook_size < 2:
      raise ValueError(f"sid.model.codebook_size must be >= 2, got {self.sid.model.codebook_size}")


def stage_encode(run: Run) -> dict:
  """Encodes every item's content into ``encode/store`` (resumable, sharded)."""
  from semrec.encoders import build_encoder, encode_corpus
  enc_cfg = run.config.encoder_config()
  encoder = build_encoder(enc_cfg)
  t0 = time.time()
  store = encode_corpus(run.dataset, encoder, run.path("encode", "store"), progress=True)
  contents = store.load()
  seconds = time.time() - t0
  manifest = contents.manifest
  present = contents.mask.mean(axis=0) if len(contents.mask) else []
  return {
      "num_items": int(len(contents.item_ids)),
      "dim": int(contents.embeddings.shape[1]),
      "modalities": list(manifest["encoder"]["modality_order"]),
      "modality_presence": {m: float(p) for m, p in zip(manifest["encoder"]["modality_order"], present)},
      "random_init": manifest["encoder"].get("random_init", {}),
      "items_per_second": round(len(contents.item_ids) / max(seconds, 1e-9), 1),
  }


def load_embeddings(run: Run):
  """(item_ids [N] object, embeddings [N, D] float32) of the run's store, in catalogue order."""
  from semrec.encoders import EmbeddingStore
  contents = EmbeddingStore(run.path("encode", "store")).load()
  return contents.item_ids.astype(object), contents.embeddings


def stage_sid(run: Run) -> dict:
  """Fits k-means cluster IDs and the SID model; writes the SID table, health table and code-usage plot."""
  from semrec.report import atomic_write_text
  from semrec.sid import (SidTable, fit_cluster_granularities, format_health_table, plot_code_usage,
                          train_sid_model)
  cfg = run.config.sid
  ids, x = load_embeddings(run)
  model_cfg = dataclasses.replace(cfg.model, seed=run.config.seed)
  t0 = time.time()
  sid_model = train_sid_model(x, model_cfg, item_ids=ids)
  train_seconds = time.time() - t0
  sid_model.save(run.path("sid", "model"))
  codes = sid_model.codes(x, item_ids=ids)
  ks = tuple(dict.fromkeys(min(int(k), len(ids)) for k in cfg.cluster_ks))
  cluster_layers = fit_cluster_granularities(x, ks=ks, seed=run.config.seed)
  cluster_ids = {name: layer(x).numpy().astype("int32") for name, layer in cluster_layers.items()}
  for name, layer in cluster_layers.items():
    np.save(run.path("sid", f"centroids_{name}.npy"), layer.get_weights()[0])
  table = SidTable(ids, codes, sid_model.codebook_size, cluster_ids=cluster_ids)
  if cfg.unique_suffix:
    table = table.with_suffix()
  table.save(run.path("sid", "table"))
  health = sid_model.health(x, item_ids=ids, seed=run.config.seed)
  atomic_write_text(run.path("sid", "health.md"), format_health_table(health))
  atomic_write_json(run.path("sid", "health.json"), health)
  plot = plot_code_usage(codes, sid_model.codebook_size, run.path("plots", "sid_code_usage.png"),
                         title=f"{run.dataset.name}: items per code, {model_cfg.mode}")
  _plot_prefix_similarity(health, run.path("plots", "sid_prefix_similarity.png"), run.dataset.name)
  print(format_health_table(health))
  return {
      "mode": model_cfg.mode, "num_levels": sid_model.num_levels, "codebook_size": sid_model.codebook_size,
      "train_seconds": round(train_seconds, 1),
      "utilisation": [lv["utilisation"] for lv in health["levels"]],
      "unique_ratio": health["unique_ratio"],
      "prefix_cosine": [r["mean_cosine"] for r in health["prefix_table"]],
      "prefix_cosine_strictly_rising": health["prefix_cosine_strictly_rising"],
      "reconstruction_cosine": (health.get("reconstruction") or {}).get("cosine"),
      "cluster_granularities": list(cluster_ids),
      "plots": [plot, run.path("plots", "sid_prefix_similarity.png")],
  }


def _plot_prefix_similarity(health: dict, path: str, title: str):
  """Mean content cosine of item pairs by shared SID-prefix length (0 = random pairs)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in health["prefix_table"] if r["mean_cosine"] is not None]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([r["prefix_length"] for r in rows], [r["mean_cosine"] for r in rows], marker="o")
  ax.set_xticks([r["prefix_length"] for r in rows])
  ax.set_xticklabels(["random" if r["prefix_length"] == 0 else str(r["prefix_length"]) for r in rows])
  ax.set_xlabel("shared SID prefix length")
  ax.set_ylabel("mean content cosine")
  ax.set_title(f"{title}: SID hierarchy")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def load_sid_table(run: Run):
  from semrec.sid import SidTable
  return SidTable.load(run.path("sid", "table"))
