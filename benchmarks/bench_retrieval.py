"""Retrieval acceptance benchmark (issue 17): learned variants vs the baselines, per dataset and split, over seeds.

  python -m semrec.benchmarks.bench_retrieval                                   # every target, 3 seeds
  python -m semrec.benchmarks.bench_retrieval --runs scientific:leave_one_out --seeds 0

Datasets: ``scientific`` and ``microlens`` (the development sets in ../shared/data/dev-benchmarks, read in place,
implicit feedback: every row a positive; skipped with a message when absent) and the bundled ``movielens``.
Content: all-MiniLM-L6-v2 text embeddings (``semrec.encoders.TextEncoder``), cached outside the repository in
``~/.cache/semrec/<dataset>_minilm.npz`` (computed on first use). Every run uses the library defaults
(``ComparisonConfig()``: same settings on every dataset), ``semrec.data.make_split`` and the baselines of the
same run; per-variant checkpoints go to ``~/.cache/semrec/bench_retrieval`` (an interrupted run resumes).

Writes benchmarks/results/bench_retrieval.json: per run (dataset:split), each model's test metrics per seed and
mean / std over seeds, the served (validation-selected) variant per seed, and the acceptance checks.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Optional

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.benchmarks.bench_baselines import content_embeddings, default_dev_dir, load_dev_set
import numpy as np
import pandas as pd

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CACHE = os.path.expanduser("~/.cache/semrec")
RUNS = ("scientific:leave_one_out", "microlens:leave_one_out", "movielens:leave_one_out", "scientific:cold_items",
        "microlens:cold_items", "movielens:cold_items", "movielens:temporal")
REFERENCE_TRANSITION_R10 = {"scientific": 0.0823, "microlens": 0.0712}


def load_dataset(name: str):
  """``RecDataset`` of a development set (``bench_baselines.load_dev_set``) or the bundled MovieLens."""
  from semrec.data import load_movielens
  return load_movielens() if name == "movielens" else load_dev_set(default_dev_dir(), name)


def run_one(name: str, kind: str, seed: int, variants, verbose: bool = True, work_dir: Optional[str] = None) -> dict:
  """One comparison (library defaults, ``seed``) on ``name``/``kind``; returns test metrics per model.
  Per-variant checkpoints go to ``work_dir`` (default ``~/.cache/semrec/bench_retrieval``)."""
  from semrec.data import make_split
  from semrec.towers import ComparisonConfig, run_retrieval_comparison
  ds = load_dataset(name)
  ids, emb = ds.item_ids.astype(object), content_embeddings(ds, CACHE)
  split = make_split(ds, kind, seed=seed)
  cfg = ComparisonConfig(seed=seed, **({"variants": tuple(variants)} if variants else {}),
                         quality_modes=("none", "tuned") if kind == "temporal" else ("none",))
  out_dir = os.path.join(work_dir or os.path.join(CACHE, "bench_retrieval"), f"{name}_{kind}_s{seed}")
  res = run_retrieval_comparison(ds, split, ids, emb, cfg, output_dir=out_dir, verbose=verbose,
                                 **sid_stage(emb, ids, split, cfg))
  models = {n: m["test"] for n, m in res["baselines"].items()}
  for v, r in res["results"].items():
    models[v] = r["test"]
    if "tuned" in r:
      models[f"{v}+quality"] = r["tuned"]["test"]
  return {"models": models, "served": res["served"], "split": res["split"],
          "train_seconds": {v: r["train_seconds"] for v, r in res["results"].items()},
          "best_epoch": {v: r["best_epoch"] for v, r in res["results"].items()},
          "content_mix": {v: {k: r["content_mix"][k] for k in ("alpha", "pooling", "lexical_weight")
                              if k in r["content_mix"]}
                          for v, r in res["results"].items() if r.get("content_mix")},
          "seconds": res["seconds"]}


def sid_stage(content, item_ids, split, cfg) -> dict:
  """What the SID stage of ``semrec run`` would give the comparison (cluster ids, SIDs, the SID-piece SPM) for
  ``cfg``'s variants: k-means k = 256, RQ-KMeans L = 3, K = 64, SPM of ``cfg.spm_vocab_size`` pieces, seeded by
  ``cfg.seed`` (``semrec.sid.retrieval_inputs.fit_sid_artefacts``)."""
  from semrec.sid.retrieval_inputs import fit_sid_artefacts
  return fit_sid_artefacts(content, item_ids, cfg.sid_needs(), split.train["item_id"],
                           spm_vocab_size=cfg.spm_vocab_size, seed=cfg.seed)


def aggregate(per_seed: list) -> dict:
  """{model: {slice: {metric: [mean, std]}}} over seeds (models present in every seed)."""
  out = {}
  names = set.intersection(*(set(r["models"]) for r in per_seed))
  for n in sorted(names):
    out[n] = {}
    for s in per_seed[0]["models"][n]:
      keys = [k for k in per_seed[0]["models"][n][s] if k.startswith(("recall", "ndcg"))]
      out[n][s] = {k: [float(np.mean(v)), float(np.std(v))]
                   for k in keys if (v := [r["models"][n].get(s, {}).get(k, np.nan) for r in per_seed])}
  return out


def _m(agg, model, metric, s="overall"):
  return agg.get(model, {}).get(s, {}).get(metric, [np.nan])[0]


def acceptance(name: str, kind: str, agg: dict, per_seed: list) -> dict:
  """The issue's targets for this run (means over seeds; the served variant = the most frequent choice)."""
  learned = [n for n in agg if n not in ("popularity", "transition", "content_knn") and "+quality" not in n]
  served = pd.Series([r["served"]["variant"] for r in per_seed]).mode().iloc[0]
  best = max(learned, key=lambda n: _m(agg, n, "recall@10"))
  out = {"served": served, "best_learned": best}
  if kind == "leave_one_out":
    ratio = _m(agg, best, "recall@10") / _m(agg, "transition", "recall@10")
    out.update({"best_r10_over_transition": ratio, "served_r10_over_transition":
                _m(agg, served, "recall@10") / _m(agg, "transition", "recall@10"),
                "target": ">= 1.2 (dev sets); > 1 and > today's default sid_spm_hashed (movielens)",
                "met": bool(ratio >= (1.2 if name != "movielens" else 1.0))})
  elif kind == "cold_items":
    ratio = _m(agg, served, "recall@10", "cold") / _m(agg, "content_knn", "recall@10", "cold")
    out.update({"served_cold_r10_over_content_knn": ratio, "target": ">= 1.2", "met": bool(ratio >= 1.2)})
  else:
    best_all = max(_m(agg, n, "recall@100") for n in learned)
    cold, content_cold = _m(agg, served, "recall@100", "cold"), _m(agg, "content", "recall@100", "cold")
    tuned = _m(agg, f"{served}+quality", "recall@100", "cold")
    out.update({"served_cold_r100": cold, "content_cold_r100": content_cold,
                "served_overall_r100": _m(agg, served, "recall@100"), "best_overall_r100": best_all,
                "quality_cold_r100": tuned, "met": bool(cold >= content_cold and
                                                         _m(agg, served, "recall@100") >= best_all - 0.005 and
                                                         tuned >= 0.9 * cold)})
  return out


