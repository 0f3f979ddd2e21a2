"""Ranker speed: training examples/s per representation mode, exported-model serving latency.

- training: the sequential protocol on MovieLens (one pass over each training period) for every
  mode at one table budget; examples/s over the whole loop and in steady state (periods 2..N,
  i.e. without the first period, which includes graph tracing). Baseline: ``random_hash`` in the
  same run; ratio = mode examples/s / random_hash examples/s.
- serving: each trained ranker exported with ``export_ranker`` (TF Serving layout), reloaded with
  ``tf.saved_model.load`` and called through its ``serving_default`` signature: latency p50/p99 of
  (a) one request = one user (last item, 20-item history, context) x 100 candidates and
  (b) a batch of 1,000 independent rows. Baseline: random_hash; ratio = mode latency / baseline.

SIDs: residual k-means (``semrec.sid.train_sid_model`` mode rqkmeans, L=3, K=256) of MiniLM text
embeddings of the MovieLens items: from --embeddings (an .npz with ``item_ids`` and ``embeddings``)
or encoded here with ``semrec.encoders.TextEncoder``.

Full: python -m semrec.benchmarks.bench_ranker --embeddings movielens_minilm.npz
Small: python -m semrec.benchmarks.bench_ranker --quick --embeddings movielens_minilm.npz
Writes benchmarks/results/bench_ranker.json (bench_ranker_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json
import numpy as np
from tqdm import tqdm

_HERE = os.path.dirname(os.path.abspath(__file__))


def movielens_item_features(embeddings_path=None, num_levels: int = 3, codebook_size: int = 256,
                            sid_mode: str = "rqkmeans", seed: int = 0):
  """(MovieLens RecDataset, ItemFeatures with ``sid`` [N, L] and ``content`` [N, D], info dict)."""
  from semrec.data import ItemFeatures, load_movielens
  from semrec.sid.assign import predict_codes
  from semrec.sid.rqvae import RQVAEConfig, train_sid_model

  ds = load_movielens()
  ids = ds.item_ids.astype(str)
  if embeddings_path:
    z = np.load(embeddings_path, allow_pickle=False)
    pos = {str(i): r for r, i in enumerate(z["item_ids"])}
    missing = [i for i in ids if i not in pos]
    if missing:
      raise ValueError(f"{embeddings_path}: no embedding for item {missing[0]!r} ({len(missing)} missing)")
    x = np.asarray(z["embeddings"], np.float32)[[pos[i] for i in ids]]
    source = os.path.basename(embeddings_path)
  else:
    from semrec.encoders import TextEncoder
    x = TextEncoder().encode(ds.item_texts(), item_ids=ids)
    source = "semrec.encoders.TextEncoder (MiniLM)"
  t = time.perf_counter()
  sid_model = train_sid_model(x, RQVAEConfig(mode=sid_mode, num_levels=num_levels, codebook_size=codebook_size,
                                             seed=seed), item_ids=ids)
  codes = predict_codes(sid_model.assigner, x).astype(np.int32)
  info = {"embeddings": source, "sid_mode": sid_mode, "L": num_levels, "K": codebook_size,
          "sid_seconds": round(time.perf_counter() - t, 1),
          "unique_sid_ratio": float(len({tuple(c) for c in codes.tolist()}) / len(codes))}
  return ds, ItemFeatures(ds.item_ids, {"sid": codes, "content": x}), info


def _percentiles(fn, repeats: int, warmup: int = 3) -> dict:
  from semrec.benchmarks.timing import call_times
  ms = call_times(fn, repeats, warmup) * 1e3
  return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "repeats": repeats}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="3 modes, 4 periods, fewer latency repeats")
  p.add_argument("--embeddings", default=None, help=".npz with item_ids and embeddings (MovieLens items)")
  p.add_argument("--budget", type=int, default=4096, help="embedding-table budget of every mode")
  p.add_argument("--repeats", type=int, default=None, help="latency repeats (default 200, quick 30)")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  import tensorflow as tf
  from semrec.export import export_ranker
  from semrec.ranking import ALL_MODES, RankerConfig, prepare_sequential, train_sequential
  from semrec.ranking.experiment import _rep_config
  from semrec.ranking.training import build_item_representation

  modes = ("random_hash", "unigram", "spm") if args.quick else ALL_MODES
  num_periods = 4 if args.quick else 10
  repeats = args.repeats or (30 if args.quick else 200)
  ds, fi, sid_info = movielens_item_features(args.embeddings)
  L, K = fi.arrays["sid"].shape[1], 256
  D = fi.arrays["content"].shape[1]
  inter = ds.interactions
  if args.quick:  # the most recent 30% of the log
    inter = inter.iloc[int(len(inter) * 0.7):].reset_index(drop=True)
  data = prepare_sequential(inter, fi, num_periods=num_periods, history_length=20)
  base = RankerConfig(batch_size=512)
  results = {"training": {}, "serving": {}}
  export_base = tempfile.mkdtemp(prefix="bench_ranker_")
  for mode in tqdm(modes, desc="modes"):
    rep = _rep_config(mode, args.budget, L, K, embedding_dim=32, content_dim=D)
    cfg = RankerConfig(**{**base.__dict__, "item_representation": rep})
    layer = build_item_representation(rep, data)
    run = train_sequential(cfg, item_representation=layer, data=data, progress=False)
    # Steady state: re-time one more pass over periods 2..N with the already traced train function.
    ds_list = [run.featurizer.dataset(ex, cfg.batch_size, shuffle=True, seed=1) for ex in data.train_examples[1:]]
    n_steady = sum(len(ex) for ex in data.train_examples[1:])
    t = time.perf_counter()
    for d in ds_list:
      run.model.fit(d, epochs=1, verbose=0)
    steady = n_steady / (time.perf_counter() - t)
    results["training"][mode] = {"examples_per_second": run.examples_per_second,
                                 "steady_examples_per_second": steady, "train_examples": run.train_examples,
                                 "auc_label": run.metrics["label"]["auc"],
                                 "cold_auc_label": run.metrics["label"]["cold_auc"]}
    # Serving latency through the exported SavedModel.
    ev = data.eval_examples
    rng = np.random.default_rng(0)
    rows = rng.choice(len(ev), size=min(1000, len(ev)), replace=False)
    batch = run.featurizer.features(ev.take(rows))
    cand_rows = rng.choice(len(fi.item_ids), size=100, replace=False)
    one = run.featurizer.features(ev.take(rows[:1]))
    request = {k: v for k, v in one.items() if not k.startswith("candidate_")}
    request["candidate_item_id"] = fi.item_ids[cand_rows].astype(str)
    request["candidate_sid"] = fi.arrays["sid"][cand_rows]
    if "candidate_content" in one:
      request["candidate_content"] = fi.arrays["content"][cand_rows]
    res = export_ranker(export_base, run.model, batch, name=f"ranker_{mode.replace('+', '_')}")
    fn = tf.saved_model.load(res.path).signatures["serving_default"]
    req_t = {k: tf.constant(np.asarray(v).astype(str) if np.asarray(v).dtype == object else v)
             for k, v in request.items()}
    batch_t = {k: tf.constant(np.asarray(v).astype(str) if np.asarray(v).dtype == object else v)
               for k, v in batch.items()}
    results["serving"][mode] = {
        "request_1_user_100_candidates": _percentiles(lambda: fn(**req_t), repeats),
        "batch_1000_rows": _percentiles(lambda: fn(**batch_t), max(repeats // 4, 10)),
    }

  shutil.rmtree(export_base, ignore_errors=True)
  base_train = results["training"]["random_hash"]["steady_examples_per_second"]
  base_req = results["serving"]["random_hash"]["request_1_user_100_candidates"]["p50_ms"]
  base_batch = results["serving"]["random_hash"]["batch_1000_rows"]["p50_ms"]
  print(f"\nMovieLens, budget {args.budget}, {len(data.train_examples)} training periods "
        f"({sum(len(e) for e in data.train_examples)} examples), SIDs: {sid_info}")
  print("| mode | train ex/s (all) | train ex/s (steady) | ratio vs hash | 1x100 p50 ms | 1x100 p99 ms | "
        "1000 p50 ms | 1000 p99 ms | latency ratio (1x100, 1000) |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
  for mode in modes:
    tr, sv = results["training"][mode], results["serving"][mode]
    r1, rb = sv["request_1_user_100_candidates"], sv["batch_1000_rows"]
    tr["ratio_vs_random_hash"] = tr["steady_examples_per_second"] / base_train
    sv["latency_ratio_vs_random_hash"] = {"request": r1["p50_ms"] / base_req, "batch": rb["p50_ms"] / base_batch}
    print(f"| {mode} | {tr['examples_per_second']:.0f} | {tr['steady_examples_per_second']:.0f} | "
          f"{tr['ratio_vs_random_hash']:.2f} | {r1['p50_ms']:.2f} | {r1['p99_ms']:.2f} | {rb['p50_ms']:.2f} | "
          f"{rb['p99_ms']:.2f} | {r1['p50_ms'] / base_req:.2f}, {rb['p50_ms'] / base_batch:.2f} |")
  out = args.out or os.path.join(_HERE, "results", "bench_ranker_quick.json" if args.quick else "bench_ranker.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  payload = {"quick": args.quick, "budget": args.budget, "num_periods": num_periods, "sids": sid_info,
             "cpus": os.cpu_count(), "platform": platform.platform(), "tensorflow": tf.__version__,
             "baseline": "random_hash", **results}
  write_json(out, payload, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
