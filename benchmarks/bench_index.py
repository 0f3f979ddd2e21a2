"""ScaNN vs exact brute force on synthetic candidate embeddings: recall@10 and per-batch query latency.

Full size (the issue's target): 1,000,000 candidates x 64 dims, 1,000 queries per batch:
  python -m semrec.benchmarks.bench_index
Small: python -m semrec.benchmarks.bench_index --quick

The embeddings are a mixture of Gaussian clusters (like trained item embeddings, which cluster by
topic), queries are drawn from the same mixture. The baseline is an exact dot-product top-k with
tf.linalg.matmul + tf.math.top_k (what tfrs.layers.factorized_top_k.BruteForce does), in the same
process, over the same queries. Also checks the TFRS ScaNN layer returns the same ids as the searcher.
Writes benchmarks/results/bench_index.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json
import numpy as np


def make_embeddings(n: int, dim: int, num_clusters: int, num_queries: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim)).astype(np.float32)
  def draw(m):
    out = np.empty((m, dim), np.float32)
    for s in range(0, m, 200_000):
      e = min(s + 200_000, m)
      c = rng.integers(0, num_clusters, e - s)
      out[s:e] = centers[c] + 0.6 * rng.normal(size=(e - s, dim)).astype(np.float32)
    return out
  return draw(n), draw(num_queries)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="50k candidates, 200 queries")
  ap.add_argument("--num-items", type=int, default=None)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--num-queries", type=int, default=None)
  ap.add_argument("--k", type=int, default=10)
  ap.add_argument("--leaves-to-search", type=int, default=None, help="default: 5%% of sqrt(N) leaves")
  ap.add_argument("--reorder", type=int, default=100)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                "bench_index.json"))
  args = ap.parse_args(argv)
  n = args.num_items or (50_000 if args.quick else 1_000_000)
  nq = args.num_queries or (200 if args.quick else 1000)

  from semrec.towers.index import IndexConfig, build_index, index_report

  t0 = time.perf_counter()
  emb, queries = make_embeddings(n, args.dim, num_clusters=max(10, n // 1000), num_queries=nq)
  print(f"data: {n} x {args.dim} candidates, {nq} queries ({time.perf_counter() - t0:.1f}s)")
  cfg = IndexConfig(kind="scann", k=args.k, num_leaves_to_search=args.leaves_to_search, reorder=args.reorder)
  index = build_index(emb, np.arange(n).astype(str), config=cfg)
  print(f"scann build: {index.build_seconds:.1f}s params={index.params}")
  rep = index_report(index, queries, k=args.k, repeats=args.repeats)

  # The TFRS ScaNN layer over the same candidates answers like the searcher (first 20 queries).
  import tensorflow as tf
  sub = min(n, 20_000)
  small = build_index(emb[:sub], np.arange(sub).astype(str), config=cfg)
  layer = small.to_keras_layer(k=args.k)
  _, layer_ids = layer(tf.constant(queries[:20]))
  _, ids = small.search(queries[:20], args.k)
  layer_agreement = float(np.mean([len(set(a.astype(str)) & set(b)) / args.k
                                   for a, b in zip(layer_ids.numpy().astype(str), ids)]))

  result = {
      "benchmark": "bench_index", "quick": args.quick, "num_items": n, "dim": args.dim, "num_queries": nq,
      "k": args.k, f"scann_recall@{args.k}": rep[f"recall@{args.k}"],
      "scann_batch_seconds": rep["index_batch_seconds"], "brute_force_batch_seconds": rep["brute_force_batch_seconds"],
      "speedup_vs_brute_force": rep["speedup_vs_brute_force"], "scann_params": rep["params"],
      "scann_build_seconds": rep["build_seconds"], "tfrs_scann_layer_agreement@k": layer_agreement,
      "targets": {"recall": 0.95, "speedup": 10.0},
      "meets_targets": bool(rep[f"recall@{args.k}"] >= 0.95 and rep["speedup_vs_brute_force"] >= 10.0),
      "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
  }
  print(f"ScaNN recall@{args.k} vs brute force: {result[f'scann_recall@{args.k}']:.4f}")
  print(f"per batch of {nq} queries: ScaNN {rep['index_batch_seconds'] * 1e3:.1f} ms, "
        f"brute force {rep['brute_force_batch_seconds'] * 1e3:.1f} ms -> {rep['speedup_vs_brute_force']:.1f}x faster")
  print(f"TFRS ScaNN layer vs searcher id agreement: {layer_agreement:.3f}")
  write_json(args.out, result)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
