"""Tables and plots of the ranking representation sweep (``run_ranking_experiment``'s results).

``summarise`` turns the per-run rows into mean / std over seeds with the seed-paired difference to random
hashing; ``format_summary`` / ``format_budget_table`` render Markdown, ``plot_experiment`` the PNG, and
``write_outputs`` writes all of them atomically.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import pandas as pd

from semrec.atomic import save_figure, write_text

# Per (mode, budget) columns copied into the summary (see ``semrec.ranking.piece_stats``).
STAT_COLUMNS = ("spm_vocab", "rows_used", "lookups_per_item", "new_unseen_share", "new_piece_support",
                "items_per_row")


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
      **{c: (c, "first") for c in STAT_COLUMNS if c in df.columns})
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


def plot_experiment(runs: pd.DataFrame, path: str, task: Optional[str] = None, title: str = "") -> str:
  """PNG of AUC and new-item (CTR/1D) AUC against table budget, one line per mode, one panel row per
  history setting; points are the mean over seeds, error bars the std over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  task = task or runs["task"].iloc[0]
  df = runs[runs["task"] == task]
  hist_settings = sorted(df["use_history"].unique(), reverse=True)
  fig, axes = plt.subplots(len(hist_settings), 2, figsize=(11, 4 * len(hist_settings)), squeeze=False)
  for i, hist in enumerate(hist_settings):
    sub = df[df["use_history"] == hist]
    for j, metric in enumerate(("auc", "cold_auc")):
      ax = axes[i, j]
      for mode in dict.fromkeys(sub["mode"]):
        g = sub[sub["mode"] == mode].groupby("budget")[metric]
        mean, std = g.mean(), g.std().fillna(0.0)
        ax.errorbar(mean.index, mean.values, yerr=std.values, marker="o", capsize=3, label=mode)
      ax.set_xscale("log", base=2)
      name = "AUC" if metric == "auc" else "new-item AUC (CTR/1D)"
      ax.set_title(f"{title + ': ' if title else ''}{task} {name}, history={'yes' if hist else 'no'}", fontsize=10)
      ax.set_xlabel("embedding table budget (rows)")
      ax.set_ylabel(f"{name} (mean ± std over seeds)")
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  return save_figure(fig, path, dpi=110)


def write_outputs(result, output_dir: str, title: str = "") -> dict:
  """Writes the runs (CSV), the summary (Markdown, JSON) and the PNG atomically into ``output_dir``.

  Args:
    result: An ``ExperimentResult`` (``runs``, ``summary``, ``split``, ``seconds``, ``markdown()``).
  """
  os.makedirs(output_dir, exist_ok=True)
  files = {
      "runs_csv": os.path.join(output_dir, "ranking_experiment_runs.csv"),
      "summary_md": os.path.join(output_dir, "ranking_experiment.md"),
      "summary_json": os.path.join(output_dir, "ranking_experiment.json"),
      "png": os.path.join(output_dir, "ranking_experiment.png"),
  }
  write_text(files["runs_csv"], result.runs.to_csv(index=False))
  write_text(files["summary_md"], result.markdown() + "\n")
  payload = {"split": result.split, "seconds": result.seconds,
             "summary": json.loads(result.summary.to_json(orient="records")),
             "runs": json.loads(result.runs.to_json(orient="records"))}
  write_text(files["summary_json"], json.dumps(payload, indent=1))
  plot_experiment(result.runs, files["png"], title=title)
  return files


def format_budget_table(summary: pd.DataFrame, task: str = "label") -> str:
  """A compact Markdown table: one row per (history, mode), per budget "AUC / new-item AUC" as mean ±
  std over seeds, then the new-item lookup statistics at the largest budget."""
  df = summary[summary["task"] == task]
  budgets = sorted(df["budget"].unique())
  head = " | ".join(f"{b}: AUC | {b}: new-item AUC" for b in budgets)
  lines = [f"| history | mode | {head} | seeds | new-item unseen share @{budgets[-1]} | items/row @{budgets[-1]} |",
           "| --- | --- | " + " | ".join(["---"] * (2 * len(budgets))) + " | ---: | ---: | ---: |"]
  for (hist, mode), g in df.groupby(["use_history", "mode"], sort=False):
    g = g.set_index("budget")
    cells = []
    for b in budgets:
      r = g.loc[b] if b in g.index else None
      cells += [_pm(r["auc"], r["auc_std"]) if r is not None else "-",
                _pm(r["cold_auc"], r["cold_auc_std"]) if r is not None else "-"]
    last = g.loc[budgets[-1]] if budgets[-1] in g.index else None
    stat = lambda c: f"{last[c]:.3g}" if last is not None and c in last and np.isfinite(last[c]) else "-"  # noqa: E731
    lines.append(f"| {'yes' if hist else 'no'} | {mode} | " + " | ".join(cells) +
                 f" | {int(g['seeds'].max())} | {stat('new_unseen_share')} | {stat('items_per_row')} |")
  return "\n".join(lines)


__all__ = ["STAT_COLUMNS", "format_budget_table", "format_summary", "plot_experiment", "summarise", "write_outputs"]
