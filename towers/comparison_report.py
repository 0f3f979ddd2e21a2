"""Tables, markdown and plot of a retriever comparison (``semrec.towers.run_retrieval_comparison`` output)."""
from __future__ import annotations

import os

import pandas as pd


def _rows(name: str, kind: str, result: dict, quality: str = "none") -> list:
  out = []
  for stage in ("valid", "test"):
    for s, m in (result.get(stage) or {}).items():
      out.append({"variant": name, "kind": kind, "quality": quality, "stage": stage, "slice": s, **m})
  return out


def comparison_table(results: dict, baselines: dict) -> pd.DataFrame:
  """Long table: one row per (variant or baseline, quality, stage, slice) with every metric."""
  rows = []
  for name, res in baselines.items():
    rows += _rows(name, "baseline", res)
  for name, res in results.items():
    rows += _rows(name, "learned", res)
    if "tuned" in res:
      rows += _rows(name, "learned", res["tuned"], "tuned")
  return pd.DataFrame(rows)


def write_outputs(out: dict, output_dir: str):
  from semrec.atomic import write_json, write_text
  os.makedirs(output_dir, exist_ok=True)
  write_text(os.path.join(output_dir, "retrieval_comparison.csv"), out["table"].to_csv(index=False))
  write_json(os.path.join(output_dir, "retrieval_comparison.json"),
             {**{k: v for k, v in out.items() if k != "table"}, "table": out["table"].to_dict("records")})


def comparison_markdown(table: pd.DataFrame, stage: str = "test", ks=(10, 100)) -> str:
  """Markdown table (baselines first) of Recall@k overall / warm / cold on ``stage``; a variant with a tuned
  Etsy quality vector gets a second row, ``<variant> + quality``."""
  sub = table[table["stage"] == stage]
  cols = [f"recall@{k}" for k in ks]
  lines = ["| model | kind | " + " | ".join(f"{c} {s}" for c in cols for s in ("all", "warm", "cold")) + " |",
           "|---|---|" + "---|" * (3 * len(cols))]
  for (name, quality), rows in sub.groupby(["variant", "quality"], sort=False):
    cell = lambda c, s: (f"{rows[rows['slice'] == s][c].iloc[0]:.4f}"  # noqa: E731
                         if (rows["slice"] == s).any() else "-")
    vals = " | ".join(cell(c, s) for c in cols for s in ("overall", "warm", "cold"))
    label = name if quality == "none" else f"{name} + quality"
    lines.append(f"| {label} | {rows['kind'].iloc[0]} | {vals} |")
  return "\n".join(lines)


def plot_comparison(table: pd.DataFrame, path: str, stage: str = "test", k: int = 100) -> str:
  """Bar chart of Recall@k overall / warm / cold per model (baselines first) on ``stage``; PNG at ``path``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  sub = table[(table["stage"] == stage) & (table["quality"] == "none")]
  names = list(dict.fromkeys(sub["variant"]))
  fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
  x = np.arange(len(names))
  for j, s in enumerate(("overall", "warm", "cold")):
    vals = [float(sub[(sub["variant"] == n) & (sub["slice"] == s)][f"recall@{k}"].sum()) for n in names]
    ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=s)
  ax.set_xticks(x)
  ax.set_xticklabels(names, rotation=30, ha="right")
  ax.set_ylabel(f"Recall@{k} ({stage})")
  ax.legend()
  fig.tight_layout()
  from semrec.atomic import save_figure
  save_figure(fig, path)
  return path


__all__ = ["comparison_markdown", "comparison_table", "plot_comparison", "write_outputs"]
