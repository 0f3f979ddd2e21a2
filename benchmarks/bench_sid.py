"""SID benchmark: training time and assignment throughput vs faiss, and the SID quality tables.

Speed (default): N synthetic 384-d content embeddings (1M; 50k with --quick), L=3, K=256. In the same
run and on the same data it measures
  * semrec RQ-VAE training time and ``SidAssigner`` throughput (items/s),
  * semrec RQ-KMeans training time and throughput,
  * faiss-cpu ``ResidualQuantizer`` (same L, K, beam size 1) training time and ``compute_codes``
    throughput: the speed anchor,
and reports the ratios semrec / faiss. Both use the same threads (2 cores on the reference machine).

Quality (--report movielens|synthetic|all): the health table (utilisation, unique ratio,
prefix-cosine table, reconstruction) of both modes at L=3, K=256 on MovieLens MiniLM text
embeddings (title + genres) and on the synthetic corpus' titles.

  python benchmarks/bench_sid.py                 # 1M speed benchmark
  python benchmarks/bench_sid.py --quick         # 50k
  python benchmarks/bench_sid.py --skip-speed --report all

Results: benchmarks/results/bench_sid.json (speed) and bench_sid_quality.json (tables).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from semrec.atomic import write_json
from semrec.config import to_dict
import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def synthetic_embeddings(n: int, dim: int = 384, seed: int = 0, topics: int = 200, subtopics: int = 10) -> np.ndarray:
  """[n, dim] float32 unit vectors from a two-level topic mixture (topic -> subtopic -> item noise)."""
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(topics, dim)).astype(np.float32)
  sub = (t[:, None, :] + 0.6 * rng.normal(size=(topics, subtopics, dim))).reshape(-1, dim).astype(np.float32)
  out = np.empty((n, dim), np.float32)
  for s in range(0, n, 100_000):
    m = min(100_000, n - s)
    x = sub[rng.integers(0, len(sub), m)] + 0.5 * rng.normal(size=(m, dim)).astype(np.float32)
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def _throughput(fn, x, repeats: int = 1) -> float:
  from semrec.benchmarks.timing import call_times
  return x.shape[0] / float(call_times(lambda: fn(x), repeats, warmup=0).min())


def bench_speed(n: int, levels: int = 3, k: int = 256, epochs: int = 1, threads: int = 2, seed: int = 0) -> dict:
  try:
    import faiss
  except ImportError as e:
    raise ImportError("the faiss baseline of bench_sid needs faiss-cpu: pip install 'semrec[bench]' "
                      "(or pip install faiss-cpu)") from e
  import tensorflow as tf
  from semrec.sid import RQVAEConfig, predict_codes, train_sid_model

  faiss.omp_set_num_threads(threads)
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  print(f"[bench_sid] generating {n:,} x 384 synthetic embeddings", flush=True)
  x = synthetic_embeddings(n, seed=seed)
  res = {"num_items": n, "dim": x.shape[1], "num_levels": levels, "codebook_size": k, "threads": threads,
         "load_average_at_start": list(os.getloadavg())}

  # faiss baseline (its k-means subsamples to 256 points per centroid = 65,536 points per level).
  rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(k)))
  rq.max_beam_size = 1
  t = time.perf_counter()
  rq.train(x)
  res["faiss_train_seconds"] = time.perf_counter() - t
  # faiss' OpenMP threads spin-wait, which suffers on a shared, busy machine: measure encoding with
  # 1 thread too and take the faster of the two as the baseline (the strongest anchor).
  per_threads = {}
  for nt in sorted({1, threads}):
    faiss.omp_set_num_threads(nt)
    per_threads[str(nt)] = _throughput(rq.compute_codes, x)
  faiss.omp_set_num_threads(threads)
  res["faiss_items_per_second_by_threads"] = per_threads
  res["faiss_items_per_second"] = max(per_threads.values())
  print(f"[bench_sid] faiss RQ: train {res['faiss_train_seconds']:.1f}s, encode "
        + ", ".join(f"{v:,.0f} items/s ({t} thread(s))" for t, v in per_threads.items()), flush=True)

  # semrec RQ-VAE: one pass over the data with 1024-item batches; refresh on all latents.
  cfg = RQVAEConfig(mode="rqvae", num_levels=levels, codebook_size=k, epochs=epochs, batch_size=1024, seed=seed)
  t = time.perf_counter()
  model = train_sid_model(x, cfg)
  res["rqvae_train_seconds"] = time.perf_counter() - t
  res["rqvae_config"] = to_dict(model.config)
  predict_codes(model.assigner, x[:8192])  # trace once
  res["rqvae_items_per_second"] = _throughput(lambda a: predict_codes(model.assigner, a), x)
  print(f"[bench_sid] semrec RQ-VAE: train {res['rqvae_train_seconds']:.1f}s, "
        f"assign {res['rqvae_items_per_second']:,.0f} items/s", flush=True)

  # semrec RQ-KMeans, k-means on the same 65,536-point sample size faiss uses.
  cfg = RQVAEConfig(mode="rqkmeans", num_levels=levels, codebook_size=k, kmeans_sample_size=min(n, 256 * k),
                    kmeans_max_iter=25, seed=seed)
  t = time.perf_counter()
  km = train_sid_model(x, cfg)
  res["rqkmeans_train_seconds"] = time.perf_counter() - t
  predict_codes(km.assigner, x[:8192])
  res["rqkmeans_items_per_second"] = _throughput(lambda a: predict_codes(km.assigner, a), x)
  print(f"[bench_sid] semrec RQ-KMeans: train {res['rqkmeans_train_seconds']:.1f}s, "
        f"assign {res['rqkmeans_items_per_second']:,.0f} items/s", flush=True)

  res["load_average_at_end"] = list(os.getloadavg())
  for name in ("rqvae", "rqkmeans"):
    res[f"{name}_assign_speedup_vs_faiss"] = res[f"{name}_items_per_second"] / res["faiss_items_per_second"]
    res[f"{name}_train_time_ratio_vs_faiss"] = res[f"{name}_train_seconds"] / res["faiss_train_seconds"]
  return res


def _load_embeddings(path: str):
  """(item_ids, embeddings) from an .npz (keys item_ids, embeddings) or an EmbeddingStore directory."""
  if os.path.isdir(path):
    from semrec.encoders import EmbeddingStore
    c = EmbeddingStore(path).load()
    return np.asarray(c.item_ids, dtype=object), c.embeddings
  with np.load(path, allow_pickle=False) as f:
    return f["item_ids"].astype(object), f["embeddings"]


def _encode_texts(texts, item_ids):
  from semrec.encoders import TextEncoder
  enc = TextEncoder()  # bundled all-MiniLM-L6-v2
  print(f"[bench_sid] encoding {len(texts):,} texts with {enc.model_name}", flush=True)
  return enc.encode(list(texts), item_ids=list(item_ids))


ABLATIONS = {
    "rqvae": {"mode": "rqvae"},
    "rqkmeans": {"mode": "rqkmeans"},
    "rqvae, no final refresh": {"mode": "rqvae", "refresh_steps": 0},
    "rqvae, no dead-code reset, no refresh": {"mode": "rqvae", "refresh_steps": 0, "dead_code_window": 0},
    "rqkmeans, centred (no whitening)": {"mode": "rqkmeans", "normalization": "center"},
}


def robustness_table(x, ids, seeds, levels: int = 3, k: int = 256) -> list:
  """Default modes and ablations over several seeds: one compact row per (variant, seed)."""
  from semrec.sid import RQVAEConfig, train_sid_model
  rows = []
  print("\n| variant | seed | utilisation L1..L | unique ratio | prefix cosines (random, 1..L) | rising |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, overrides in ABLATIONS.items():
    for seed in seeds:
      model = train_sid_model(x, RQVAEConfig(num_levels=levels, codebook_size=k, seed=seed, **overrides), item_ids=ids)
      h = model.health(x)
      row = {"variant": name, "seed": seed, "utilisation": [lv["utilisation"] for lv in h["levels"]],
             "unique_ratio": h["unique_ratio"], "prefix_cosines": [r["mean_cosine"] for r in h["prefix_table"]],
             "rising": h["prefix_cosine_strictly_rising"]}
      rows.append(row)
      print(f"| {name} | {seed} | {' / '.join(f'{u:.1%}' for u in row['utilisation'])} | {row['unique_ratio']:.4f} | "
            f"{' / '.join(f'{c:.3f}' for c in row['prefix_cosines'])} | {'yes' if row['rising'] else 'no'} |",
            flush=True)
  return rows


def quality_report(dataset: str, embeddings_path: str = None, levels: int = 3, k: int = 256,
                   synthetic_items: int = 4000, out_dir: str = RESULTS_DIR, seeds=None) -> dict:
  """Trains both modes on one dataset's text embeddings; returns {"rqvae": health, "rqkmeans": health, ...}."""
  from semrec.sid import RQVAEConfig, format_health_table, plot_code_usage, train_sid_model

  topics = None
  if dataset == "movielens":
    from semrec.data import load_movielens
    ds = load_movielens()
  elif dataset == "synthetic":
    from semrec.data import SyntheticConfig, make_synthetic
    ds = make_synthetic(SyntheticConfig(num_items=synthetic_items, num_users=20, num_topics=12, num_days=3,
                                        impressions_per_user_per_day=2, image_size=8, audio_seconds=0.05, seed=0))
    topics = np.asarray(ds.item_topics)
  else:
    raise ValueError(f"unknown dataset {dataset!r}")
  if embeddings_path:
    ids, x = _load_embeddings(embeddings_path)
    if list(ids) != [str(i) for i in ds.item_ids]:
      raise ValueError(f"{embeddings_path}: item ids do not match the {dataset} catalogue")
    source = embeddings_path
  else:
    ids = ds.item_ids
    x = _encode_texts(ds.item_texts(), ids)
    source = "semrec.encoders.TextEncoder (all-MiniLM-L6-v2), texts = RecDataset.item_texts()"
  report = {"dataset": dataset, "num_items": int(len(x)), "embeddings": source}
  for mode in ("rqvae", "rqkmeans"):
    cfg = RQVAEConfig(mode=mode, num_levels=levels, codebook_size=k)
    t = time.perf_counter()
    model = train_sid_model(x, cfg, item_ids=ids)
    secs = time.perf_counter() - t
    h = model.health(x, item_ids=ids)
    h["train_seconds"] = secs
    h["config"] = to_dict(model.config)
    codes = model.codes(x)
    if topics is not None:
      purity = sum(np.bincount(topics[codes[:, 0] == c]).max() for c in np.unique(codes[:, 0])) / len(codes)
      h["level1_topic_purity"] = float(purity)
    plot_code_usage(codes, k, os.path.join(out_dir, f"sid_usage_{dataset}_{mode}.png"),
                    title=f"{dataset} {mode} L={levels} K={k}")
    report[mode] = h
    print(f"\n### {dataset}, {mode} (L={levels}, K={k}, trained in {secs:.1f}s)\n", flush=True)
    print(format_health_table(h))
    if topics is not None:
      print(f"Level-1 topic purity: {h['level1_topic_purity']:.3f}")
  if seeds:
    report["robustness"] = robustness_table(x, ids, seeds, levels, k)
  return report


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="50k items instead of 1M")
  p.add_argument("--items", type=int, default=None, help="override the number of synthetic items")
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--skip-speed", action="store_true")
  p.add_argument("--report", choices=["none", "movielens", "synthetic", "all"], default="none")
  p.add_argument("--seeds", default=None,
                 help="comma-separated seeds: also run both modes and the ablations (no refresh, no dead-code "
                      "reset, no whitening) with each seed and print one row per run")
  p.add_argument("--embeddings", default=None,
                 help="MovieLens embeddings (.npz with item_ids/embeddings, or an EmbeddingStore dir); "
                      "default: encode the titles with the bundled MiniLM")
  args = p.parse_args(argv)
  os.makedirs(RESULTS_DIR, exist_ok=True)
  if not args.skip_speed:
    n = args.items or (50_000 if args.quick else 1_000_000)
    res = bench_speed(n, threads=args.threads)
    res["command"] = "python benchmarks/bench_sid.py" + (" --quick" if args.quick else "")
    print(json.dumps({k: v for k, v in res.items() if k != "rqvae_config"}, indent=2))
    path = os.path.join(RESULTS_DIR, "bench_sid.json" if not args.quick else "bench_sid_quick.json")
    write_json(path, res)
  if args.report != "none":
    datasets = ["movielens", "synthetic"] if args.report == "all" else [args.report]
    out = {}
    for d in datasets:
      seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else None
      out[d] = quality_report(d, embeddings_path=args.embeddings if d == "movielens" else None, seeds=seeds)
    out["command"] = "python benchmarks/bench_sid.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = os.path.join(RESULTS_DIR, "bench_sid_quality.json" if not args.seeds else "bench_sid_robustness.json")
    write_json(path, out)


if __name__ == "__main__":
  main()
