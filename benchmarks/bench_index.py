"""ScaNN vs exact brute force: recall@10 and per-batch query latency, on synthetic or served embeddings.

Synthetic, full size: 1,000,000 candidates x 64 dims, 1,000 measured queries per batch (+ 500 calibration
queries):
  nice -n 10 python -m semrec.benchmarks.bench_index
Small: python -m semrec.benchmarks.bench_index --quick
Served embeddings of a run (the bundled MovieLens catalogue: ``semrec train-retrieval`` writes
``<run>/retrieval/embeddings.npz`` with the served candidate embeddings and the query embeddings of up to 1,000
test users, [Q, K, d] for a multi-interest model):
  python -m semrec.benchmarks.bench_index --embeddings <run>/retrieval/embeddings.npz --name movielens

The ScaNN settings are the library's (``semrec.towers.IndexConfig``): sqrt(N) leaves, AH with 2 dimensions per
block, exact rescoring of 10 x k candidates, and the leaves to search calibrated on calibration queries to reach
recall .97 (``calibrate_leaves_to_search``). The measured queries are disjoint from the calibration ones (served
embeddings: odd rows measured, even rows calibrate, as the index stage does). Synthetic embeddings are a mixture of
Gaussian clusters (like trained item embeddings, which cluster by topic), queries are drawn from the same
mixture. The baseline is an exact dot-product top-k with tf.linalg.matmul + tf.math.top_k (what
tfrs.layers.factorized_top_k.BruteForce does), in the same process, over the same queries; both use every core.
Also checks that the TFRS ScaNN layer returns the same ids as the searcher. Writes
benchmarks/results/bench_index[_<name>].json.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
  ap.add_argument("--quick", action="store_true", help="synthetic: 50k candidates, 200 queries")
  ap.add_argument("--embeddings", default=None,
                  help="a run's retrieval/embeddings.npz (candidates [N, d], queries [Q, d] or [Q, K, d])")
  ap.add_argument("--name", default=None, help="results file suffix (bench_index_<name>.json)")
  ap.add_argument("--num-items", type=int, default=None)
  ap.add_argument("--dim", type=int, default=64)
  ap.add_argument("--num-queries", type=int, default=None)
  ap.add_argument("--k", type=int, default=10)
  ap.add_argument("--leaves-to-search", type=int, default=None, help="default: calibrated (IndexConfig)")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--seed", type=int, default=0, help="synthetic data seed")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  from semrec.towers.index import IndexConfig, build_index, index_report

  t0 = time.perf_counter()
  if args.embeddings:
    with np.load(args.embeddings, allow_pickle=False) as f:
      emb, all_queries = f["candidates"].astype(np.float32), f["queries"].astype(np.float32)
    calibration, queries = all_queries[0::2], all_queries[1::2]
    n, dim = emb.shape
    source = os.path.abspath(args.embeddings)
  else:
    n = args.num_items or (50_000 if args.quick else 1_000_000)
    nq = args.num_queries or (200 if args.quick else 1000)
    emb, both = make_embeddings(n, args.dim, num_clusters=max(10, n // 1000), num_queries=nq + nq // 2,
                                seed=args.seed)
    queries, calibration = both[:nq], both[nq:]
    dim = args.dim
    source = f"synthetic: {max(10, n // 1000)} Gaussian clusters, seed {args.seed}"
  nq = len(queries)
  print(f"data: {n} x {dim} candidates, {nq} measured queries {list(queries.shape[1:])}, {len(calibration)} "
        f"calibration queries ({time.perf_counter() - t0:.1f}s)")
  cfg = IndexConfig(kind="scann", k=args.k, num_leaves_to_search=args.leaves_to_search)
  index = build_index(emb, np.arange(n).astype(str), config=cfg, calibration_queries=calibration)
  print(f"scann build + calibration: {index.build_seconds:.1f}s + "
        f"{index.params.get('calibration', {}).get('seconds', 0):.1f}s params={index.params}")
  rep = index_report(index, queries, k=args.k, repeats=args.repeats)

  # The TFRS ScaNN layer over the same candidates answers like the searcher (first 20 queries, one vector each).
  import tensorflow as tf
  sub = min(n, 20_000)
  small = build_index(emb[:sub], np.arange(sub).astype(str), config=cfg,
                      calibration_queries=calibration.reshape(-1, dim)[:200])
  layer = small.to_keras_layer(k=args.k)
  flat = queries.reshape(-1, dim)[:20]
  _, layer_ids = layer(tf.constant(flat))
  _, ids = small.search(flat, args.k)
  layer_agreement = float(np.mean([len(set(a.astype(str)) & set(b)) / args.k
                                   for a, b in zip(layer_ids.numpy().astype(str), ids)]))

  targets = {"recall": 0.95, "speedup": 5.0 if n < 100_000 else 10.0}
  result = {
      "benchmark": "bench_index", "source": source, "quick": args.quick, "num_items": n, "dim": dim,
      "num_queries": nq, "query_shape": list(queries.shape[1:]), "num_calibration_queries": int(len(calibration)),
      "k": args.k, f"scann_recall@{args.k}": rep[f"recall@{args.k}"],
      "scann_batch_seconds": rep["index_batch_seconds"], "brute_force_batch_seconds": rep["brute_force_batch_seconds"],
      "speedup_vs_brute_force": rep["speedup_vs_brute_force"], "scann_params": rep["params"],
      "scann_build_seconds": rep["build_seconds"], "tfrs_scann_layer_agreement@k": layer_agreement,
      "targets": targets,
      "meets_targets": bool(rep[f"recall@{args.k}"] >= targets["recall"]
                            and rep["speedup_vs_brute_force"] >= targets["speedup"]),
      "command": "python -m semrec.benchmarks.bench_index " + " ".join(argv if argv is not None else sys.argv[1:]),
      "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
  }
  print(f"ScaNN recall@{args.k} vs brute force: {result[f'scann_recall@{args.k}']:.4f} "
        f"({rep['params']['num_leaves_to_search']} of {rep['params']['num_leaves']} leaves)")
  print(f"per batch of {nq} queries: ScaNN {rep['index_batch_seconds'] * 1e3:.1f} ms, "
        f"brute force {rep['brute_force_batch_seconds'] * 1e3:.1f} ms -> {rep['speedup_vs_brute_force']:.1f}x faster")
  print(f"TFRS ScaNN layer vs searcher id agreement: {layer_agreement:.3f}")
  out = args.out or os.path.join(RESULTS, f"bench_index{'_' + args.name if args.name else ''}"
                                          f"{'_quick' if args.quick and not args.embeddings else ''}.json")
  write_json(out, result)
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
