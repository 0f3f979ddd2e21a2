"""The end-to-end job (`semrec run`): one config, stages in data-flow order, a resumable run directory.

A run directory holds ``config.yaml``, one sub-directory per stage (each finished stage writes
``<stage>/_DONE.json`` atomically, with its metrics), ``metrics.json``, ``report.md`` and ``plots/``.
Re-running the same command on the same directory skips finished stages, so an interrupted job
resumes where it stopped. Each ``_DONE.json`` also records a key of the config a stage ran with (its own
sections, its prerequisites' sections and the seed): a finished stage whose config has changed since is
stale, and is recomputed (its directory cleared first) together with every later stage that depends on it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Optional

import numpy as np

from semrec.config import save_yaml, to_dict
from semrec.data import (RecDataset, SyntheticConfig, load_generic, load_movielens, make_synthetic,
                         temporal_split)
from semrec.atomic import write_json as atomic_write_json
from semrec.atomic import write_text as atomic_write_text

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
    self._fingerprint = None

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
  def data_fingerprint(self) -> str:
    """``dataset.fingerprint()``, hashed once per run (stage keys and every export manifest use it)."""
    if self._fingerprint is None:
      self._fingerprint = self.dataset.fingerprint()
    return self._fingerprint

  @property
  def split(self):
    if self._split is None:
      self._split = temporal_split(self.dataset, self.config.data.train_fraction)
    return self._split

  def is_done(self, stage: str) -> bool:
    """True when ``stage`` finished in this directory (whatever config it ran with; see ``stale_sections``)."""
    return os.path.exists(self.path(stage, "_DONE.json"))

  def _done_record(self, stage: str) -> dict:
    with open(self.path(stage, "_DONE.json")) as f:
      return json.load(f)

  def stage_result(self, stage: str) -> dict:
    """The metrics dict a finished stage recorded (without the bookkeeping ``_config`` entry)."""
    result = self._done_record(stage)
    result.pop("_config", None)
    return result

  def config_sections(self, stage: str) -> Optional[dict]:
    """{config section: short hash} that ``stage`` depends on (None for stages outside ``STAGES``)."""
    return STAGES.config_sections(self, stage)

  def stale_sections(self, stage: str) -> list:
    """Config sections that changed since the finished ``stage`` ran ([] when unchanged or unknown)."""
    if not self.is_done(stage):
      return []
    now, then = self.config_sections(stage), self._done_record(stage).get("_config")
    if now is None or then is None:  # a stage outside STAGES, or recorded before config keys were: trust it
      return []
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))

  def mark_done(self, stage: str, result: dict):
    record = dict(result)
    sections = self.config_sections(stage)
    if sections is not None:
      record["_config"] = sections
    atomic_write_json(os.path.join(self.stage_dir(stage), "_DONE.json"), record)


def run_stages(run: Run, stages, registry: dict[str, Callable], log: Callable[[str], None] = print,
               force: bool = False) -> dict:
  """Runs ``stages`` in order, skipping finished ones; returns {stage: result}.

  A finished stage is reused unless ``force`` or its config changed since it ran (``Run.stale_sections``);
  a stale stage's directory is cleared before it is recomputed, so no artefact of the old config survives.
  """
  unknown = [s for s in stages if s not in registry]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(registry)}")
  results = {}
  for stage in stages:
    stale = run.stale_sections(stage)
    if run.is_done(stage) and not force and not stale:
      log(f"[semrec] {stage}: already done in {run.path(stage)} (resuming)")
      results[stage] = run.stage_result(stage)
      continue
    if stale:
      log(f"[semrec] {stage}: config changed since it ran ({', '.join(stale)}); clearing {run.path(stage)}")
      shutil.rmtree(run.path(stage))
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
from semrec.towers.comparison import ComparisonConfig  # noqa: E402


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
class RankingStageConfig:
  """The ranking stage: the representation sweep and the production ranker.

  Attributes:
    modes: Representation modes compared (see ``semrec.ranking.ALL_MODES``).
    budgets: Embedding-table budgets (rows); SPM needs each >= L*K + 1.
    num_seeds: Seeds per configuration (seed, seed+1, ...).
    use_history: History settings compared (True = the paper's Figure 3, False = Figure 2).
    num_periods: Sequential protocol: train on periods 1..N-1 in order, evaluate on period N.
    history_length: H, history items per example.
    embedding_dim: d of every item representation.
    batch_size: Training batch size.
    production_mode: Mode of the ranker exported for serving (trained with history).
    production_budget: Its table budget (rows).
  """
  modes: tuple = ("random_hash", "unigram", "bigram", "spm", "spm+hash")
  budgets: tuple = (1024, 4096)
  num_seeds: int = 1
  use_history: tuple = (True, False)
  num_periods: int = 10
  history_length: int = 20
  embedding_dim: int = 32
  batch_size: int = 512
  production_mode: str = "spm+hash"
  production_budget: int = 1024


@dataclasses.dataclass
class RetrievalStageConfig:
  """The retrieval stage: the item-tower comparison, then the production retriever and its index.

  Attributes:
    comparison: Settings of the comparison (variants, quality modes, epochs, sizes).
    production_variant: Item-tower variant of the served retriever (one of ``semrec.towers.VARIANTS``).
    production_quality: "none" (cold-start friendly) or "tuned" (w tuned on the validation window).
    index_kind: "auto" (brute force below 20k items, ScaNN above), "scann" or "brute_force".
    top_k: k of the exported retrieval models.
  """
  comparison: ComparisonConfig = dataclasses.field(default_factory=ComparisonConfig)
  production_variant: str = "sid_spm_hashed"
  production_quality: str = "none"
  index_kind: str = "auto"
  top_k: int = 100


@dataclasses.dataclass
class ExportStageConfig:
  """The export and verify stages.

  Attributes:
    base_path_prefix: Path prefix written into models.config (where TF Serving will see the models, e.g.
      "/models" in the tensorflow/serving container); empty = the local absolute paths.
    verify_saved_model_cli: Also run ``saved_model_cli show --all`` on each export during verification.
  """
  base_path_prefix: str = ""
  verify_saved_model_cli: bool = True


@dataclasses.dataclass
class RunConfig:
  """Everything `semrec run` does, in one place (written to ``<run_dir>/config.yaml``).

  Attributes:
    data: Which dataset.
    encoder: Content encoders; ``None`` picks the preset of the dataset (MiniLM text for MovieLens and
      generic data, text + image + audio for the synthetic world).
    sid: Cluster IDs and Semantic IDs.
    retrieval: The retrieval comparison, the production retriever and its index.
    ranking: The ranker comparison and the production ranker.
    export: Export and verification.
    seed: Global seed (copied into the sub-configs that take one).
  """
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  encoder: Optional[EncoderConfig] = None
  sid: SidStageConfig = dataclasses.field(default_factory=SidStageConfig)
  retrieval: RetrievalStageConfig = dataclasses.field(default_factory=RetrievalStageConfig)
  ranking: RankingStageConfig = dataclasses.field(default_factory=RankingStageConfig)
  export: ExportStageConfig = dataclasses.field(default_factory=ExportStageConfig)
  seed: int = 0

  def encoder_config(self) -> EncoderConfig:
    if self.encoder is not None:
      return self.encoder
    if self.data.type == "synthetic":
      return EncoderConfig.synthetic(seed=self.seed)
    return EncoderConfig.movielens(seed=self.seed)

  def quick(self) -> "RunConfig":
    """A copy with tiny sizes: a smoke test of the whole job (all stages, all artefacts) in minutes.

    The synthetic world shrinks to 120 items; SIDs become L=3, K=16; one epoch per model; the light
    image/audio networks (ResNet-18-style, narrow VGGish) replace ResNet50/VGGish.
    """
    rep = dataclasses.replace
    data = rep(self.data, synthetic=rep(self.data.synthetic, num_items=120, num_users=40, num_topics=4, num_days=8,
                                        impressions_per_user_per_day=5))
    encoder = self.encoder
    if encoder is None and self.data.type == "synthetic":
      encoder = EncoderConfig.synthetic(seed=self.seed, image_architecture="resnet18", image_size=32,
                                        audio_architecture="vggish-small")
    sid = rep(self.sid, model=rep(self.sid.model, codebook_size=16, epochs=2, init_batch_size=512, batch_size=64),
              cluster_ks=(8, 16))
    retrieval = rep(self.retrieval, top_k=10, comparison=rep(
        self.retrieval.comparison, epochs=1, batch_size=64, num_clusters=16, sid_codebook_size=16, spm_vocab_size=64,
        embedding_dim=8, output_dim=8, mlp_dims=(16,), max_history=5))
    ranking = rep(self.ranking, modes=("random_hash", "unigram", "spm"), budgets=(64, 128), use_history=(True,),
                  num_periods=4, history_length=5, embedding_dim=8, batch_size=64, production_budget=64)
    export = rep(self.export, verify_saved_model_cli=False)
    return rep(self, data=data, encoder=encoder, sid=sid, retrieval=retrieval, ranking=ranking, export=export)

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
  """Fits k-means cluster IDs and the SID model; writes the SID table, health table and plots."""
  import shutil
  from semrec.sid import fit_cluster_granularities, format_health_table, train_sid_model, write_health_report
  cfg = run.config.sid
  ids, x = load_embeddings(run)
  model_cfg = dataclasses.replace(cfg.model, seed=run.config.seed)
  t0 = time.time()
  sid_model = train_sid_model(x, model_cfg, item_ids=ids)
  train_seconds = time.time() - t0
  sid_model.save(run.path("sid", "model"))
  ks = tuple(dict.fromkeys(min(int(k), len(ids)) for k in cfg.cluster_ks))
  cluster_layers = fit_cluster_granularities(x, ks=ks, seed=run.config.seed)
  cluster_ids = {name: layer(x).numpy().astype("int32") for name, layer in cluster_layers.items()}
  for name, layer in cluster_layers.items():
    np.save(run.path("sid", f"centroids_{name}.npy"), layer.get_weights()[0])
  table = sid_model.table(x, ids, suffix=cfg.unique_suffix, cluster_ids=cluster_ids)
  table.save(run.path("sid", "table"))
  health = write_health_report(sid_model, x, run.path("sid"), item_ids=ids, seed=run.config.seed,
                               title=f"{run.dataset.name}: items per code, {model_cfg.mode}")
  shutil.copyfile(run.path("sid", "code_usage.png"), run.path("plots", "sid_code_usage.png"))
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
      "example_sids": {str(ids[i]): table.token_string(i) for i in range(min(3, len(ids)))},
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


def item_features(run: Run):
  """The run's per-item feature table: ``sid`` [N, L] int32 and ``content`` [N, D] float32, catalogue order."""
  from semrec.data import ItemFeatures
  ids, x = load_embeddings(run)
  table = load_sid_table(run)
  if list(table.item_ids) != list(ids):
    raise ValueError(f"{run.path('sid', 'table')}: SID table items differ from the embedding store's "
                     "(re-run `semrec sid train --force`)")
  arrays = {"sid": table.codes.astype(np.int32), "content": x}
  for name, c in table.cluster_ids.items():
    arrays[f"cluster_{name}"] = c
  return ItemFeatures(ids, arrays), table


def export_dir(run: Run) -> str:
  return run.path("export", "models")


def stage_ranking(run: Run) -> dict:
  """The ranking representation sweep, then the production ranker (exported for TF Serving)."""
  from semrec.ranking import (RankerConfig, format_summary, prepare_sequential, run_ranking_experiment,
                              train_ranker)
  from semrec.ranking.experiment import MODE_COMPONENTS
  from semrec.sid import ItemRepresentationConfig
  cfg = run.config.ranking
  feats, table = item_features(run)
  L, K = table.codes.shape[1], table.codebook_size
  base = RankerConfig(batch_size=cfg.batch_size, history_length=cfg.history_length, seed=run.config.seed)
  data = prepare_sequential(run.dataset.interactions, feats, cfg.num_periods, base.history_length, base.tasks)
  result = run_ranking_experiment(run.dataset, feats, modes=cfg.modes, budgets=cfg.budgets,
                                  seeds=tuple(run.config.seed + s for s in range(cfg.num_seeds)),
                                  use_history=cfg.use_history, codebook_size=K, num_periods=cfg.num_periods,
                                  base_config=base, embedding_dim=cfg.embedding_dim, data=data,
                                  output_dir=run.stage_dir("ranking"))
  if result.files.get("png"):
    import shutil
    shutil.copyfile(result.files["png"], run.path("plots", "ranking_auc_by_mode.png"))
  print(result.markdown())

  # The production ranker: the configured mode at the largest budget, with history.
  rep = ItemRepresentationConfig(modes=MODE_COMPONENTS[cfg.production_mode], combiner="sum",
                                 embedding_dim=cfg.embedding_dim, num_levels=L, codebook_size=K,
                                 table_budget=cfg.production_budget, hash_buckets=cfg.production_budget,
                                 content_dim=feats.arrays["content"].shape[1] if cfg.production_mode == "dense" else 0)
  prod = train_ranker(dataclasses.replace(base, item_representation=rep, use_history=True), feats,
                      run.dataset.interactions, num_periods=cfg.num_periods, data=data, progress=False)
  example = prod.featurizer.features(data.eval_examples.take(np.arange(min(8, len(data.eval_examples)))))
  from semrec.export import export_ranker
  exported = export_ranker(export_dir(run), prod.model, example, name="ranker", metrics=prod.metrics,
                           data_fingerprint=run.data_fingerprint)
  summary = result.summary
  return {
      "summary": summary.to_dict("records"),
      "split": result.split,
      "experiment_seconds": round(result.seconds, 1),
      "production": {"mode": cfg.production_mode, "budget": cfg.production_budget, "metrics": prod.metrics,
                     "export": exported.path},
      "files": {k: str(v) for k, v in result.files.items()},
  }


def stage_export(run: Run) -> dict:
  """Exports the SID assigner (content -> cluster ID + SID) and writes models.config for every export.

  The retrieval, index and ranking stages export their own models as soon as they are trained (so a
  resumed run never needs to retrain to export); this stage adds the SID assigner and the TF Serving
  config covering all of them.
  """
  from semrec.export import export_sid_assigner, write_serving_configs
  from semrec.sid import ClusterIdLayer, SidModel
  ids, x = load_embeddings(run)
  sid_model = SidModel.load(run.path("sid", "model"))
  names = sorted(f[len("centroids_"):-4] for f in os.listdir(run.path("sid")) if f.startswith("centroids_"))
  cluster = None
  if names:
    finest = max(names, key=lambda n: int(n.lstrip("k")) if n.lstrip("k").isdigit() else 0)
    cluster = ClusterIdLayer(np.load(run.path("sid", f"centroids_{finest}.npy")), name=f"cluster_id_{finest}")
  sid = run.stage_result("sid") if run.is_done("sid") else {}
  res = export_sid_assigner(export_dir(run), sid_model.assigner, x[:8], cluster_layer=cluster,
                            data_fingerprint=run.data_fingerprint,
                            metrics={k: sid.get(k) for k in ("utilisation", "unique_ratio")})
  configs = write_serving_configs(export_dir(run), run.config.export.base_path_prefix or None)
  return {"sid_assigner": res.path, "serving_configs": configs,
          "models": sorted(d for d in os.listdir(export_dir(run)) if os.path.isdir(os.path.join(export_dir(run), d)))}


def stage_verify(run: Run) -> dict:
  """Loads every export in a fresh process, replays its warm-up requests, runs saved_model_cli."""
  from semrec.export import verify_export
  report = verify_export(export_dir(run), run_saved_model_cli=run.config.export.verify_saved_model_cli)
  table = report.to_markdown()
  atomic_write_text(run.path("export", "verify.md"), table)
  print(table)
  if not report.ok:
    raise RuntimeError("export verification failed:\n" + "\n".join(report.all_errors))
  return {"ok": report.ok, "models": [{"name": m.name, "version": m.version, "ok": m.ok,
                                       "needs_scann_ops": m.needs_scann_ops, "max_abs_diff": m.max_abs_diff}
                                      for m in report.models]}


def stage_sid_assign(run: Run) -> dict:
  """Assigns SIDs to every item of the embedding store with the frozen SID model (resumable batch job)."""
  from semrec.encoders import EmbeddingStore
  from semrec.sid import SidModel, assign_sids
  sid_model = SidModel.load(run.path("sid", "model"))
  out = run.path("sid", "assigned")
  table = assign_sids(EmbeddingStore(run.path("encode", "store")), sid_model.assigner, out,
                      suffix=run.config.sid.unique_suffix)
  return {"output": out, "num_items": len(table), "unique_ratio": table.unique_ratio()}


# ----------------------------------------------------------------------------------------------------
# Retrieval and index.
# ----------------------------------------------------------------------------------------------------
def _comparison_markdown(table, ks=(10, 50, 100)) -> str:
  """One row per (variant, quality): recall@K overall, recall@100 warm / cold, NDCG@10."""
  from semrec.report import markdown_table
  rows = []
  for (variant, quality), g in table.groupby(["variant", "quality"], sort=False):
    by = {r["slice"]: r for r in g.to_dict("records")}
    row = {"variant": variant, "quality": quality}
    for k in ks:
      row[f"R@{k} all"] = by["overall"][f"recall@{k}"]
    row["R@100 warm"] = by["warm"]["recall@100"]
    row["R@100 cold"] = by["cold"]["recall@100"]
    row["NDCG@10 all"] = by["overall"]["ndcg@10"]
    rows.append(row)
  return markdown_table(rows)


def stage_retrieval(run: Run) -> dict:
  """Item-tower comparison, then the production retriever: trained, evaluated, saved and exported.

  Exports (TF Serving layout under ``export/models``): ``candidate_tower``, ``query_tower``,
  ``retrieval_brute_force`` (standard ops only) and ``retrieval_scann`` (needs ScaNN's custom ops).
  """
  import shutil
  import tensorflow as tf
  from semrec.export import (export_brute_force_retrieval, export_candidate_tower, export_query_tower,
                             export_scann_retrieval)
  from semrec.sid import train_sid_spm
  from semrec.towers import (QualityVector, RetrievalInputs, build_index, build_variant_retriever, embed_candidates,
                             embed_queries, fit_retriever, item_frequencies, rank_of_targets,
                             run_retrieval_comparison, save_retriever, sliced_metrics)

  rcfg = run.config.retrieval
  cmp = dataclasses.replace(rcfg.comparison, seed=run.config.seed, train_fraction=run.config.data.train_fraction)
  feats, table = item_features(run)
  ids = feats.item_ids
  K, L = table.codebook_size, table.codes.shape[1]
  out_dir = run.stage_dir("retrieval")
  res = run_retrieval_comparison(run.dataset, ids, feats.arrays["content"], cmp, sid_codes=table.codes,
                                 sid_codebook_size=K, output_dir=out_dir)
  atomic_write_text(os.path.join(out_dir, "comparison.md"), _comparison_markdown(res["table"], cmp.ks))
  if res.get("plot"):
    shutil.copyfile(res["plot"], run.path("plots", "retrieval_recall.png"))
  print(_comparison_markdown(res["table"], cmp.ks))

  # --- The production retriever.
  variant = rcfg.production_variant
  split = run.split
  pos = lambda d: d[d["label"] > 0]  # noqa: E731
  train_pos = pos(split.train)
  arrays = dict(feats.arrays)
  if table.cluster_ids:
    finest = max(table.cluster_ids, key=lambda n: int(table.cluster_ids[n].max()))
    arrays["cluster_id"] = table.cluster_ids[finest]
    cmp = dataclasses.replace(cmp, num_clusters=int(arrays["cluster_id"].max()) + 1)
    arrays[f"cluster_k{cmp.num_clusters}"] = arrays["cluster_id"]  # the key of ItemRepresentation's "cluster" mode
  from semrec.data import ItemFeatures
  features = ItemFeatures(ids, arrays)
  spm = None
  if variant in ("sid_spm", "sid_spm_hashed"):
    weights = train_pos["item_id"].astype(str).value_counts().reindex(ids).fillna(0).to_numpy()
    spm = train_sid_spm(table.codes, weights=weights, vocab_size=cmp.spm_vocab_size, codebook_size=K, item_ids=ids)
  qv = QualityVector.fit(split.train, run.dataset.items, reference_time=split.cutoff,
                         quality_columns=run.dataset.quality_columns)
  quality_mode = "tuned" if rcfg.production_quality == "tuned" else "none"
  t = split.train["timestamp"]
  tf.keras.utils.set_random_seed(run.config.seed)
  model = build_variant_retriever(variant, cmp, quality_dim=qv.dim, quality_mode=quality_mode, spm=spm, num_levels=L,
                                  codebook_size=K, hash_bins=cmp.hash_bins or 2 * len(ids),
                                  time_mean=float(t.mean()), time_scale=float(max(t.std(), 1.0)))
  inputs = RetrievalInputs(features, model.item_encoder.required_features(), cmp.max_history,
                           quality=qv.features() if quality_mode != "none" else None,
                           unknown_quality=qv.new_item_features() if quality_mode != "none" else None)
  train_ds = inputs.dataset(inputs.encode(train_pos, item_probs=item_frequencies(train_pos)), cmp.batch_size,
                            shuffle=True, seed=run.config.seed)
  hist = fit_retriever(model, train_ds, cmp.epochs)
  if quality_mode == "tuned":
    w = res["quality_weights"].get(f"{variant}/tuned", {}).get("w")
    if w is None:
      raise ValueError(f"production_quality='tuned' needs 'tuned' in retrieval.comparison.quality_modes and "
                       f"{variant!r} in its variants")
    model.set_quality_weights([w[n] for n in qv.feature_names])

  all_inter = run.dataset.interactions
  enc_test = inputs.encode(pos(split.test), context=all_inter)
  q = embed_queries(model, inputs, enc_test)
  c = embed_candidates(model, inputs)
  is_cold = split.is_cold(enc_test["item_id"])
  ranks = rank_of_targets(q, c, inputs.rows_of(enc_test["item_id"]), inputs.exclusions(enc_test, all_inter),
                          max_k=max(cmp.ks))
  metrics = sliced_metrics(ranks, {"overall": np.ones(len(is_cold), bool), "warm": ~is_cold, "cold": is_cold}, cmp.ks)
  save_retriever(model, os.path.join(out_dir, "model"))
  rng = np.random.default_rng(run.config.seed)
  sample = np.sort(rng.choice(len(q), size=min(1000, len(q)), replace=False))
  tmp = os.path.join(out_dir, "embeddings.tmp.npz")
  np.savez(tmp, item_ids=np.asarray(ids, dtype=str), candidates=c, queries=q[sample])
  os.replace(tmp, os.path.join(out_dir, "embeddings.npz"))

  # --- Exports.
  item_ex = {k: v.numpy() for k, v in next(iter(inputs.catalogue_dataset(8))).items()}
  q_batch = next(iter(inputs.dataset({k: v[:8] for k, v in enc_test.items()}, 8)))
  query_ex = {"user_id": q_batch["user_id"].numpy(), "timestamp": q_batch["timestamp"].numpy(),
              "history": {k: v.numpy() for k, v in q_batch["history"].items()}}
  fp = run.data_fingerprint
  summary = {s: {k: float(v) for k, v in m.items()} for s, m in metrics.items()}
  base = export_dir(run)
  k = min(rcfg.top_k, len(ids))
  exported = {
      "candidate_tower": export_candidate_tower(base, model.candidate_embedding, item_ex, data_fingerprint=fp).path,
      "query_tower": export_query_tower(base, model.query_embedding, query_ex, data_fingerprint=fp,
                                        metrics=summary).path,
      "retrieval_brute_force": export_brute_force_retrieval(
          base, model.query_embedding, query_ex, k=k, candidate_embeddings=c, item_ids=ids, data_fingerprint=fp,
          metrics=summary).path,
      "retrieval_scann": export_scann_retrieval(
          base, model.query_embedding, query_ex, k=k, index=build_index(c, ids, kind="scann", k=k),
          data_fingerprint=fp, metrics=summary).path,
  }
  recall = lambda v, q_, s: float(res["table"].query(  # noqa: E731
      "variant == @v and quality == @q_ and slice == @s")["recall@100"].iloc[0])
  headline = [{"variant": v, "quality": qm, "all": recall(v, qm, "overall"), "warm": recall(v, qm, "warm"),
               "cold": recall(v, qm, "cold")}
              for v in cmp.variants for qm in cmp.quality_modes
              if len(res["table"].query("variant == @v and quality == @qm"))]
  return {
      "comparison_seconds": round(res["seconds"], 1),
      "acceptance": res["acceptance"],
      "headline": headline,
      "quality_weights": res["quality_weights"],
      "production": {"variant": variant, "quality": quality_mode, "metrics": summary,
                     "final_loss": float(hist.history["loss"][-1]), "exports": exported},
  }


def stage_index(run: Run) -> dict:
  """Builds the served index over the production candidate embeddings (+ a ScaNN searcher artefact).

  ``auto`` is brute force below 20,000 items (ScaNN's own guidance) and ScaNN above; a ScaNN searcher
  is always built too, reported against brute force, and exported with its item-ID mapping.
  """
  from semrec.export import export_scann_searcher
  from semrec.towers import build_and_save_index
  rcfg = run.config.retrieval
  with np.load(run.path("retrieval", "embeddings.npz")) as f:
    ids, cands, queries = f["item_ids"].astype(object), f["candidates"], f["queries"]
  k = min(rcfg.top_k, len(ids))
  served = build_and_save_index(cands, ids, run.path("index", "served"), kind=rcfg.index_kind, k=k, queries=queries)
  scann = served if served["kind"] == "scann" else build_and_save_index(
      cands, ids, run.path("index", "scann"), kind="scann", k=k, queries=queries)
  res = export_scann_searcher(export_dir(run), run.path("index", "served" if served is scann else "scann"),
                              queries[:8], k=10, data_fingerprint=run.data_fingerprint,
                              metrics={"recall@10_vs_brute_force": scann.get("recall@10")})
  return {"kind": served["kind"], "recall_at_10": served.get("recall@10"),
          "scann_recall_at_10": scann.get("recall@10"),
          "scann_speedup_vs_brute_force": scann.get("speedup_vs_brute_force"),
          "num_items": len(ids), "served": served, "scann": scann, "searcher_export": res.path}


# ----------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------
def _headline_rows(results: dict) -> list[dict]:
  """The console metrics table: one row per headline figure."""
  rows = []
  enc = results.get("encode") or {}
  if enc:
    rows.append({"stage": "encode", "metric": "items encoded / dim", "value": f"{enc['num_items']} / {enc['dim']}"})
  sid = results.get("sid") or {}
  if sid:
    rows.append({"stage": "sid", "metric": f"utilisation per level ({sid['mode']}, L={sid['num_levels']}, "
                                            f"K={sid['codebook_size']})",
                 "value": " / ".join(f"{u:.1%}" for u in sid["utilisation"])})
    rows.append({"stage": "sid", "metric": "unique-SID ratio (before suffix)", "value": f"{sid['unique_ratio']:.4f}"})
    rows.append({"stage": "sid", "metric": "mean cosine by shared prefix 0..L",
                 "value": " < ".join(f"{c:.3f}" for c in sid["prefix_cosine"] if c is not None)})
  ret = results.get("retrieval") or {}
  for r in ret.get("headline", []):
    rows.append({"stage": "retrieval", "metric": f"{r['variant']} ({r['quality']}) recall@100 all / warm / cold",
                 "value": f"{r['all']:.4f} / {r['warm']:.4f} / {r['cold']:.4f}"})
  idx = results.get("index") or {}
  if idx:
    rows.append({"stage": "index", "metric": f"served index ({idx.get('kind')}) recall@10 vs brute force",
                 "value": f"{idx.get('recall_at_10', float('nan')):.4f}"})
    if idx.get("scann_recall_at_10") is not None:
      rows.append({"stage": "index", "metric": "ScaNN searcher recall@10 vs brute force",
                   "value": f"{idx['scann_recall_at_10']:.4f}"})
  rk = results.get("ranking") or {}
  for r in rk.get("summary", []):
    if r.get("use_history") and r.get("task") == rk["summary"][0].get("task"):
      rows.append({"stage": "ranking", "metric": f"{r['mode']} AUC / cold AUC (history, budget {r['budget']})",
                   "value": f"{r['auc']:.4f} / {r['cold_auc']:.4f}"})
  ver = results.get("verify") or {}
  if ver:
    rows.append({"stage": "verify", "metric": "exports loaded + answered in a fresh process",
                 "value": f"{sum(m['ok'] for m in ver['models'])}/{len(ver['models'])}"})
  return rows


def write_report(run: Run, results: dict) -> str:
  """Writes ``metrics.json`` and ``report.md`` (tables + PNG plots) and returns the console table."""
  from semrec.report import Report, console_table, markdown_table
  rows = _headline_rows(results)
  atomic_write_json(run.path("metrics.json"), {"dataset": run.dataset.summary(), "split": run.split.summary(),
                                               "stages": results, "headline": rows})
  rep = Report(f"semrec run: {run.dataset.name}")
  rep.section("Summary", markdown_table(rows),
              markdown_table([{"stage": s, "seconds": r.get("seconds")} for s, r in results.items()]))
  rep.section("Data", markdown_table([run.dataset.summary() | run.split.summary()]))

  def text(*parts):
    p = run.path(*parts)
    return open(p).read() if os.path.exists(p) else ""

  def img(name, caption):
    p = run.path("plots", name)
    return Report.image(p, run.run_dir, caption) if os.path.exists(p) else ""

  if "encode" in results:
    rep.section("Content embeddings", markdown_table([results["encode"]]))
  if "sid" in results:
    rep.section("Semantic IDs: health", text("sid", "health.md"), img("sid_code_usage.png", "code usage"),
                img("sid_prefix_similarity.png", "prefix similarity"))
  if "retrieval" in results:
    rep.section("Retrieval: item-tower comparison (recall by slice)", text("retrieval", "comparison.md"),
                img("retrieval_recall.png", "recall by slice"))
  if "index" in results:
    rep.section("Index", markdown_table([{k: v for k, v in results["index"].items() if not isinstance(v, (dict, list))}]))
  if "ranking" in results:
    rep.section("Ranking: representation sweep (AUC / cold AUC)", text("ranking", "ranking_experiment.md"),
                img("ranking_auc_by_mode.png", "AUC by mode"))
  if "verify" in results:
    rep.section("Exports (TF Serving layout), verified in a fresh process", text("export", "verify.md"))
  rep.write(run.path("report.md"))
  return console_table(rows)


class _Stages:
  """The stage registry and each stage's prerequisites (what `semrec <stage>` runs first)."""

  def __init__(self):
    self.registry = {
        "encode": stage_encode, "sid": stage_sid, "sid-assign": stage_sid_assign,
        "retrieval": stage_retrieval, "index": stage_index, "ranking": stage_ranking,
        "export": stage_export, "verify": stage_verify,
    }
    self.requires = {"encode": (), "sid": ("encode",), "sid-assign": ("sid",), "retrieval": ("sid",),
                     "index": ("retrieval",), "ranking": ("sid",), "export": ("sid",),
                     "verify": ("export",)}
    # RunConfig sections each stage reads itself (besides `seed`). export and verify cover every
    # SavedModel the run wrote, so they depend on the whole config.
    everything = ("data", "encoder", "sid", "retrieval", "ranking", "export")
    self.reads = {"encode": ("data", "encoder"), "sid": ("sid",), "sid-assign": (), "retrieval": ("retrieval",),
                  "index": ("retrieval",), "ranking": ("ranking",), "export": everything, "verify": everything}

  def config_sections(self, run: "Run", stage: str) -> Optional[dict]:
    """{section: 16-hex hash} of the config ``stage`` and its prerequisites read; None if unknown."""
    if stage not in self.reads:
      return None
    cfg = run.config
    names = {n for s in [stage] + self.dependencies(stage) for n in self.reads[s]}
    values = {"seed": cfg.seed}
    for n in names:
      values[n] = to_dict(cfg.encoder_config() if n == "encoder" else getattr(cfg, n))
    if "data" in names and cfg.data.type == "generic":  # the files can change under the same paths
      values["data_files"] = run.data_fingerprint
    digest = lambda v: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa: E731
    return {n: digest(v) for n, v in values.items()}

  def dependencies(self, stage: str) -> list[str]:
    out = []
    def visit(s):
      for d in self.requires.get(s, ()):
        visit(d)
        if d not in out:
          out.append(d)
    visit(stage)
    return out


STAGES = _Stages()


def run_all(run: Run, force: bool = False, log: Callable[[str], None] = print) -> str:
  """`semrec run`: every stage in order (finished ones reused), then metrics.json + report.md."""
  t0 = time.time()
  results = run_stages(run, STAGE_ORDER, STAGES.registry, log=log, force=force)
  table = write_report(run, results)
  log(f"[semrec] finished in {time.time() - t0:.0f}s; report: {run.path('report.md')}")
  return table
