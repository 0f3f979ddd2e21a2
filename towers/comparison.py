"""One-run comparison of candidate-tower item representations (DESIGN.md evaluation protocol).

Protocol:
  * ``temporal_split(dataset, train_fraction)``: train before the cutoff, test after; cold items are
    items first seen after the cutoff.
  * The last ``val_fraction`` of the train period (by time) is a validation window: the towers are
    trained on the interactions before it (positives only, in-batch softmax with logQ correction),
    the quality weights w are tuned on it, and the test period is never used for either.
  * Quality features f(p) for the validation window are fitted on the data before the window (reference
    time = window start); for the test they are refitted on the full train period (reference time =
    cutoff), so no feature ever sees the period it is scored on.
  * Every test positive is a query (user history of earlier positives, train + test log), scored
    against the full catalogue; items the user interacted with earlier are excluded. Recall@10/50/100
    and NDCG@10 overall, on warm and on cold target items.

Variants (all share the same query tower, training and data; only ``ItemEncoderConfig`` differs):
  hashed_id       hashed item-ID embedding only (the baseline)
  content         Dense projection of the content embedding
  cluster_id      trainable k-means cluster-ID embedding (Kuaishou)
  sid_unigram     SID unigram pieces (semrec.sid ItemRepresentation, mode "unigram")
  sid_spm         SID SentencePiece pieces (mode "spm", trained on the impression-weighted SID corpus)
  sid_spm_hashed  SID SPM pieces + hashed item ID
Quality modes: "none" (w = 0), "tuned" (same towers, w tuned on the validation window), "learned"
(separate towers trained with w as a trainable variable).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from semrec.data import ItemFeatures, RecDataset, temporal_split

VARIANTS = ("hashed_id", "content", "cluster_id", "sid_unigram", "sid_spm", "sid_spm_hashed")
SID_VARIANTS = ("sid_unigram", "sid_spm", "sid_spm_hashed")


@dataclasses.dataclass
class ComparisonConfig:
  """Settings of ``run_retrieval_comparison`` (defaults sized for ~3-4 min on MovieLens, 2 cores).

  Attributes:
    variants: Which candidate-tower variants to train (see the module docstring).
    quality_modes: Subset of ("none", "tuned", "learned"); "tuned" reuses the "none" towers.
    train_fraction: Temporal split point (fraction of interactions before the cutoff).
    val_fraction: Fraction of the train interactions (the latest) used as the validation window.
    max_history: History length H of the query tower.
    pooling: Query-tower history pooling ("mean", "attention", "gru").
    user_hash_bins: Hashed user-ID rows in the query tower (0 = no user id).
    embedding_dim: Width of each item part (hash, cluster, content projection, SID pieces).
    output_dim: Tower output width d.
    mlp_dims: Hidden widths of both towers' MLPs.
    epochs: Training epochs per variant.
    batch_size: Training batch size (= in-batch negatives + 1).
    learning_rate: Adam learning rate.
    temperature: Softmax temperature (towers L2-normalise their outputs).
    hash_bins: Item hash rows (0 = 2 x catalogue size).
    num_clusters: k of the cluster-ID variant.
    sid_levels: L of the SIDs computed when none are passed in.
    sid_codebook_size: K of those SIDs.
    sid_mode: semrec.sid ``RQVAEConfig.mode`` for those SIDs ("rqkmeans" or "rqvae").
    spm_vocab_size: SentencePiece vocabulary (= table budget) of the SPM variants.
    ks: Recall cut-offs.
    max_tune_queries: Validation queries sampled for the w search.
    quality_new_item_policy: ``QualityConfig.new_item_policy`` for items without train interactions.
    tune_new_item_weight: Weight, in the w search, of validation queries whose target item is new in the
      window (1 = plain recall; > 1 protects new-item recall).
    seed: Seeds TF, k-means, SIDs and shuffling.
  """
  variants: Sequence[str] = VARIANTS
  quality_modes: Sequence[str] = ("none", "tuned")
  train_fraction: float = 0.8
  val_fraction: float = 0.1
  max_history: int = 10
  pooling: str = "mean"
  user_hash_bins: int = 0
  embedding_dim: int = 32
  output_dim: int = 32
  mlp_dims: Sequence[int] = (64,)
  epochs: int = 3
  batch_size: int = 1024
  learning_rate: float = 5e-3
  temperature: float = 0.05
  hash_bins: int = 0
  num_clusters: int = 256
  sid_levels: int = 3
  sid_codebook_size: int = 64
  sid_mode: str = "rqkmeans"
  spm_vocab_size: int = 1024
  ks: Sequence[int] = (10, 50, 100)
  max_tune_queries: int = 3000
  quality_new_item_policy: str = "neutral"
  tune_new_item_weight: float = 1.0
  seed: int = 0

  def __post_init__(self):
    self.variants = tuple(self.variants)
    self.quality_modes = tuple(self.quality_modes)
    bad = [v for v in self.variants if v not in VARIANTS]
    if bad:
      raise ValueError(f"unknown variants {bad}; expected a subset of {VARIANTS}")
    badq = [q for q in self.quality_modes if q not in ("none", "tuned", "learned")]
    if badq:
      raise ValueError(f"unknown quality modes {badq}; expected a subset of ('none', 'tuned', 'learned')")
    if not 0 < self.val_fraction < 1:
      raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def _content_matrix(dataset: RecDataset, content_ids, content) -> np.ndarray:
  """[N, D] content rows in catalogue order; every catalogue item must have one."""
  from semrec.sid import validate_embeddings
  emb = validate_embeddings(content, item_ids=np.asarray(content_ids), name="content embeddings")
  idx = pd.Index(np.asarray(content_ids).astype(str)).get_indexer(dataset.item_ids.astype(str))
  if (idx < 0).any():
    missing = dataset.item_ids[idx < 0]
    raise ValueError(f"no content embedding for item {missing[0]!r} ({len(missing)} catalogue items missing)")
  return emb[idx]


def _item_encoder_config(variant: str, cfg: ComparisonConfig, hash_bins: int, levels: int, k: int):
  """The ``ItemEncoderConfig`` (one ``semrec.sid.ItemRepresentationConfig``, parts concatenated) of a variant."""
  from semrec.sid import ItemRepresentationConfig
  from semrec.towers.towers import ItemEncoderConfig
  modes = {"hashed_id": ("random_hash",), "content": ("dense",), "cluster_id": ("cluster",),
           "sid_unigram": ("unigram",), "sid_spm": ("spm",), "sid_spm_hashed": ("spm", "random_hash")}[variant]
  budget = cfg.spm_vocab_size if "spm" in modes else max(levels * k, 1)
  rc = ItemRepresentationConfig(modes=modes, embedding_dim=cfg.embedding_dim, num_levels=levels, codebook_size=k,
                                table_budget=budget, hash_buckets=max(hash_bins, 1),
                                cluster_sizes=(cfg.num_clusters,) if "cluster" in modes else ())
  return ItemEncoderConfig(representation=rc)


def build_variant_retriever(variant: str, cfg: ComparisonConfig, quality_dim: int = 0, quality_mode: str = "none",
                            spm=None, num_levels: Optional[int] = None, codebook_size: Optional[int] = None,
                            hash_bins: int = 0, time_mean: float = 0.0, time_scale: float = 1.0):
  """The ``TwoTowerRetriever`` of one comparison variant (the comparison and the served model share it).

  Args:
    variant: One of ``VARIANTS``.
    cfg: Sizes (embedding/output dims, MLPs, history, temperature, learning rate, SPM budget, ...).
    quality_dim, quality_mode: The Etsy quality vector (Q features; "none" | "tuned" | "learned").
    spm: Trained ``SidSpm`` for the SPM variants.
    num_levels, codebook_size: L and K of the SIDs (default ``cfg.sid_levels`` / ``cfg.sid_codebook_size``).
    hash_bins: Item hash rows of the hashed variants.
    time_mean, time_scale: Normalisation of the query tower's request time.
  """
  from semrec.towers.model import RetrieverConfig, TwoTowerRetriever
  from semrec.towers.towers import CandidateTowerConfig, QueryTowerConfig
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
  if variant in ("sid_spm", "sid_spm_hashed") and spm is None:
    raise ValueError(f"variant {variant!r} needs a trained SidSpm (spm=...)")
  levels, k = num_levels or cfg.sid_levels, codebook_size or cfg.sid_codebook_size
  rc = RetrieverConfig(
      item=_item_encoder_config(variant, cfg, hash_bins, levels, k),
      candidate=CandidateTowerConfig(mlp_dims=cfg.mlp_dims, output_dim=cfg.output_dim),
      query=QueryTowerConfig(user_hash_bins=cfg.user_hash_bins, user_dim=cfg.embedding_dim,
                             max_history=cfg.max_history, pooling=cfg.pooling, mlp_dims=cfg.mlp_dims,
                             output_dim=cfg.output_dim, time_mean=time_mean, time_scale=time_scale),
      temperature=cfg.temperature, quality_dim=quality_dim if quality_mode != "none" else 0,
      quality_mode=quality_mode, learning_rate=cfg.learning_rate)
  from semrec.sid import ItemRepresentation
  rep = ItemRepresentation(rc.item.representation, spm=spm, name="item_representation")
  return TwoTowerRetriever(rc, item_representation=rep)


def fit_retriever(model, train_ds, epochs: int):
  """Builds ``model`` eagerly on the first batch, compiles it and runs Keras ``fit``; returns the History."""
  from semrec.towers.model import compile_retriever, init_model
  init_model(model, next(iter(train_ds)))
  compile_retriever(model)
  return model.fit(train_ds, epochs=epochs, verbose=0)


def _plot(table: pd.DataFrame, path: str, k: int = 100):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  modes = list(dict.fromkeys(table["quality"]))
  fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False, sharey=True)
  slices = ["overall", "warm", "cold"]
  for ax, mode in zip(axes[0], modes):
    sub = table[table["quality"] == mode]
    variants = list(dict.fromkeys(sub["variant"]))
    x = np.arange(len(variants))
    for j, s in enumerate(slices):
      vals = [float(sub[(sub["variant"] == v) & (sub["slice"] == s)][f"recall@{k}"].iloc[0]) for v in variants]
      ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=s)
    ax.set_xticks(x)
    ax.set_xticklabels(variants, rotation=30, ha="right")
    ax.set_title(f"quality: {mode}")
    ax.set_ylabel(f"Recall@{k}")
    ax.legend()
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def run_retrieval_comparison(dataset: RecDataset, content_ids, content, config: Optional[ComparisonConfig] = None,
                             sid_codes: Optional[np.ndarray] = None, sid_codebook_size: Optional[int] = None,
                             output_dir: Optional[str] = None, verbose: bool = True) -> dict:
  """Trains and evaluates every configured variant; returns the metrics table and acceptance checks.

  Args:
    dataset: A ``RecDataset`` (e.g. ``load_movielens()``).
    content_ids: [M] item ids of ``content`` (must cover the catalogue).
    content: [M, D] float32 content embeddings.
    config: ``ComparisonConfig``.
    sid_codes: Optional [N, L] int SIDs in catalogue order (e.g. from a ``SidTable``); default: trained
      here with ``semrec.sid.train_sid_model`` on the content embeddings.
    sid_codebook_size: K of ``sid_codes`` (required with them).
    output_dir: If set, writes ``retrieval_comparison.json``, ``.csv`` and ``retrieval_recall.png`` there.

  Returns:
    {"table": DataFrame (variant, quality, slice, recall@K..., ndcg@10, num_queries, train_seconds),
     "acceptance": {...}, "quality_weights": {variant: w}, "split": {...}, "config": {...},
     "plot": path or None, "seconds": total}.
  """
  import tensorflow as tf
  from tqdm.auto import tqdm
  from semrec.towers.inputs import RetrievalInputs, item_frequencies
  from semrec.towers.metrics import rank_of_targets, sliced_metrics
  from semrec.towers.model import embed_candidates, embed_queries
  from semrec.towers.quality import QualityConfig, QualityVector, tune_quality_weights

  cfg = config or ComparisonConfig()
  t_start = time.time()
  tf.keras.utils.set_random_seed(cfg.seed)
  ids = dataset.item_ids.astype(str).astype(object)
  n_items = len(ids)
  x = _content_matrix(dataset, content_ids, content)

  split = temporal_split(dataset, cfg.train_fraction)
  train = split.train
  ts = np.sort(train["timestamp"].to_numpy())
  val_start = int(ts[int(len(ts) * (1 - cfg.val_fraction))])
  fit_rows = train[train["timestamp"] < val_start]
  val_rows = train[train["timestamp"] >= val_start]
  if len(fit_rows) == 0 or len(val_rows) == 0:
    raise ValueError(f"val_fraction={cfg.val_fraction} leaves an empty fit or validation window")
  pos = lambda d: d[d["label"] > 0]  # noqa: E731

  # Item-side features: content, cluster ids, SIDs (+ SPM), quality vectors.
  arrays = {"content": x}
  needs_sid = any(v in SID_VARIANTS for v in cfg.variants)
  if "cluster_id" in cfg.variants:
    from semrec.sid.kmeans import fit_kmeans, nearest_centroid
    cents = fit_kmeans(x, min(cfg.num_clusters, n_items), seed=cfg.seed)
    from semrec.sid.adapters import cluster_feature
    arrays[cluster_feature(cfg.num_clusters)] = nearest_centroid(x, cents)
  levels, k = cfg.sid_levels, cfg.sid_codebook_size
  spm = None
  if needs_sid:
    if sid_codes is None:
      from semrec.sid import RQVAEConfig, train_sid_model
      sid_model = train_sid_model(x, RQVAEConfig(mode=cfg.sid_mode, num_levels=levels, codebook_size=k,
                                                 seed=cfg.seed), item_ids=ids)
      sid_codes = sid_model.codes(x)
    else:
      if sid_codebook_size is None:
        raise ValueError("sid_codebook_size is required with sid_codes")
      sid_codes = np.asarray(sid_codes)
      if sid_codes.shape[0] != n_items:
        raise ValueError(f"sid_codes has {sid_codes.shape[0]} rows, the catalogue has {n_items} items")
      levels, k = int(sid_codes.shape[1]), int(sid_codebook_size)
    arrays["sid"] = sid_codes.astype(np.int32)
    if any(v in ("sid_spm", "sid_spm_hashed") for v in cfg.variants):
      from semrec.sid import train_sid_spm
      # Impression-weighted SID corpus: items weighted by their interactions before the validation window.
      weights = fit_rows["item_id"].astype(str).value_counts().reindex(ids).fillna(0).to_numpy()
      spm = train_sid_spm(sid_codes, weights=weights, vocab_size=cfg.spm_vocab_size, codebook_size=k, item_ids=ids)
  features = ItemFeatures(ids, arrays)
  qcfg = QualityConfig(new_item_policy=cfg.quality_new_item_policy)
  q_val = QualityVector.fit(fit_rows, dataset.items, reference_time=val_start,
                            quality_columns=dataset.quality_columns, config=qcfg)
  q_test = QualityVector.fit(train, dataset.items, reference_time=split.cutoff,
                             quality_columns=dataset.quality_columns, config=qcfg)

  probs = item_frequencies(pos(fit_rows))
  hash_bins = cfg.hash_bins or 2 * n_items
  t_mean = float(fit_rows["timestamp"].mean())
  t_scale = float(max(fit_rows["timestamp"].std(), 1.0))
  all_inter = dataset.interactions
  cold_set = set(split.cold_items.tolist())

  # Query rows, targets, exclusions and slices do not depend on the variant: encode them once.
  base_inputs = RetrievalInputs(features, list(arrays), cfg.max_history)
  enc_fit = base_inputs.encode(pos(fit_rows), item_probs=probs)
  enc_test = base_inputs.encode(pos(split.test), context=all_inter)
  test_targets = base_inputs.rows_of(enc_test["item_id"])
  test_excl = base_inputs.exclusions(enc_test, all_inter)
  is_cold = np.array([i in cold_set for i in enc_test["item_id"]])
  slices = {"overall": np.ones(len(is_cold), bool), "warm": ~is_cold, "cold": is_cold}
  val_pos = pos(val_rows)
  if len(val_pos) > cfg.max_tune_queries:  # the w search is a small grid: a sample of the window suffices
    val_pos = val_pos.sample(cfg.max_tune_queries, random_state=cfg.seed).sort_values("timestamp", kind="stable")
  enc_val = base_inputs.encode(val_pos, context=train)
  val_targets = base_inputs.rows_of(enc_val["item_id"])
  val_excl = base_inputs.exclusions(enc_val, train)
  val_new = ~np.isin(enc_val["item_id"], fit_rows["item_id"].astype(str).unique())
  val_weights = np.where(val_new, cfg.tune_new_item_weight, 1.0)

  rows_out, weights_out, per_variant = [], {}, {}
  progress = tqdm(cfg.variants, desc="retrieval comparison", disable=not verbose)
  for variant in progress:
    modes_to_train = []
    if "none" in cfg.quality_modes or "tuned" in cfg.quality_modes:
      modes_to_train.append("tuned")
    if "learned" in cfg.quality_modes:
      modes_to_train.append("learned")
    for train_mode in modes_to_train:
      progress.set_postfix_str(f"{variant}/{train_mode}")
      tf.keras.utils.set_random_seed(cfg.seed)
      model = build_variant_retriever(variant, cfg, quality_dim=q_val.dim, quality_mode=train_mode, spm=spm,
                                      num_levels=levels, codebook_size=k, hash_bins=hash_bins, time_mean=t_mean,
                                      time_scale=t_scale)
      names = model.item_encoder.required_features()
      in_val = RetrievalInputs(features, names, cfg.max_history, quality=q_val.features(),
                               unknown_quality=q_val.new_item_features())
      in_test = RetrievalInputs(features, names, cfg.max_history, quality=q_test.features(),
                                unknown_quality=q_test.new_item_features())
      train_ds = in_val.dataset(enc_fit, cfg.batch_size, shuffle=True, seed=cfg.seed)
      t0 = time.time()
      hist = fit_retriever(model, train_ds, cfg.epochs)
      train_seconds = time.time() - t0

      def evaluate(w):
        if model.quality_weights is not None:
          model.set_quality_weights(w)
        q = embed_queries(model, in_test, enc_test)
        c = embed_candidates(model, in_test)
        ranks = rank_of_targets(q, c, test_targets, test_excl, max_k=max(cfg.ks))
        return sliced_metrics(ranks, slices, cfg.ks)

      results = {}
      if train_mode == "tuned":
        if "none" in cfg.quality_modes:
          results["none"] = evaluate(np.zeros(q_val.dim, np.float32))
        if "tuned" in cfg.quality_modes:
          qb = embed_queries(model, in_val, enc_val, with_quality=False)
          cb = embed_candidates(model, in_val, with_quality=False)
          w, info = tune_quality_weights(qb, cb, q_val.features(), val_targets, val_excl, k=max(cfg.ks),
                                         query_weights=val_weights, cold=val_new)
          weights_out[f"{variant}/tuned"] = {"w": dict(zip(q_val.feature_names, map(float, w))), **info}
          results["tuned"] = evaluate(w)
      else:
        w = model.quality_weights.numpy()
        weights_out[f"{variant}/learned"] = {"w": dict(zip(q_val.feature_names, map(float, w)))}
        results["learned"] = evaluate(w)
      for qmode, sliced in results.items():
        for s, m in sliced.items():
          rows_out.append({"variant": variant, "quality": qmode, "slice": s, **m,
                           "train_seconds": round(train_seconds, 1), "final_loss": float(hist.history["loss"][-1])})
      per_variant[f"{variant}/{train_mode}"] = train_seconds
      tf.keras.backend.clear_session()

  table = pd.DataFrame(rows_out)
  kmax = max(cfg.ks)
  acceptance = _acceptance(table, kmax)
  out = {"table": table, "acceptance": acceptance, "quality_weights": weights_out,
         "split": {**split.summary(), "val_start": val_start, "fit_interactions": int(len(fit_rows)),
                   "val_interactions": int(len(val_rows))},
         "config": dataclasses.asdict(cfg), "quality_features": q_test.feature_names, "plot": None,
         "sid": {"num_levels": levels, "codebook_size": k, "spm_vocab": spm.vocab_size if spm is not None else None}}
  if output_dir:
    os.makedirs(output_dir, exist_ok=True)
    out["plot"] = os.path.join(output_dir, "retrieval_recall.png")
    _plot(table, out["plot"], kmax)
    csv = os.path.join(output_dir, "retrieval_comparison.csv")
    table.to_csv(csv + ".tmp", index=False)
    os.replace(csv + ".tmp", csv)
  out["seconds"] = time.time() - t_start
  if output_dir:
    js = os.path.join(output_dir, "retrieval_comparison.json")
    with open(js + ".tmp", "w") as f:
      json.dump({**{k: v for k, v in out.items() if k != "table"}, "table": table.to_dict("records")}, f, indent=2,
                default=str)
    os.replace(js + ".tmp", js)
  return out


def _acceptance(table: pd.DataFrame, k: int) -> dict:
  """Issue targets: SID cold Recall@k >= 3x the hashed-ID baseline, overall Recall@k no worse."""
  col = f"recall@{k}"
  def get(variant, quality, s):
    sel = table[(table["variant"] == variant) & (table["quality"] == quality) & (table["slice"] == s)]
    return float(sel[col].iloc[0]) if len(sel) else None
  out = {}
  for quality in dict.fromkeys(table["quality"]) if len(table) else []:
    base_cold, base_all = get("hashed_id", quality, "cold"), get("hashed_id", quality, "overall")
    if base_cold is None:
      continue
    for v in SID_VARIANTS:
      cold, overall = get(v, quality, "cold"), get(v, quality, "overall")
      if cold is None:
        continue
      ratio = cold / base_cold if base_cold > 0 else (float("inf") if cold > 0 else float("nan"))
      out[f"{v}/{quality}"] = {"cold_ratio_vs_hashed": ratio, "cold_target_met": bool(cold >= 3 * base_cold and cold > 0),
                               "overall": overall, "baseline_overall": base_all,
                               "overall_target_met": bool(overall >= base_all)}
  return out
