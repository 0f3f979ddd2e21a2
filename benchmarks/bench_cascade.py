"""Two-stage benchmark: candidate sources -> the SID ranker -> the final list, vs every retriever alone and the
baselines, on the same split in the same run (``semrec.ranking.run_two_stage``).

Retrievers come from ``bench_retrieval``'s comparison with the library defaults; their checkpoints are shared
with it (``~/.cache/semrec/bench_retrieval/<dataset>_<split>_s<seed>``), so a model already trained there is
resumed, not retrained. The ranker is the cascade default (``CascadeConfig``: SPM + hash pieces) and, for the
seed paper's comparison, the same ranker with random-hash item IDs only, trained on the same candidates.

Writes ``benchmarks/results/bench_cascade.json`` in bench_retrieval's shape: runs -> "<dataset>:<split>" ->
mean_std -> model -> slice -> metric -> [mean, std], plus per-seed candidate recall, the best single
retriever and the acceptance ratios (final NDCG@10 / best single retriever's, final R@10 - best's).

  python -m semrec.benchmarks.bench_cascade --runs movielens:temporal --seeds 0
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from semrec.benchmarks.bench_retrieval import CACHE, RESULTS, load_dataset, merge_reports, run_report, sid_stage
from semrec.benchmarks.bench_baselines import content_embeddings

RUNS = ("scientific:leave_one_out", "microlens:leave_one_out", "scientific:cold_items", "microlens:cold_items",
        "movielens:temporal", "movielens:leave_one_out", "movielens:cold_items")
HASH_MODE = "random_hash"


def run_one(name: str, kind: str, seed: int, variants=None, verbose: bool = True) -> dict:
  from semrec.data import make_split
  from semrec.ranking import CascadeConfig, run_two_stage
  from semrec.towers import ComparisonConfig, run_retrieval_comparison
  ds = load_dataset(name)
  ids, emb = ds.item_ids.astype(object), content_embeddings(ds, CACHE)
  split = make_split(ds, kind, seed=seed)
  if variants and not any("sid" in v for v in variants):
    variants = (*variants, "sid_spm_hashed")  # the SIDs of the ranker's item representation come with a SID variant
  cfg = ComparisonConfig(seed=seed, quality_modes=("none", "tuned") if kind == "temporal" else ("none",),
                         **({"variants": tuple(variants)} if variants else {}))
  out_dir = os.path.join(CACHE, "bench_retrieval", f"{name}_{kind}_s{seed}")
  t0 = time.time()
  res = run_retrieval_comparison(ds, split, ids, emb, cfg, output_dir=out_dir, verbose=verbose,
                                 **sid_stage(emb, ids, split, cfg))
  t1 = time.time()
  two = run_two_stage(split, res, cfg, out_dir, CascadeConfig(seed=seed), compare_modes=(HASH_MODE,),
                      progress=verbose)
  models = {n: m for n, m in two["baselines"].items()}
  models.update(two["retrievers"])
  for mode, m in two["final"].items():
    models[f"final[{mode}]"] = m
  best = two["best_retriever"]
  main = two["final"][two["config"]["mode"]]["overall"]
  b = two["retrievers"][best]["overall"]
  return {"models": models, "best_retriever": best, "served": res["served"]["variant"],
          "candidate_recall": two["candidate_recall"], "history": two["history"], "blend": two["blend"],
          "train_examples": two["train_examples"], "seconds": {"comparison": round(t1 - t0, 1), **two["seconds"]},
          "ratios": {"final_ndcg10_over_best": main["ndcg@10"] / max(b["ndcg@10"], 1e-12),
                     "final_r10_minus_best": main["recall@10"] - b["recall@10"]}}


def acceptance(kind: str, agg: dict, per_seed: list) -> dict:
  """The two-stage issue's targets on this run (means over seeds)."""
  m = lambda model, metric, s="overall": agg.get(model, {}).get(s, {}).get(metric, [np.nan])[0]  # noqa: E731
  main = next(k for k in agg if k.startswith("final[") and HASH_MODE not in k)
  learned = [k for k in agg if k not in ("popularity", "transition", "content_knn") and not k.startswith("final[")]
  best = max(learned, key=lambda v: m(v, "ndcg@10"))
  merged = np.mean([r["candidate_recall"]["merged"]["overall"] for r in per_seed])
  single = {s: np.mean([r["candidate_recall"][s]["overall"] for r in per_seed])
            for s in per_seed[0]["candidate_recall"] if s != "merged"}
  out = {"final": main, "best_single_retriever": best,
         "final_ndcg10_over_best": m(main, "ndcg@10") / m(best, "ndcg@10"),
         "final_r10": m(main, "recall@10"), "best_r10": m(best, "recall@10"),
         "merged_candidate_recall": merged, "best_single_source_recall": max(single.values()),
         "best_single_source": max(single, key=single.get)}
  out["met_ndcg"] = bool(out["final_ndcg10_over_best"] >= 1.05)
  out["met_recall"] = bool(out["final_r10"] >= out["best_r10"])
  out["met_candidates"] = bool(merged >= out["best_single_source_recall"])
  if kind == "temporal":
    out.update({"final_cold_r100": m(main, "recall@100", "cold"), "content_knn_cold_r100":
                m("content_knn", "recall@100", "cold"), "final_r100": m(main, "recall@100"),
                "best_r100": max(m(v, "recall@100") for v in learned)})
    out["met_temporal_cold"] = bool(out["final_cold_r100"] >= out["content_knn_cold_r100"] and
                                    out["final_r100"] >= out["best_r100"])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", nargs="+", default=list(RUNS), help="dataset:split pairs")
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--variants", nargs="*", default=None, help="retrievers trained and used as sources "
                      "(default: ComparisonConfig's; a SID variant is added if none is named: the ranker needs SIDs)")
  parser.add_argument("--out", default=os.path.join(RESULTS, "bench_cascade.json"))
  parser.add_argument("--merge", nargs="*", default=None,
                      help="combine the per-seed results of these JSON files (e.g. one process per seed) into --out")
  args = parser.parse_args()
  if args.merge:
    from semrec.atomic import write_json
    write_json(args.out, merge_reports(args.merge, lambda name, kind, agg, per_seed: acceptance(kind, agg, per_seed),
                                       _table))
    return
  command = ("python -m semrec.benchmarks.bench_cascade --runs " + " ".join(args.runs) + " --seeds " +
             " ".join(map(str, args.seeds)) + (" --variants " + " ".join(args.variants) if args.variants else ""))
  run_report(command, args.runs, args.seeds, args.out, lambda name, kind, agg, per_seed: acceptance(kind, agg, per_seed),
             _table, lambda name, kind, seed: run_one(name, kind, seed, args.variants))


def _table(run: str, agg: dict) -> str:
  lines = [f"{run}: test, mean ± std over seeds", "| model | R@10 | NDCG@10 | R@100 | cold R@10 | cold R@100 |",
           "|---|---|---|---|---|---|"]
  for n, m in agg.items():
    cell = lambda s, k: ("{:.4f} ± {:.4f}".format(*m[s][k]) if s in m and k in m[s] else "-")  # noqa: E731
    lines.append(f"| {n} | {cell('overall', 'recall@10')} | {cell('overall', 'ndcg@10')} | "
                 f"{cell('overall', 'recall@100')} | {cell('cold', 'recall@10')} | {cell('cold', 'recall@100')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