def main():
  from semrec.atomic import write_json
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", default=list(RUNS), help="dataset:split pairs")
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--variants", nargs="*", default=None, help="default: ComparisonConfig's")
  parser.add_argument("--out", default=os.path.join(RESULTS, "bench_retrieval.json"))
  parser.add_argument("--work-dir", default=None,
                      help="per-variant checkpoints (default ~/.cache/semrec/bench_retrieval; a rerun resumes from it)")
  parser.add_argument("--merge", nargs="*", default=None,
                      help="combine the per-seed results of these JSON files (e.g. one process per seed) into --out")
  args = parser.parse_args()
  if args.merge:
    write_json(args.out, merge_reports(args.merge))
    return
  command = "python -m semrec.benchmarks.bench_retrieval " + " ".join(
      [f"--runs {' '.join(args.runs)}", f"--seeds {' '.join(map(str, args.seeds))}"] +
      ([f"--variants {' '.join(args.variants)}"] if args.variants else []))
  run_report(command, args.runs, args.seeds, args.out, acceptance, _table,
             lambda name, kind, seed: run_one(name, kind, seed, args.variants, work_dir=args.work_dir))


def run_report(command: str, runs, seeds, out: str, accept, table, run_seed) -> dict:
  """Runs ``run_seed(name, kind, seed)`` for every "<dataset>:<split>" of ``runs`` and seed, and writes the
  report to ``out`` after each run (runs already in ``out`` are kept): per run the per-seed results, their mean /
  std (``aggregate``), ``accept(name, kind, agg, per_seed)`` and the seconds. A dev set that is absent is skipped
  with a message. Shared by the benchmarks that compare models on these runs (bench_retrieval, bench_cascade)."""
  from semrec.atomic import write_json
  report = {"command": command, "runs": {}}
  if os.path.exists(out):
    import json
    with open(out) as f:
      report["runs"] = json.load(f).get("runs", {})
  for run in runs:
    name, kind = run.split(":")
    if name != "movielens" and not os.path.isdir(os.path.join(default_dev_dir(), name)):
      print(f"skip {run}: {default_dev_dir() or 'the dev-benchmarks folder'}/{name} not found")
      continue
    per_seed, t0 = [], time.time()
    for seed in seeds:
      print(f"== {run} seed {seed}", flush=True)
      per_seed.append(run_seed(name, kind, seed))
    agg = aggregate(per_seed)
    report["runs"][run] = {"seeds": list(seeds), "mean_std": agg, "per_seed": per_seed,
                           "acceptance": accept(name, kind, agg, per_seed), "seconds": time.time() - t0}
    print(table(run, agg), "\n", report["runs"][run]["acceptance"], flush=True)
    write_json(out, report)
  return report


