"""The ranking representation sweep (Singh et al. Figures 2/3): mode x table budget, history on/off, seeds.

Every representation mode (random_hash, unigram, bigram, prefix, spm, spm+hash; dense on request) at
every table budget, with and without user history, for 3 seeds, all on the same data and split,
trained sequentially (one pass per period, in time order) and evaluated on the next period: AUC
overall and on items first seen in the eval period (new-item AUC, the paper's CTR/1D). Baseline:
random_hash at the same budget and seed (paired differences in the table).

Worlds:
- ``--world scaled`` (default): ``semrec.data.impressions`` (120k items, 2.4M impressions over 30
  days, uploads every day; CTR = user-topic affinity + content quality + per-item quality + noise).
  SIDs: RQ-KMeans (L=3, K=256) fitted on the content vectors of items uploaded before the eval day,
  assigned to all items. Protocol by day: train days 0..28 in order (each sub-sampled to
  ``--train-rows-per-day`` impressions, default 2,000; histories and context come from the full log),
  evaluate on day 29 (``--eval-rows`` sampled impressions, default 30,000; new items = no impression
  before day 29). Budgets 2048 ("table much smaller than the 120k-item vocabulary") and 131072
  ("close to it").
- ``--world movielens``: the bundled MovieLens (SIDs as in bench_ranker: RQ-KMeans L=3, K=256 of
  MiniLM text embeddings), 10 equal-count periods (it has no daily volume), the last evaluated.

Ranker: d=16, one DCN cross, MLP (64, 32), batch 256, Adam 5e-3, one pass per period. Runs go largest
budget first, then history on/off, then seed. Every finished configuration is checkpointed
(``--checkpoint-dir``); rerunning the same command resumes without retraining finished ones, and
``--finished-only`` writes the tables/PNG from what is checkpointed without training.

  python -m semrec.benchmarks.bench_ranking_experiment --world scaled
  python -m semrec.benchmarks.bench_ranking_experiment --world movielens --embeddings movielens_minilm.npz
  python -m semrec.benchmarks.bench_ranking_experiment --quick   # MovieLens headline grid, 1 seed

Writes benchmarks/results/bench_ranking_experiment_<world>.json and the table/runs/PNG under
benchmarks/results/ranking_experiment_<world>/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import platform
import tempfile
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from semrec.atomic import write_bytes, write_json
from semrec.config import to_dict

from semrec.benchmarks.bench_ranker import movielens_item_features

_HERE = os.path.dirname(os.path.abspath(__file__))
SWEEP_MODES = ("random_hash", "unigram", "bigram", "prefix", "spm", "spm+hash")
DEFAULT_BUDGETS = {"scaled": "2048,131072", "movielens": "1024,8192"}


def cached(path: str, build):
  """``build()``'s result, pickled at ``path`` (atomically) so a resumed sweep skips the input preparation."""
  if os.path.exists(path):
    with open(path, "rb") as f:
      return pickle.load(f)
  obj = build()
  write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
  return obj


def scaled_inputs(checkpoint_dir: str, train_rows_per_day: int, eval_rows: int, seed: int = 0):
  """(item features with RQ-KMeans SIDs, SequentialData by day, info) for the scaled world.

  The codes are cached in ``checkpoint_dir`` (a resumed sweep must see the same SIDs)."""
  from semrec.atomic import atomic_directory
  from semrec.data.impressions import ImpressionWorldConfig, make_impression_world
  from semrec.ranking import daily_split, prepare_sequential
  from semrec.sid.assign import predict_codes
  from semrec.sid import RQVAEConfig, train_sid_model

  t = time.perf_counter()
  world = make_impression_world(ImpressionWorldConfig(seed=seed))
  gen_seconds = time.perf_counter() - t
  eval_day = world.config.num_days - 1
  sid_path = os.path.join(checkpoint_dir, "sids")
  t = time.perf_counter()
  if not os.path.exists(os.path.join(sid_path, "codes.npy")):
    cfg = RQVAEConfig(mode="rqkmeans", num_levels=3, codebook_size=256, normalization="center", kmeans_max_iter=30,
                      seed=seed)
    sid_model = train_sid_model(world.content[world.upload_day < eval_day], cfg, progress=False)
    with atomic_directory(sid_path) as tmp:
      np.save(os.path.join(tmp, "codes.npy"), predict_codes(sid_model.assigner, world.content).astype(np.int32))
  codes = np.load(os.path.join(sid_path, "codes.npy"))
  sid_seconds = time.perf_counter() - t
  fi = world.item_features(codes)
  inter = world.dataset.interactions
  split = daily_split(inter, "day", max_train_rows_per_day=train_rows_per_day, seed=seed, max_eval_rows=eval_rows)
  t = time.perf_counter()
  data = prepare_sequential(inter, fi, history_length=20, split=split)
  info = {"world": dataclasses.asdict(world.config), "impressions": int(len(inter)),
          "items": int(len(fi.item_ids)), "generate_seconds": round(gen_seconds, 1),
          "sid": "rqkmeans L=3 K=256 (content of items uploaded before the eval day)",
          "sid_seconds": round(sid_seconds, 1), "unique_sid_ratio": float(len(np.unique(codes, axis=0)) / len(codes)),
          "train_rows_per_day": train_rows_per_day, "eval_rows": eval_rows, "examples_seconds": round(time.perf_counter() - t, 1)}
  return fi, data, info


