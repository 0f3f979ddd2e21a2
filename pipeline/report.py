"""The run report: headline rows, ``metrics.json``, ``report.md`` and the pipeline's own plots.

Generic table/markdown helpers live in :mod:`semrec.report` (usable by every layer); this module knows
the stages' result dicts.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.atomic import save_figure
from semrec.atomic import write_json as atomic_write_json
from semrec.report import Report, console_table, markdown_table

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def _num(v, spec: str = ".4f") -> str:
  """A figure for the console table; "n/a" for an undefined one (None / NaN, e.g. no cold items)."""
  return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def relation_chain(values, spec: str = ".3f") -> str:
  """Values joined by the relation that holds between neighbours as printed ("0.434 < 0.467 > 0.393");
  None entries (e.g. no pair shares that prefix) are left out, an undefined neighbour gets a ","."""
  shown = [_num(v, spec) for v in values if v is not None]
  out = shown[:1]
  for a, b in zip(shown, shown[1:]):
    if "n/a" in (a, b):
      rel = ","
    else:
      rel = "<" if float(a) < float(b) else (">" if float(a) > float(b) else "=")
    out += [rel, b]
  return " ".join(out)


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
                 "value": " / ".join(_num(u, ".1%") for u in sid["utilisation"])})
    rows.append({"stage": "sid", "metric": "unique-SID ratio (before suffix)", "value": _num(sid["unique_ratio"])})
    rows.append({"stage": "sid", "metric": "mean cosine by shared prefix 0..L",
                 "value": relation_chain(sid["prefix_cosine"])})
  ret = results.get("retrieval") or {}
  for r in ret.get("headline", []):
    rows.append({"stage": "retrieval", "metric": f"{r['variant']} ({r['quality']}) recall@100 all / warm / cold",
                 "value": f"{_num(r['all'])} / {_num(r['warm'])} / {_num(r['cold'])}"})
  idx = results.get("index") or {}
  if idx:
    rows.append({"stage": "index", "metric": f"served index ({idx.get('kind')}) recall@10 vs brute force",
                 "value": _num(idx.get("recall_at_10"))})
    if idx.get("scann_recall_at_10") is not None:
      rows.append({"stage": "index", "metric": "ScaNN searcher recall@10 vs brute force",
                   "value": _num(idx["scann_recall_at_10"])})
  rk = results.get("ranking") or {}
  head = rk.get("headline") or {}
  for name, m in (("final list (" + rk.get("production", {}).get("mode", "?") + ")", head.get("final")),
                  ("best single retriever: " + str(rk.get("best_retriever")), head.get("best")),
                  ("content kNN baseline", head.get("content_knn")), ("transition baseline", head.get("transition"))):
    if m:
      rows.append({"stage": "ranking", "metric": f"{name} R@10 / NDCG@10 / R@100 / cold R@100",
                   "value": " / ".join(_num(m.get(s, {}).get(k)) for s, k in (
                       ("overall", "recall@10"), ("overall", "ndcg@10"), ("overall", "recall@100"),
                       ("cold", "recall@100")))})
  if rk.get("candidate_recall"):
    rows.append({"stage": "ranking", "metric": "merged candidate recall (the ranker's ceiling)",
                 "value": _num(rk["candidate_recall"]["merged"].get("overall"))})
  ver = results.get("verify") or {}
  if ver:
    rows.append({"stage": "verify", "metric": "exports loaded + answered in a fresh process",
                 "value": f"{sum(m['ok'] for m in ver['models'])}/{len(ver['models'])}"})
  return rows


def write_report(run: Run, results: dict) -> str:
  """Writes ``metrics.json`` and ``report.md`` (tables + PNG plots) and returns the console table."""
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
    rep.section("Two-stage: the final list vs every retriever alone and the baselines (test)",
                text("ranking", "two_stage.md"), img("final_list.png", "final list vs retrievers vs baselines"))
  if "ranking-sweep" in results:
    rep.section("Ranking: representation sweep (AUC / cold AUC)", text("ranking-sweep", "ranking_experiment.md"),
                img("ranking_auc_by_mode.png", "AUC by mode"))
  if "verify" in results:
    rep.section("Exports (TF Serving layout), verified in a fresh process", text("export", "verify.md"))
  rep.write(run.path("report.md"))
  return console_table(rows)


def plot_prefix_similarity(health: dict, path: str, title: str):
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
  save_figure(fig, path)


def comparison_markdown(table, ks=(10, 50, 100)) -> str:
  """One row per (variant, quality): recall@K overall, recall@100 warm / cold, NDCG@10."""
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
