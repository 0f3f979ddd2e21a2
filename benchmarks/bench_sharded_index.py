"""Sharded ScaNN (one index per hash shard, scatter-gather search) vs one ScaNN index vs exact brute force.

  nice -n 10 python -m semrec.benchmarks.bench_sharded_index            # 200,000 x 64, 1/2/4/8 shards
  python -m semrec.benchmarks.bench_sharded_index --items 20000 --quick  # small

Embeddings: the Gaussian-cluster mixture of ``bench_index`` (clustered like trained item embeddings). Each
configuration uses the default ``IndexConfig`` with kind="scann" (leaves = sqrt(shard size), 5% of them
searched, reorder 100), so a shard's tree is smaller than the single index's. Reports recall@10 against the
exact top-10, build seconds (all shards, one after the other: on a cluster they build in parallel) and the
per-batch search seconds of 1,000 queries (shards searched one after the other). Writes
benchmarks/results/bench_sharded_index.json.
"""
from __future__ import annotations

import argparse
import os
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from semrec.atomic import write_json
from semrec.benchmarks.bench_index import make_embeddings
from semrec.benchmarks.timing import call_times
from semrec.towers import brute_force_top_k, build_index, build_sharded_index


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--items", type=int, default=200_000)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--queries", type=int, default=1000)
  ap.add_argument("--shards", default="1,2,4,8")
  ap.add_argument("--quick", action="store_true", help="results file suffix _quick")
  args = ap.parse_args(argv)
  x, q = make_embeddings(args.items, args.dim, 100, args.queries)
  ids = np.asarray([f"i{i}" for i in range(len(x))], object)
  truth = ids[brute_force_top_k(q, x, 10)[1]]
  exact_s = float(np.median(call_times(lambda: brute_force_top_k(q, x, 10), 3)))
  rows = []
  for s in [int(v) for v in args.shards.split(",")]:
    t0 = time.perf_counter()
    index = build_index(x, ids, kind="scann", k=10) if s == 1 else build_sharded_index(x, ids, s, kind="scann", k=10)
    build = time.perf_counter() - t0
    found = index.search(q, 10)[1]
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())]))
    search = float(np.median(call_times(lambda: index.search(q, 10), 3)))
    rows.append({"shards": s, "recall@10": recall, "build_seconds": build, "search_seconds": search})
    print(f"shards {s}: recall@10 {recall:.4f}  build {build:.2f} s  search {search * 1000:.1f} ms / "
          f"{args.queries} queries (exact brute force {exact_s * 1000:.1f} ms)", flush=True)
  out = {"items": args.items, "dim": args.dim, "queries": args.queries, "brute_force_seconds": exact_s,
         "load_average": os.getloadavg(), "rows": rows}
  name = "bench_sharded_index_quick.json" if args.quick else "bench_sharded_index.json"
  write_json(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name), out)


if __name__ == "__main__":
  main()
