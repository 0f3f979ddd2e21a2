"""Generative retrieval benchmark (issue 28): the SID decoder vs the baselines of the same run, per dataset/split.

  python -m semrec.benchmarks.bench_generative --runs scientific:leave_one_out --seeds 0
  python -m semrec.benchmarks.bench_generative                  # every run below, 3 seeds (slow on 2 cores)

Datasets: the development sets ``scientific`` and ``microlens`` (../shared/data/dev-benchmarks; a run is skipped
with a message when its folder is absent). Content and SIDs as ``bench_retrieval`` / the retrieval comparison
get them: MiniLM text embeddings (``bench_baselines.content_embeddings``, cached in ~/.cache/semrec) quantised by
``semrec.sid.retrieval_inputs.fit_sid_artefacts`` (its defaults: RQ-KMeans, L = 3, K = 64, seeded by the run's
seed); the collision suffix is the generative model's fourth level.

* ``leave_one_out``: trained on ``split.train_sequences()`` (every prefix a target), early stopping on the
  validation queries' teacher-forced loss; test queries decoded with beam ``--beam-width`` and top ``--eval-k``,
  the user's earlier items excluded in the beam's last step (as the protocol excludes them).
* ``cold_items``: trained on the train part with a SID table of the train items only; the held-out items' SIDs
  are then added to the trie (``GenerativeModel.with_sid_table``, no retraining) and the test queries are
  decoded over the protocol's candidates (the held-out test items). The validation targets are held-out items
  the model cannot know, so training runs for the epoch count the same seed's leave_one_out run chose
  (``--cold-epochs`` otherwise).
* Baselines (popularity, transition, content kNN with its decay chosen on validation) on the same split, same
  metrics. Metrics: Recall@5/10/20, NDCG@5/10 (``--eval-k`` = 20 decoded items at beam 20: Recall@50/100 are
  not reported).
* For seed 0 of a leave_one_out run: the retriever exported (beam 20 / k 10) and the offline next-item table
  (``--table-items`` head items, k = 10), both checked by ``verify_export`` in a fresh process; p50 / p99
  latency of ``serving_default`` for one user (``--latency-requests`` calls of the reloaded SavedModel after
  warm-up); the table's interaction coverage and its own Recall@10 on the test queries (last history item
  looked up; a miss ranks nothing).

Writes benchmarks/results/bench_generative.json in bench_retrieval.json's shape: runs -> "<dataset>:<split>" ->
mean_std -> model -> slice -> metric -> [mean, std], with per_seed details (training seconds per epoch, best
epoch, decode seconds); seeds run in separate processes merge into the file (same seed: replaced).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.benchmarks.bench_baselines import content_embeddings, default_dev_dir
from semrec.benchmarks.bench_retrieval import CACHE, RESULTS, aggregate, load_dataset
import numpy as np
import pandas as pd

RUNS = ("scientific:leave_one_out", "microlens:leave_one_out", "scientific:cold_items", "microlens:cold_items")
KS, NDCG_KS = (5, 10, 20), (5, 10)


def sid_table(ds, emb, seed: int):
  """The catalogue's ``SidTable`` (codes fitted as the benchmarks fit the SID stage's: ``fit_sid_artefacts``
  defaults) with the collision suffix, and the seconds it took."""
  from semrec.sid import SidTable
  from semrec.sid.retrieval_inputs import fit_sid_artefacts
  t0 = time.time()
  ids = ds.item_ids.astype(object)
  art = fit_sid_artefacts(emb, ids, {"sid_codes"}, seed=seed)
  return SidTable(ids, art["sid_codes"], art["sid_codebook_size"]).with_suffix(), time.time() - t0


def _subset_table(table, keep):
  from semrec.sid import SidTable
  rows = table.index_of(keep)
  return SidTable(table.item_ids[rows], table.codes[rows], table.codebook_size, suffix=table.suffix[rows])


def table_scores(table, queries, item_ids) -> np.ndarray:
  """[Q, N] scores of the offline table used as a retriever: the last history item's row (a miss: nothing)."""
  from semrec.generative import NO_ITEM_SCORE
  col = pd.Index(np.asarray(item_ids, dtype=object))
  row_of = {i: r for r, i in enumerate(table.item_ids)}
  out = np.full((len(queries), len(col)), NO_ITEM_SCORE, np.float64)
  for q, last in enumerate(queries.last_items()):
    r = row_of.get(last)
    if r is None:
      continue
    c = col.get_indexer(table.next_ids[r])
    ok = c >= 0
    out[q, c[ok]] = table.scores[r][ok]
  return out


