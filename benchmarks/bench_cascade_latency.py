"""Serving latency of the whole cascade for one user (retrieve per source, merge to M, rank, return 10) next to
one retriever alone (its exported query tower + dot products + top-10), in the same process and run.

Both are timed through ``semrec.export.CascadeServer`` loaded from disk (the export that ``semrec run`` writes):
the chain is ``CascadeServer.recommend(history, timestamp, k=10, user_id)``; the retriever alone is the same
server's first learned source (``ScoreSource.retrieve`` over its SavedModel query tower, k = 10), on the same
parsed requests. Requests: ``--requests`` train users (seeded), each with their last train items as history and
the request time just after the train log. Each request is timed once, after ``--warmup`` untimed requests.

Where the cascade comes from:
- ``--cascade DIR``: an exported ``cascade/<version>`` directory;
- ``--run-dir DIR``: the latest ``export/models/cascade/<v>`` of a finished ``semrec run``;
- otherwise a quick cascade is trained here on the bundled MovieLens (temporal split, seed 0): the default
  retriever variants trained ``--epochs`` epoch(s) each (0: built, not trained: the same towers and latency),
  the default ``CascadeConfig`` (M = 200 candidates,
  100 per source) with a one-epoch ranker on ``--train-queries`` training queries, then exported
  (``semrec.export.export_cascade``). Quality is not the point here; the shapes (sources, M, ranker) are the
  defaults', which is what the latency depends on.

Writes ``benchmarks/results/bench_cascade_latency.json`` (p50 / p90 / p99 / mean in ms, the per-step breakdown
of the chain, the load average before and after, the machine's core count).

  nice -n 0 python -m semrec.benchmarks.bench_cascade_latency
  # one thread per pool: no hand-offs between TF / BLAS threads for these small per-request ops (3x faster on
  # a busy 2-core machine; the figures in docs/export.md)
  TF_NUM_INTEROP_THREADS=1 TF_NUM_INTRAOP_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    nice -n 0 python -m semrec.benchmarks.bench_cascade_latency --cascade <export>/cascade/1
  python -m semrec.benchmarks.bench_cascade_latency --run-dir runs/movielens
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from semrec.benchmarks.bench_retrieval import CACHE, RESULTS, load_dataset, sid_stage
from semrec.benchmarks.bench_baselines import content_embeddings

TARGET_P99_MS = 25.0


def quick_cascade(export_base: str, epochs: int = 1, train_queries: int = 3000, variants=None, seed: int = 0) -> str:
  """Trains a small-budget cascade on MovieLens (temporal) and exports it; returns the version directory."""
  import dataclasses
  from semrec.data import make_split
  from semrec.export import export_cascade
  from semrec.ranking.candidates import catalogue_index
  from semrec.ranking.cascade import CascadeConfig, build_sources, candidate_stage, train_cascade
  from semrec.towers import ComparisonConfig
  from semrec.towers.comparison import build_variant_retriever, prepare_item_side, run_variant
  ds = load_dataset("movielens")
  ids, emb = ds.item_ids.astype(object), content_embeddings(ds, CACHE)
  split = make_split(ds, "temporal", seed=seed)
  base = ComparisonConfig(seed=seed)
  cfg = dataclasses.replace(base, fit=dataclasses.replace(base.fit, max_epochs=max(epochs, 1), patience=0),
                            variants=tuple(variants or base.variants))
  side = prepare_item_side(ds, split, ids, emb, cfg, **sid_stage(emb, ids, split, cfg))
  t0 = time.time()
  retrievers = {}
  for v in cfg.variants:
    # epochs = 0: the variant's towers as built (untrained): the same graphs and shapes, so the same latency.
    model, inputs = (run_variant(v, cfg, split, side)[:2] if epochs > 0 else build_variant_retriever(v, cfg, side))
    retrievers[v] = (model, inputs)
    print(f"  {'trained' if epochs > 0 else 'built'} {v} ({time.time() - t0:.0f}s)", flush=True)
  feats = side.features
  ccfg = CascadeConfig(max_epochs=1, max_train_queries=train_queries, seed=seed)
  content = feats.arrays.get("content")
  serve = build_sources(split, feats.item_ids, content, retrievers, ccfg.fresh_window, seed=seed)
  train = build_sources(split, feats.item_ids, content, retrievers, ccfg.fresh_window, training=True, seed=seed)
  valid = split.queries("valid")
  valid = valid.subset(np.arange(min(300, len(valid))))
  cascade = train_cascade(split, feats, side.sid_codebook_size, train, candidate_stage(
      serve, valid, catalogue_index(feats.item_ids), ccfg), ccfg, progress=False)
  print(f"  cascade ranker trained ({time.time() - t0:.0f}s)", flush=True)
  return export_cascade(export_base, cascade, split, feats, retrievers, sources=serve).path


def latest_cascade(run_dir: str) -> str:
  from semrec.export import latest_version
  base = os.path.join(run_dir, "export", "models")
  v = latest_version(base, "cascade")
  if v is None:
    raise SystemExit(f"{base}: no cascade export (run the ranking stage of semrec run)")
  return os.path.join(base, "cascade", str(v))


def sample_requests(server, n: int, history: int = 50, seed: int = 0) -> list:
  """``n`` seeded train users: (last ``history`` train items, time after the train log, user id)."""
  train = server.featurizer.train
  pos = train[train["label"] > 0].sort_values(["user_id", "timestamp"], kind="stable")
  t = int(train["timestamp"].max()) + 1
  users = np.random.default_rng(seed).permutation(pos["user_id"].unique())[:n]
  groups = pos.groupby("user_id")["item_id"]
  return [(list(groups.get_group(u).to_numpy()[-history:]), t, str(u)) for u in users]


def percentiles(seconds: np.ndarray) -> dict:
  ms = 1000.0 * np.asarray(seconds)
  return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
          "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
          "max_ms": round(float(ms.max()), 2), "n": int(len(ms))}


def time_each(fn, items, warmup: int) -> np.ndarray:
  for it in items[:warmup]:
    fn(it)
  out = np.empty(len(items))
  for i, it in enumerate(items):
    t = time.perf_counter()
    fn(it)
    out[i] = time.perf_counter() - t
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run-dir", default=None, help="a finished `semrec run` directory (else train a quick one)")
  parser.add_argument("--cascade", default=None, help="an existing cascade/<version> export directory")
  parser.add_argument("--export-dir", default=None, help="where the quick cascade is exported (default: a temp dir)")
  parser.add_argument("--requests", type=int, default=300)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--epochs", type=int, default=1, help="retriever epochs (0: untrained towers, same latency)")
  parser.add_argument("--train-queries", type=int, default=3000)
  parser.add_argument("--variants", nargs="*", default=None)
  parser.add_argument("--out", default=os.path.join(RESULTS, "bench_cascade_latency.json"))
  args = parser.parse_args()
  from semrec.atomic import write_json
  from semrec.export import CascadeServer
  from semrec.export.cascade import replay_recorded_requests
  t0 = time.time()
  if args.cascade:
    path, origin = args.cascade, f"cascade export {args.cascade}"
  elif args.run_dir:
    path, origin = latest_cascade(args.run_dir), f"semrec run {args.run_dir}"
  else:
    base = args.export_dir or tempfile.mkdtemp(prefix="semrec-cascade-latency-")
    path, origin = quick_cascade(base, args.epochs, args.train_queries, args.variants), "quick cascade (MovieLens)"
  build_seconds = time.time() - t0
  replay = replay_recorded_requests(path)  # served == in-memory on the recorded requests
  server = CascadeServer.load(path)
  reqs = sample_requests(server, args.requests + args.warmup)
  warm, timed = reqs[:args.warmup], reqs[args.warmup:]
  x = server.manifest["extra"]
  learned = list(x["learned_sources"])
  load_before = os.getloadavg()
  chain = time_each(lambda r: server.recommend(r[0], r[1], 10, r[2]), warm + timed, len(warm))[len(warm):]
  parsed = [server.parse(*r) for r in reqs]
  stages = [server.candidates(p) for p in parsed]
  candidates = time_each(server.candidates, parsed, len(warm))[len(warm):]
  rank = time_each(server.rank, stages, len(warm))[len(warm):]
  out = {"chain": percentiles(chain), "steps": {"candidates (sources + merge)": percentiles(candidates),
                                                "rank (features + ranker SavedModel)": percentiles(rank)}}
  from semrec.export.cascade import request_queries
  queries = [request_queries([p]) for p in parsed]
  out["steps"]["per source (retrieve k=per_source)"] = {
      src.name: percentiles(time_each(lambda q, src=src: src.retrieve(q, server.config.per_source, server.index),
                                      queries[:len(warm) + 50], len(warm))[len(warm):])
      for src in server.sources}
  if learned:
    src = server.sources[0]

    def alone(p):
      src.retrieve(request_queries([p]), 10, server.index)

    out["retriever_alone"] = {"source": src.name, **percentiles(time_each(alone, parsed, len(warm))[len(warm):])}
  load_after = os.getloadavg()
  out.update({"origin": origin, "retriever_epochs": None if (args.run_dir or args.cascade) else args.epochs,
              "export": path, "sources": x["sources"], "candidates_M": x["candidates"],
              "per_source": x["per_source"], "k": 10, "catalogue": x["num_items"], "requests": len(timed),
              "history_items": 50, "target_p99_ms": TARGET_P99_MS,
              "meets_target": out["chain"]["p99_ms"] <= TARGET_P99_MS,
              "replay": {k: replay[k] for k in ("errors", "num_requests", "max_abs_diff")},
              "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
              "cpu_count": os.cpu_count(),
              "thread_env": {v: os.environ.get(v) for v in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                          "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
              "nice": os.nice(0), "build_seconds": round(build_seconds, 1),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
  write_json(args.out, out)
  c, r = out["chain"], out.get("retriever_alone", {})
  print(f"cascade chain ({len(x['sources'])} sources, M={x['candidates']}, top-10): p50 {c['p50_ms']} ms, "
        f"p99 {c['p99_ms']} ms (target {TARGET_P99_MS} ms)")
  for name, s in out["steps"].items():
    if "p50_ms" in s:
      print(f"  {name}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")
    else:
      print(f"  {name}: " + ", ".join(f"{n} p50 {v['p50_ms']} ms" for n, v in s.items()))
  if r:
    print(f"retriever alone ({r['source']}, top-10): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
  print(f"load average before/after: {out['loadavg_before']} / {out['loadavg_after']} on {os.cpu_count()} cores; "
        f"replay max |diff| {replay['max_abs_diff']}, errors {replay['errors']}")
  print(f"-> {args.out}")


if __name__ == "__main__":
  main()
