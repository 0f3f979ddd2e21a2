"""The representation comparison of Singh et al. (Figures 2 and 3) on any dataset.

Every item representation (random hash, dense content, unigram / bigram / prefix SID n-grams, SPM,
SPM + hash) is a configuration of the same :class:`Ranker`; each is trained with the same sequential
protocol, data and seed at several embedding-table budgets, with and without the user's history,
and judged on AUC overall and on items first seen in the eval period (cold AUC, the paper's CTR/1D).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from semrec.data import ItemFeatures, RecDataset
from semrec.ranking.model import RankerConfig
from semrec.ranking.training import SequentialData, prepare_sequential, train_sequential

# Experiment mode name -> ItemRepresentationConfig.modes.
MODE_COMPONENTS = {
    "random_hash": ("random_hash",),
    "dense": ("dense",),
    "unigram": ("unigram",),
    "bigram": ("bigram",),
    "prefix": ("prefix",),
    "spm": ("spm",),
    "spm+hash": ("spm", "random_hash"),
}
ALL_MODES = tuple(MODE_COMPONENTS)
# The main job's headline comparison (fits in ~3 minutes on MovieLens on 2 cores).
HEADLINE_MODES = ("random_hash", "unigram", "bigram", "spm")
HEADLINE_BUDGETS = (1024, 4096)


@dataclasses.dataclass
class ExperimentResult:
  """Output of :func:`run_ranking_experiment`.

  Attributes:
    runs: One row per (use_history, mode, budget, seed, task): auc, cold_auc, warm_auc, rows, ...
    summary: Mean and std over seeds per (use_history, mode, budget, task), with the paired
      difference to random hashing at the same budget (``d_auc_vs_hash``, ``d_cold_auc_vs_hash``).
    split: Summary of the sequential split (periods, eval and cold sizes).
    seconds: Wall time of the whole experiment.
    files: Paths written (table CSV/Markdown/JSON, PNG) when ``output_dir`` was given.
  """
  runs: pd.DataFrame
  summary: pd.DataFrame
  split: dict
  seconds: float
  files: dict

  def markdown(self, task: Optional[str] = None) -> str:
    return format_summary(self.summary, task=task)


def _rep_config(mode: str, budget: int, num_levels: int, codebook_size: int, embedding_dim: int,
                content_dim: int):
  from semrec.sid.adapters import ItemRepresentationConfig
  return ItemRepresentationConfig(modes=MODE_COMPONENTS[mode], combiner="sum", embedding_dim=embedding_dim,
                                  num_levels=num_levels, codebook_size=codebook_size, table_budget=int(budget),
                                  hash_buckets=int(budget), content_dim=content_dim if mode == "dense" else 0)


def _budget_independent(mode: str, num_levels: int, codebook_size: int, budgets: Sequence[int]) -> bool:
  """True when the mode allocates the same table at every budget (so one run serves all budgets)."""
  from semrec.sid import budget as sb
  if mode == "dense":
    return True
  if mode in sb.NGRAM_MODES:
    return len({sb.table_rows(mode, num_levels, codebook_size, b) for b in budgets}) == 1
  return False


def run_ranking_experiment(dataset: RecDataset, item_features: ItemFeatures,
                           modes: Sequence[str] = HEADLINE_MODES, budgets: Sequence[int] = HEADLINE_BUDGETS,
                           seeds: Sequence[int] = (0,), use_history: Sequence[bool] = (True, False),
                           codebook_size: Optional[int] = None, num_periods: int = 10,
                           base_config: Optional[RankerConfig] = None, embedding_dim: int = 32,
                           output_dir: Optional[str] = None, data: Optional[SequentialData] = None,
                           progress: bool = True) -> ExperimentResult:
  """Trains every (history setting, mode, budget, seed) ranker and tabulates AUC / cold AUC.

  Args:
    dataset: Interactions with the task columns (``label``, ``like``) and timestamps.
    item_features: ``sid`` [N, L] int32 codes per item (and ``content`` [N, D] for ``dense``).
    modes: Names from ``ALL_MODES``: random_hash, dense, unigram, bigram, prefix, spm, spm+hash.
    budgets: Embedding-table budgets (rows): hash buckets for random_hash, the SPM vocabulary, the
      hashed row count of n-gram modes whose exact id space is larger (see ``semrec.sid.budget``).
      SPM needs budget >= L * K + 1.
    seeds: Seeds (weight init + shuffling); the data and split are the same for all.
    use_history: Which history settings to run (paper Figure 3 = True, Figure 2 = False).
    codebook_size: K (default: max code + 1).
    num_periods: Sequential protocol periods (train on the first N-1, evaluate on the last).
    base_config: Template :class:`RankerConfig` (MLP sizes, lr, batch size, tasks...).
    embedding_dim: d of every representation.
    output_dir: If set, writes ``ranking_experiment.{csv,md,json}`` and ``ranking_experiment.png``.
    data: Precomputed :class:`SequentialData` (else built from ``dataset``).
    progress: tqdm bar over runs.

  Returns:
    An :class:`ExperimentResult`.
  """
  from semrec.sid.spm import train_sid_spm
  from semrec.ranking.training import build_item_representation

  start = time.perf_counter()
  modes = tuple(modes)
  unknown = [m for m in modes if m not in MODE_COMPONENTS]
  if unknown:
    raise ValueError(f"unknown representation mode(s) {unknown}; expected some of {ALL_MODES}")
  if not modes or not budgets or not seeds or not use_history:
    raise ValueError("modes, budgets, seeds and use_history must all be non-empty")
  budgets = tuple(sorted(int(b) for b in budgets))
  if "sid" not in item_features.arrays:
    raise ValueError("item_features has no 'sid' array ([N, L] int32 SID codes)")
  codes = np.asarray(item_features.arrays["sid"])
  L = int(codes.shape[1])
  K = int(codebook_size or int(codes.max()) + 1)
  if "dense" in modes and "content" not in item_features.arrays:
    raise ValueError("mode 'dense' needs item_features 'content' ([N, D] content embeddings)")
  D = int(np.asarray(item_features.arrays["content"]).shape[1]) if "content" in item_features.arrays else 0
  if any(m.startswith("spm") for m in modes) and budgets[0] < L * K + 1:
    raise ValueError(f"SPM modes need every budget >= L*K + 1 = {L * K + 1}; got budgets {budgets}")
  base = base_config or RankerConfig(batch_size=512)
  data = data or prepare_sequential(dataset.interactions, item_features, num_periods, base.history_length,
                                    base.tasks)

  # One SPM per budget, trained on the training periods' impression-weighted SIDs.
  spms, cold_unseen, cold_support = {}, {}, {}
  if any(m.startswith("spm") for m in modes):
    weights = data.item_impressions()
    cold_rows = item_features.index_of(data.split.cold_items)
    for b in budgets:
      spms[b] = train_sid_spm(codes, weights, vocab_size=b, codebook_size=K, item_ids=item_features.item_ids)
      pieces_b = spms[b].segment_padded(codes)
      cold_unseen[b] = unseen_piece_share(pieces_b, weights > 0, cold_rows)
      cold_support[b] = piece_support(pieces_b, weights, cold_rows)

  from semrec.sid import budget as sb
  plan = []
  for hist in use_history:
    for mode in modes:
      run_budgets = budgets[:1] if _budget_independent(mode, L, K, budgets) else budgets
      for b in run_budgets:
        for seed in seeds:
          plan.append((bool(hist), mode, b, int(seed)))
  rows = []
  for hist, mode, b, seed in tqdm(plan, desc="ranking experiment", disable=not progress):
    rep_cfg = _rep_config(mode, b, L, K, embedding_dim, D)
    cfg = dataclasses.replace(base, item_representation=rep_cfg, use_history=hist, seed=seed)
    spm = spms.get(b)
    layer = build_item_representation(rep_cfg, data, spm=spm)
    run = train_sequential(cfg, item_representation=layer, data=data, progress=False)
    n_rows = sum(sb.table_rows(m, L, K, b, b) for m in rep_cfg.modes)
    uses_spm = "spm" in rep_cfg.modes
    # sentencepiece may stop below the budget: record the vocabulary it actually learned.
    spm_vocab = spm.vocab_size if uses_spm else np.nan
    pieces = float(np.mean(sb.pieces_per_item(spm.segment_padded(codes)))) if uses_spm else np.nan
    unseen = cold_unseen[b] if uses_spm else np.nan
    support = cold_support[b] if uses_spm else np.nan
    same_for = budgets if _budget_independent(mode, L, K, budgets) else (b,)
    for task, m in run.metrics.items():
      for rb in same_for:
        rows.append({"use_history": hist, "mode": mode, "budget": rb, "rows": int(n_rows), "seed": seed,
                     "task": task, "auc": m["auc"], "cold_auc": m["cold_auc"], "warm_auc": m["warm_auc"],
                     "n_eval": m["n"], "n_cold": m["n_cold"], "spm_vocab": spm_vocab, "spm_pieces_per_item": pieces,
                     "spm_cold_unseen_piece_share": unseen, "spm_cold_piece_support": support,
                     "train_seconds": run.train_seconds, "examples_per_second": run.examples_per_second})
  runs = pd.DataFrame(rows)
  summary = summarise(runs)
  result = ExperimentResult(runs=runs, summary=summary, split=data.split.summary(),
                            seconds=time.perf_counter() - start, files={})
  if output_dir:
    result.files = write_outputs(result, output_dir)
  return result


def unseen_piece_share(pieces: np.ndarray, trained: np.ndarray, rows: np.ndarray) -> float:
  """Share of the pieces of items ``rows`` that no trained item uses (their embeddings never get a
  gradient, so they stay at their random initialisation).

  Args:
    pieces: [N, L] piece ids per item, -1 padded (``SidSpm.segment_padded``).
    trained: [N] bool, items with training impressions.
    rows: Item rows to measure (e.g. the cold items).
  """
  used = np.unique(pieces[trained][pieces[trained] >= 0])
  p = pieces[rows]
  p = p[p >= 0]
  return float(np.mean(~np.isin(p, used))) if p.size else float("nan")


def piece_support(pieces: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> float:
  """Median, over the pieces of items ``rows``, of the training impressions that reach each piece
  (sum of ``weights`` of every item whose segmentation contains it): how well trained the
  embeddings a (cold) item falls back to are.

  Args:
    pieces: [N, L] piece ids per item, -1 padded.
    weights: [N] training impressions per item.
    rows: Item rows to measure.
  """
  valid = pieces >= 0
  n = int(pieces.max()) + 1 if valid.any() else 0
  support = np.zeros(n, np.float64)
  np.add.at(support, pieces[valid], np.broadcast_to(np.asarray(weights, np.float64)[:, None], pieces.shape)[valid])
  p = pieces[rows]
  p = p[p >= 0]
  return float(np.median(support[p])) if p.size else float("nan")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
  """Mean/std over seeds, and the seed-paired difference to random_hash at the same budget."""
  keys = ["use_history", "mode", "budget", "task"]
  df = runs.copy()
  ref = df[df["mode"] == "random_hash"].set_index(["use_history", "budget", "task", "seed"])
  if len(ref):
    idx = pd.MultiIndex.from_frame(df[["use_history", "budget", "task", "seed"]])
    df["d_auc_vs_hash"] = df["auc"].to_numpy() - ref["auc"].reindex(idx).to_numpy()
    df["d_cold_auc_vs_hash"] = df["cold_auc"].to_numpy() - ref["cold_auc"].reindex(idx).to_numpy()
  else:
    df["d_auc_vs_hash"] = np.nan
    df["d_cold_auc_vs_hash"] = np.nan
  agg = df.groupby(keys, sort=False).agg(
      rows=("rows", "first"), seeds=("seed", "nunique"),
      auc=("auc", "mean"), auc_std=("auc", "std"), cold_auc=("cold_auc", "mean"), cold_auc_std=("cold_auc", "std"),
      d_auc_vs_hash=("d_auc_vs_hash", "mean"), d_auc_vs_hash_std=("d_auc_vs_hash", "std"),
      d_cold_auc_vs_hash=("d_cold_auc_vs_hash", "mean"), d_cold_auc_vs_hash_std=("d_cold_auc_vs_hash", "std"),
      spm_vocab=("spm_vocab", "first"), spm_pieces_per_item=("spm_pieces_per_item", "first"),
      spm_cold_unseen_piece_share=("spm_cold_unseen_piece_share", "first"),
      spm_cold_piece_support=("spm_cold_piece_support", "first"))
  agg = agg.reset_index()
  mode_order = {m: i for i, m in enumerate(dict.fromkeys(runs["mode"]))}
  agg["_m"] = agg["mode"].map(mode_order)
  agg["_h"] = ~agg["use_history"].astype(bool)
  return agg.sort_values(["task", "_h", "_m", "budget"], kind="stable").drop(columns=["_m", "_h"]).reset_index(drop=True)


def _pm(mean, std, digits=4) -> str:
  if mean is None or not np.isfinite(mean):
    return "-"
  if std is None or not np.isfinite(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_summary(summary: pd.DataFrame, task: Optional[str] = None) -> str:
  """A Markdown table of the summary (one task, default: every task)."""
  df = summary if task is None else summary[summary["task"] == task]
  lines = ["| history | mode | budget | rows | task | AUC | cold AUC | ΔAUC vs hash | Δcold AUC vs hash | seeds |",
           "| --- | --- | ---: | ---: | --- | --- | --- | --- | --- | ---: |"]
  for r in df.itertuples(index=False):
    lines.append(f"| {'yes' if r.use_history else 'no'} | {r.mode} | {r.budget} | {r.rows} | {r.task} | "
                 f"{_pm(r.auc, r.auc_std)} | {_pm(r.cold_auc, r.cold_auc_std)} | "
                 f"{_pm(r.d_auc_vs_hash, r.d_auc_vs_hash_std)} | {_pm(r.d_cold_auc_vs_hash, r.d_cold_auc_vs_hash_std)} | "
                 f"{r.seeds} |")
  return "\n".join(lines)


def plot_experiment(runs: pd.DataFrame, path: str, task: Optional[str] = None) -> str:
  """PNG like the paper's Figures 2/3: % AUC and cold-AUC change vs random hashing at the smallest
  budget, against table budget, one panel row per history setting; error bars = std over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  task = task or runs["task"].iloc[0]
  df = runs[runs["task"] == task]
  hist_settings = sorted(df["use_history"].unique(), reverse=True)
  fig, axes = plt.subplots(len(hist_settings), 2, figsize=(11, 4 * len(hist_settings)), squeeze=False)
  b0 = df["budget"].min()
  for i, hist in enumerate(hist_settings):
    sub = df[df["use_history"] == hist]
    ref = sub[(sub["mode"] == "random_hash") & (sub["budget"] == b0)].set_index("seed")
    for j, metric in enumerate(("auc", "cold_auc")):
      ax = axes[i, j]
      for mode in dict.fromkeys(sub["mode"]):
        m = sub[sub["mode"] == mode]
        xs, ys, es = [], [], []
        for b, g in m.groupby("budget"):
          g = g.set_index("seed")
          if len(ref):
            rel = 100.0 * (g[metric] / ref[metric].reindex(g.index) - 1.0)
          else:
            rel = g[metric]
          xs.append(b)
          ys.append(float(np.nanmean(rel)))
          es.append(float(np.nanstd(rel)) if len(rel) > 1 else 0.0)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=mode)
      ax.set_xscale("log", base=2)
      ax.axhline(0.0, color="grey", lw=0.8, ls="--")
      name = "AUC" if metric == "auc" else "cold-item AUC (CTR/1D)"
      ax.set_title(f"{task}: {name}, history={'yes' if hist else 'no'}")
      ax.set_xlabel("embedding table budget (rows)")
      ax.set_ylabel(f"% change vs random_hash @ {b0}" if len(ref) else name)
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  tmp = f"{path}.tmp{os.getpid()}.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _write_text(path: str, text: str):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_outputs(result: ExperimentResult, output_dir: str) -> dict:
  """Writes the runs (CSV), the summary (Markdown, JSON) and the PNG atomically into ``output_dir``."""
  os.makedirs(output_dir, exist_ok=True)
  files = {
      "runs_csv": os.path.join(output_dir, "ranking_experiment_runs.csv"),
      "summary_md": os.path.join(output_dir, "ranking_experiment.md"),
      "summary_json": os.path.join(output_dir, "ranking_experiment.json"),
      "png": os.path.join(output_dir, "ranking_experiment.png"),
  }
  _write_text(files["runs_csv"], result.runs.to_csv(index=False))
  _write_text(files["summary_md"], result.markdown() + "\n")
  payload = {"split": result.split, "seconds": result.seconds,
             "summary": json.loads(result.summary.to_json(orient="records")),
             "runs": json.loads(result.runs.to_json(orient="records"))}
  _write_text(files["summary_json"], json.dumps(payload, indent=1))
  plot_experiment(result.runs, files["png"])
  return files