def latency(export_path: str, histories: np.ndarray, n: int) -> dict:
  """p50 / p99 milliseconds of one-user ``serving_default`` calls of the reloaded SavedModel."""
  import tensorflow as tf
  fn = tf.saved_model.load(export_path).signatures["serving_default"]
  for i in range(5):
    fn(history_item_id=tf.constant(histories[i % len(histories)][None].astype(str)))
  ms = []
  for i in range(n):
    x = tf.constant(histories[i % len(histories)][None].astype(str))
    t0 = time.perf_counter()
    fn(history_item_id=x)["item_ids"].numpy()
    ms.append((time.perf_counter() - t0) * 1000)
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "requests": n}


def run_one(name: str, kind: str, seed: int, args, loo_best_epoch=None) -> dict:
  from semrec.data import make_split
  from semrec.generative import GenerativeConfig, pad_left, train_generative
  from semrec.towers.baselines import evaluate_baselines, select_knn_decay
  from semrec.towers.evaluation import evaluate_scores
  ds = load_dataset(name)
  ids, emb = ds.item_ids.astype(object), content_embeddings(ds, CACHE)
  split = make_split(ds, kind, seed=seed)
  ev = {"ks": KS, "ndcg_ks": NDCG_KS}
  t0 = time.time()
  decay, _ = select_knn_decay(split, ids, emb)
  models = {n: m for n, m in evaluate_baselines(split, ids, emb, stage="test", knn_decay=decay, **ev).items()}
  baseline_seconds = time.time() - t0
  table, sid_seconds = sid_table(ds, emb, seed)
  cfg = GenerativeConfig(seed=seed, **({"epochs": args.epochs} if args.epochs else {}))
  valid = split.queries("valid")
  out = {"split": split.summary(), "knn_decay": decay, "baseline_seconds": baseline_seconds,
         "sid_seconds": sid_seconds, "sid_unique_ratio": table.unique_ratio(),
         "max_suffix": int(table.suffix.max()), "config": dataclasses.asdict(cfg)}
  t0 = time.time()
  if kind == "cold_items":
    train_table = _subset_table(table, split.train_items[pd.Index(table.item_ids).get_indexer(split.train_items) >= 0])
    cfg = dataclasses.replace(cfg, epochs=int(loo_best_epoch or args.cold_epochs))
    out["config"]["epochs"] = cfg.epochs
    model = train_generative(split.train_sequences(), train_table, cfg, verbose=2)
    t1 = time.time()
    model = model.with_sid_table(table)  # held-out items become generable, no retraining
    out["trie_rebuild_seconds"] = time.time() - t1
    out["trie_items"] = {"trained": int(len(train_table)), "after_rebuild": int(len(table))}
  else:
    model = train_generative(split.train_sequences(), table, cfg, valid_histories=valid.histories,
                             valid_targets=[t[0] for t in valid.targets], verbose=2)
  out["train_seconds"] = time.time() - t0
  out["training"] = model.training
  test = split.queries("test")
  t0 = time.time()
  models["generative"] = model.evaluate(test, ids, k=args.eval_k, beam_width=args.beam_width, **ev)
  out["decode_seconds"] = time.time() - t0
  out["decode"] = {"beam_width": args.beam_width, "k": args.eval_k, "queries": len(test)}
  if kind == "leave_one_out" and seed == args.export_seed:
    out.update(export_checks(model, split, test, ids, args, models, ev))
  out["models"] = {n: m for n, m in models.items()}
  return out