def merge_reports(paths, accept=None, table=None) -> dict:
  """One report from several (each from its own process): per-seed results concatenated per run, then the
  mean / std and ``accept(name, kind, agg, per_seed)`` (default this benchmark's acceptance) recomputed and
  printed with ``table(run, agg)``."""
  accept = accept or acceptance
  table = table or _table
  import json
  runs, commands = {}, []
  for p in paths:
    with open(p) as f:
      rep = json.load(f)
    cmd = rep["command"]
    commands += cmd if isinstance(cmd, list) else [cmd]  # a merged report lists its commands
    for run, r in rep["runs"].items():
      entry = runs.setdefault(run, {"seeds": [], "per_seed": [], "seconds": 0.0})
      entry["seeds"] += r["seeds"]
      entry["per_seed"] += r["per_seed"]
      entry["seconds"] += r["seconds"]
  for run, r in runs.items():
    name, kind = run.split(":")
    r["mean_std"] = aggregate(r["per_seed"])
    r["acceptance"] = accept(name, kind, r["mean_std"], r["per_seed"])
    print(table(run, r["mean_std"]), "\n", r["acceptance"])
  return {"command": commands, "runs": runs}


def _table(run: str, agg: dict) -> str:
  lines = [f"{run}: test, mean ± std over seeds", "| model | R@10 | R@100 | cold R@10 | cold R@100 |",
           "|---|---|---|---|---|"]
  for n, m in agg.items():
    cell = lambda s, k: ("{:.4f} ± {:.4f}".format(*m[s][k]) if s in m and k in m[s] else "-")  # noqa: E731
    lines.append(f"| {n} | {cell('overall', 'recall@10')} | {cell('overall', 'recall@100')} | "
                 f"{cell('cold', 'recall@10')} | {cell('cold', 'recall@100')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
