"""The ranking representation comparison (Singh et al. Figures 2/3) on the bundled MovieLens.

Every representation mode (random_hash, dense, unigram, bigram, prefix, spm, spm+hash) at every
table budget, with and without user history, for several seeds, all on the same data and split:
sequential training on 9 time periods (one pass each), evaluation on the 10th; AUC overall and on
items first seen in the eval period (cold AUC). Baseline: random_hash at the same budget, same
seed (the paired differences are in the table), and, in the PNG, random_hash at the smallest budget.

SIDs: as in bench_ranker (rqkmeans L=3, K=256 on MiniLM text embeddings of the items).

Full: python -m semrec.benchmarks.bench_ranking_experiment --embeddings movielens_minilm.npz
Small: python -m semrec.benchmarks.bench_ranking_experiment --quick --embeddings movielens_minilm.npz
       (the main job's headline grid: 4 modes x 2 budgets, history on and off, 1 seed)
Writes benchmarks/results/bench_ranking_experiment.json (+ _quick), and the table/PNG under
benchmarks/results/ranking_experiment[_quick]/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json

from semrec.benchmarks.bench_ranker import movielens_item_features

_HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="headline grid: 4 modes x 2 budgets, 1 seed")
  p.add_argument("--embeddings", default=None, help=".npz with item_ids and embeddings (MovieLens items)")
  p.add_argument("--budgets", default="1024,4096")
  p.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick 0)")
  p.add_argument("--modes", default=None, help="comma-separated (default all; quick the headline modes)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  import tensorflow as tf
  from semrec.ranking import ALL_MODES, HEADLINE_MODES, run_ranking_experiment

  modes = tuple(args.modes.split(",")) if args.modes else (HEADLINE_MODES if args.quick else ALL_MODES)
  seeds = tuple(int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(","))
  budgets = tuple(int(b) for b in args.budgets.split(","))
  t0 = time.perf_counter()
  ds, fi, sid_info = movielens_item_features(args.embeddings)
  t1 = time.perf_counter()
  suffix = "_quick" if args.quick else ""
  out_dir = os.path.join(_HERE, "results", f"ranking_experiment{suffix}")
  res = run_ranking_experiment(ds, fi, modes=modes, budgets=budgets, seeds=seeds, use_history=(True, False),
                               codebook_size=sid_info["K"], output_dir=out_dir)
  print(f"\nMovieLens split: {res.split}; SIDs: {sid_info}")
  print(f"experiment: {res.seconds:.0f} s ({len(res.runs) // 2} (run, budget) rows); SIDs {t1 - t0:.0f} s")
  for task in ("label", "like"):
    print(f"\n{task}:\n{res.markdown(task)}")
  out = args.out or os.path.join(_HERE, "results", f"bench_ranking_experiment{suffix}.json")
  payload = {"quick": args.quick, "modes": list(modes), "budgets": list(budgets), "seeds": list(seeds),
             "sids": sid_info, "split": res.split, "experiment_seconds": res.seconds, "files": res.files,
             "cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
             "baseline": "random_hash at the same budget and seed",
             "summary": json.loads(res.summary.to_json(orient="records"))}
  write_json(out, payload, indent=1)
  print(f"wrote {out} and {out_dir}/")


if __name__ == "__main__":
  main()