def movielens_inputs(embeddings):
  from semrec.ranking import prepare_sequential
  ds, fi, sid_info = movielens_item_features(embeddings)
  data = prepare_sequential(ds.interactions, fi, num_periods=10, history_length=20)
  return fi, data, {"sids": sid_info}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--world", choices=("scaled", "movielens"), default="scaled")
  p.add_argument("--quick", action="store_true", help="MovieLens headline grid: 4 modes x 2 budgets, 1 seed")
  p.add_argument("--embeddings", default=None, help="MovieLens: .npz with item_ids and embeddings")
  p.add_argument("--budgets", default=None, help="comma-separated table budgets (default per world)")
  p.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick 0)")
  p.add_argument("--modes", default=None, help=f"comma-separated (default {','.join(SWEEP_MODES)})")
  p.add_argument("--train-rows-per-day", type=int, default=2000, help="scaled: training impressions per day")
  p.add_argument("--eval-rows", type=int, default=30000, help="scaled: eval-day impressions sampled")
  p.add_argument("--embedding-dim", type=int, default=16)
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--learning-rate", type=float, default=5e-3)
  p.add_argument("--checkpoint-dir", default=None, help="default: <tmp>/semrec-ranking-sweep/<world>")
  p.add_argument("--finished-only", action="store_true",
                 help="write the tables/PNG from the configurations already checkpointed; train nothing")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  import tensorflow as tf
  from semrec.ranking import HEADLINE_MODES, RankerConfig, run_ranking_experiment

  world = "movielens" if args.quick else args.world
  modes = tuple(args.modes.split(",")) if args.modes else (HEADLINE_MODES if args.quick else SWEEP_MODES)
  seeds = tuple(int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(","))
  budgets = tuple(int(b) for b in (args.budgets or ("1024,4096" if args.quick else DEFAULT_BUDGETS[world])).split(","))
  suffix = "quick" if args.quick else world
  ckpt = args.checkpoint_dir or os.path.join(tempfile.gettempdir(), "semrec-ranking-sweep", suffix)
  os.makedirs(ckpt, exist_ok=True)
  t0 = time.perf_counter()
  if world == "scaled":
    fi, data, info = cached(os.path.join(ckpt, f"inputs_{args.train_rows_per_day}_{args.eval_rows}.pkl"),
                            lambda: scaled_inputs(ckpt, args.train_rows_per_day, args.eval_rows))
  else:
    fi, data, info = cached(os.path.join(ckpt, "inputs.pkl"), lambda: movielens_inputs(args.embeddings))
  prep_seconds = time.perf_counter() - t0
  base = RankerConfig(batch_size=args.batch_size, learning_rate=args.learning_rate, hidden_units=(64, 32),
                      num_cross_layers=1, history_length=20)
  out_dir = os.path.join(_HERE, "results", f"ranking_experiment_{suffix}")
  res = run_ranking_experiment(None, fi, modes=modes, budgets=budgets, seeds=seeds, use_history=(True, False),
                               codebook_size=256, base_config=base, embedding_dim=args.embedding_dim, data=data,
                               output_dir=out_dir, checkpoint_dir=ckpt, title=world, finished_only=args.finished_only)
  print(f"\n{world}: split {res.split}; {info}")
  print(f"inputs {prep_seconds:.0f} s; experiment {res.seconds:.0f} s")
  from semrec.ranking.experiment import format_budget_table
  for task in ("label", "like"):
    print(f"\n{task}:\n{res.markdown(task)}\n\n{format_budget_table(res.summary, task)}")
  out = args.out or os.path.join(_HERE, "results", f"bench_ranking_experiment_{suffix}.json")
  payload = {"world": world, "finished_only": args.finished_only, "result_rows": int(len(res.runs)),
             "modes": list(modes), "budgets": list(budgets), "seeds": list(seeds),
             "embedding_dim": args.embedding_dim, "base_config": to_dict(base), "inputs": info,
             "split": res.split, "inputs_seconds": prep_seconds, "experiment_seconds": res.seconds,
             "files": {k: os.path.relpath(v, _HERE) for k, v in res.files.items()}, "cpus": os.cpu_count(),
             "platform": platform.platform(), "tensorflow": tf.__version__,
             "baseline": "random_hash at the same budget and seed",
             "summary": json.loads(res.summary.to_json(orient="records"))}
  write_json(out, payload, indent=1)
  print(f"wrote {out} and {out_dir}/")


if __name__ == "__main__":
  main()