def export_checks(model, split, test, ids, args, models, ev) -> dict:
  """Export + fresh-process verification + latency + the offline table (one seed)."""
  from semrec.export import export_generative_retriever, export_next_item_table, verify_export
  from semrec.generative import build_next_item_table, pad_left
  from semrec.towers.evaluation import evaluate_scores
  out = {}
  base = tempfile.mkdtemp(prefix="bench_generative_")
  hist = pad_left(test.histories[:64], model.config.max_history)
  res = export_generative_retriever(base, model, hist[:8], beam_width=20, top_k=10)
  t0 = time.time()
  table = build_next_item_table(model, split.train_positives["item_id"], num_items=args.table_items, k=10,
                                beam_width=20)
  out["table_build_seconds"] = time.time() - t0
  out["table_coverage"] = table.coverage
  export_next_item_table(base, table)
  t0 = time.time()
  rep = verify_export(base)
  out["verify_export"] = {m.name: {"ok": not m.errors, "errors": m.errors, "max_abs_diff": m.max_abs_diff}
                          for m in rep.models}
  out["verify_seconds"] = time.time() - t0
  out["serving_latency_beam20_k10"] = latency(res.path, hist, args.latency_requests)
  models["offline_table"] = evaluate_scores(lambda rows: table_scores(table, test.subset(rows), ids), test, ids, **ev)
  last = test.last_items()
  out["table_query_coverage"] = float(np.isin(last.astype(str), table.item_ids.astype(str)).mean())
  return out


def acceptance(name: str, kind: str, agg: dict) -> dict:
  r = lambda m, s="overall": agg.get(m, {}).get(s, {}).get("recall@10", [np.nan])[0]  # noqa: E731
  if kind == "leave_one_out":
    ratio = r("generative") / r("transition")
    return {"generative_r10_over_transition": ratio, "target": ">= 1.0 (aim 1.2)", "met": bool(ratio >= 1.0)}
  return {"generative_cold_r10": r("generative", "cold"), "content_knn_cold_r10": r("content_knn", "cold"),
          "generative_over_content_knn": r("generative", "cold") / r("content_knn", "cold")}


def main():
  from semrec.atomic import write_json
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", default=list(RUNS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--epochs", type=int, default=0, help="max epochs (default GenerativeConfig's)")
  parser.add_argument("--cold-epochs", type=int, default=10)
  parser.add_argument("--beam-width", type=int, default=20)
  parser.add_argument("--eval-k", type=int, default=20)
  parser.add_argument("--table-items", type=int, default=1000)
  parser.add_argument("--latency-requests", type=int, default=100)
  parser.add_argument("--export-seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join(RESULTS, "bench_generative.json"))
  args = parser.parse_args()
  report = {"runs": {}}
  if os.path.exists(args.out):
    with open(args.out) as f:
      report = json.load(f)
  cmds = report.get("command", [])
  cmds = cmds if isinstance(cmds, list) else [cmds]
  report["command"] = cmds + ["python -m semrec.benchmarks.bench_generative --runs " + " ".join(args.runs) +
                              " --seeds " + " ".join(map(str, args.seeds))]
  for run in args.runs:
    name, kind = run.split(":")
    if not os.path.isdir(os.path.join(default_dev_dir(), name)):
      print(f"skip {run}: {default_dev_dir() or 'the dev-benchmarks folder'}/{name} not found")
      continue
    entry = report["runs"].setdefault(run, {"seeds": [], "per_seed": []})
    for seed in args.seeds:
      print(f"== {run} seed {seed}", flush=True)
      loo = report["runs"].get(f"{name}:leave_one_out", {}).get("per_seed", [])
      best = next((p["training"]["best_epoch"] for p in loo if p["seed"] == seed), None)
      t0 = time.time()
      res = {"seed": seed, **run_one(name, kind, seed, args, loo_best_epoch=best), "seconds": time.time() - t0}
      keep = [p for p in entry["per_seed"] if p["seed"] != seed]
      entry["per_seed"] = sorted(keep + [res], key=lambda p: p["seed"])
      entry["seeds"] = [p["seed"] for p in entry["per_seed"]]
      entry["mean_std"] = aggregate(entry["per_seed"])
      entry["acceptance"] = acceptance(name, kind, entry["mean_std"])
      write_json(args.out, report)
      print(_table(run, entry["mean_std"]), "\n", entry["acceptance"], flush=True)


def _table(run: str, agg: dict) -> str:
  lines = [f"{run}: test, mean ± std over seeds", "| model | R@10 | R@20 | NDCG@10 |", "|---|---|---|---|"]
  for n, m in agg.items():
    cell = lambda k: "{:.4f} ± {:.4f}".format(*m["overall"][k]) if k in m.get("overall", {}) else "-"  # noqa: E731
    lines.append(f"| {n} | {cell('recall@10')} | {cell('recall@20')} | {cell('ndcg@10')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
