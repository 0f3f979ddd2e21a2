"""Ranker speed: training examples/s per representation mode, exported-model serving latency.

- training: the sequential protocol on MovieLens (one pass over each training period) for every
  mode at one table budget; examples/s over the whole loop and in steady state (periods 2..N,
  i.e. without the first period, which includes graph tracing). Baseline: ``random_hash`` in the
  same run; ratio = mode examples/s / random_hash examples/s.
- serving: each trained ranker exported with ``export_ranker`` (TF Serving layout) and timed in a clean
  process (``semrec.benchmarks.ranker_latency``): reloaded with ``tf.saved_model.load``, TensorFlow's
  intra-/inter-op pools pinned (``--threads``, default 1 = one core per request as a TF Serving worker
  thread; then 0 = TensorFlow's default pools), called through ``serving_default`` on (a) one request =
  one user (last item, 20-item history, context) x 100 candidates and (b) a batch of 1,000 independent
  rows. After warm-up, ``--rounds`` rounds of calls with the models interleaved (the machine is shared:
  a load change hits every model alike); every call is kept: p50/p95/p99/max over all calls, per-round
  p99 and the median round, the load average before/after each round. Baseline: random_hash; ratio =
  mode latency / baseline. The served eval-period AUC is compared with the in-memory model's (same
  weights). Last, an in-process A/B of the last mode's serving graph: one item-representation call per
  request (current) vs one per slot (previous).

SIDs: residual k-means (``semrec.sid.train_sid_model`` mode rqkmeans, L=3, K=256) of MiniLM text
embeddings of the MovieLens items: from --embeddings (an .npz with ``item_ids`` and ``embeddings``)
or encoded here with ``semrec.encoders.TextEncoder``.

Full: python -m semrec.benchmarks.bench_ranker --embeddings movielens_minilm.npz \\
      [--modes random_hash,spm,spm+hash]
Small: python -m semrec.benchmarks.bench_ranker --quick --embeddings movielens_minilm.npz
Writes benchmarks/results/bench_ranker.json (bench_ranker_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
from tqdm import tqdm

from semrec.ranking.serving import RankerServingModule

_HERE = os.path.dirname(os.path.abspath(__file__))


def movielens_item_features(embeddings_path=None, num_levels: int = 3, codebook_size: int = 256,
                            sid_mode: str = "rqkmeans", seed: int = 0):
  """(MovieLens RecDataset, ItemFeatures with ``sid`` [N, L] and ``content`` [N, D], info dict)."""
  from semrec.data import ItemFeatures, load_movielens
  from semrec.sid.assign import predict_codes
  from semrec.sid import RQVAEConfig, train_sid_model

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


def _to_tensors(feats: dict) -> dict:
  import tensorflow as tf
  return {k: tf.constant(np.asarray(v).astype(str) if np.asarray(v).dtype == object else v) for k, v in feats.items()}


def served_auc(fn, run, examples, cold_mask, batch: int = 1000) -> dict:
  """AUC of the eval period scored through the exported signature, against the in-memory model's
  (``Ranker.call``, the training-time path) with the same weights."""
  from semrec.ranking import evaluate
  from semrec.ranking.metrics import sliced_auc
  scores = []
  for s in range(0, len(examples), batch):
    feats = run.featurizer.features(examples.take(np.arange(s, min(s + batch, len(examples)))))
    scores.append(fn(**_to_tensors(feats))["label"].numpy())
  m = sliced_auc({"label": examples.labels["label"]}, {"label": np.concatenate(scores)}, cold_mask)["label"]
  ref = evaluate(run.model, run.featurizer, examples, cold_mask)["label"]
  return {"served_auc_label": m["auc"], "served_cold_auc_label": m["cold_auc"], "model_auc_label": ref["auc"],
          "served_minus_model_auc": m["auc"] - ref["auc"]}


class PerSlotServing(RankerServingModule):
  """The previous serving graph (baseline): one item-representation call per slot (candidates, last
  item, history), each with its own segmentation, hashing and lookups."""

  def _embed_request(self, f) -> tuple:
    m = self.model
    hist = m.pool_history(f, dedupe=False) if self.uses_history else None
    return m.embed_items(f, "candidate", dedupe=False), m.embed_items(f, "last", dedupe=False), hist


def train_mode(mode: str, data, fi, budget: int) -> tuple:
  """Trains one mode sequentially; (run, training figures incl. steady-state examples/s)."""
  from semrec.ranking import RankerConfig, train_sequential
  from semrec.ranking.experiment import _rep_config
  from semrec.ranking.training import build_item_representation
  rep = _rep_config(mode, budget, fi.arrays["sid"].shape[1], 256, embedding_dim=32,
                    content_dim=fi.arrays["content"].shape[1])
  cfg = RankerConfig(batch_size=512, item_representation=rep)
  run = train_sequential(cfg, item_representation=build_item_representation(rep, data), data=data, progress=False)
  # Steady state: re-time one more pass over periods 2..N with the already traced train function.
  ds_list = [run.featurizer.dataset(ex, cfg.batch_size, shuffle=True, seed=1) for ex in data.train_examples[1:]]
  n_steady = sum(len(ex) for ex in data.train_examples[1:])
  t = time.perf_counter()
  for d in ds_list:
    run.model.fit(d, epochs=1, verbose=0)
  steady = n_steady / (time.perf_counter() - t)
  return run, {"examples_per_second": run.examples_per_second, "steady_examples_per_second": steady,
               "train_examples": run.train_examples, "auc_label": run.metrics["label"]["auc"],
               "cold_auc_label": run.metrics["label"]["cold_auc"]}


def catalogue(fi) -> dict:
  """The item-vector cache of an export: every MovieLens item (id and SID codes)."""
  return {"item_id": fi.item_ids.astype(str), "sid": fi.arrays["sid"]}


def export_and_requests(run, data, fi, export_base: str, name: str, item_cache: bool = True) -> tuple:
  """Exports the ranker (with the catalogue's item-vector cache unless ``item_cache`` is False) and saves
  its serving inputs beside it (``<name>.requests.npz``, read by ``ranker_latency``): one user x 100
  catalogue candidates, the same with 10 candidates replaced by items not in the catalogue, 1,000 rows.
  Returns (serving fn, {kind: tensors})."""
  import tensorflow as tf
  from semrec.export import export_ranker
  from semrec.benchmarks.ranker_latency import save_requests
  ev = data.eval_examples
  rng = np.random.default_rng(0)
  rows = rng.choice(len(ev), size=min(1000, len(ev)), replace=False)
  batch = run.featurizer.features(ev.take(rows))
  cand_rows = rng.choice(len(fi.item_ids), size=100, replace=False)
  request = {k: v for k, v in run.featurizer.features(ev.take(rows[:1])).items() if not k.startswith("candidate_")}
  request["candidate_item_id"] = fi.item_ids[cand_rows].astype(str)
  request["candidate_sid"] = fi.arrays["sid"][cand_rows]
  if "last_content" in request:
    request["candidate_content"] = fi.arrays["content"][cand_rows]
  request_new = dict(request)
  request_new["candidate_item_id"] = request["candidate_item_id"].copy()
  request_new["candidate_item_id"][::10] = [f"new_item_{i}" for i in range(10)]
  cache = catalogue(fi) if item_cache and "last_content" not in request else None
  res = export_ranker(export_base, run.model, batch, name=name, item_cache=cache)
  inputs = {"request": request, "request_new": request_new, "batch": batch}
  save_requests(os.path.join(export_base, f"{name}.requests.npz"), inputs)
  fn = tf.saved_model.load(res.path).signatures["serving_default"]
  return fn, {k: _to_tensors(v) for k, v in inputs.items()}


def serving_graph_ab(model, fi, requests: dict, repeats: int) -> dict:
  """In-process A/B of the serving graph of ``model`` (the last mode, the production one by default),
  interleaved: item-vector cache + one item-representation call per request (current export), one call
  per request without the cache, one call per slot (the graph before both). Scores must be identical."""
  from semrec.benchmarks.ranker_latency import measure
  L, K = int(requests["request"]["candidate_sid"].shape[-1]), int(model.config.item_representation.codebook_size)
  fns = {"cache": RankerServingModule(model, L, K, item_cache=catalogue(fi)).serve,
         "one_call": RankerServingModule(model, L, K).serve, "per_slot": PerSlotServing(model, L, K).serve}
  out = {}
  for kind in ("request", "request_new"):
    req = requests[kind]
    lat = measure({n: (lambda fn=fn: fn(req)) for n, fn in fns.items()}, rounds=1, repeats=repeats, warmup=5)
    outs = {n: fn(req) for n, fn in fns.items()}
    out[kind] = {n: r["all"] for n, r in lat.items()}
    out[kind]["max_abs_score_diff_vs_per_slot"] = {
        n: float(max(np.abs(outs[n][t].numpy() - outs["per_slot"][t].numpy()).max() for t in outs[n]))
        for n in ("cache", "one_call")}
  return out


def print_table(results: dict, modes) -> None:
  base_train = results["training"]["random_hash"]["steady_examples_per_second"]
  base_req = results["serving"]["random_hash"]["request_1_user_100_candidates"]["p50_ms"]
  base_batch = results["serving"]["random_hash"]["batch_1000_rows"]["p50_ms"]
  print(f"serving latency: clean process, threads {results['serving_threads']} (all calls; median-round p99 "
        f"over {results['latency'][0]['rounds']} rounds)")
  print("| mode | train ex/s (all) | train ex/s (steady) | ratio vs hash | 1x100 p50 ms | 1x100 p95 ms | "
        "1x100 p99 ms | 1x100 median-round p99 ms | 1x100 (10 new) p50 / p99 ms | 1000 p50 ms | 1000 p99 ms | "
        "latency ratio (1x100, 1000) | AUC | served - model AUC |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
  for mode in modes:
    tr, sv = results["training"][mode], results["serving"][mode]
    r1, rn, rb = sv["request_1_user_100_candidates"], sv["request_100_candidates_10_new"], sv["batch_1000_rows"]
    tr["ratio_vs_random_hash"] = tr["steady_examples_per_second"] / base_train
    sv["latency_ratio_vs_random_hash"] = {"request": r1["p50_ms"] / base_req, "batch": rb["p50_ms"] / base_batch}
    print(f"| {mode} | {tr['examples_per_second']:.0f} | {tr['steady_examples_per_second']:.0f} | "
          f"{tr['ratio_vs_random_hash']:.2f} | {r1['p50_ms']:.2f} | {r1['p95_ms']:.2f} | {r1['p99_ms']:.2f} | "
          f"{r1['median_round_p99_ms']:.2f} | {rn['p50_ms']:.2f} / {rn['p99_ms']:.2f} | {rb['p50_ms']:.2f} | "
          f"{rb['p99_ms']:.2f} | "
          f"{r1['p50_ms'] / base_req:.2f}, {rb['p50_ms'] / base_batch:.2f} | "
          f"{tr['auc_label']:.4f} | {sv['served_minus_model_auc']:+.1e} |")


def export_name(mode: str) -> str:
  return f"ranker_{mode.replace('+', '_')}"


def serving_latency(export_base: str, modes, threads, rounds: int, repeats: int) -> tuple:
  """(per-thread-setting ``ranker_latency`` results, mode -> shape -> summary of the first setting)."""
  from semrec.benchmarks.ranker_latency import SHAPES, print_summary, run_subprocess
  runs = []
  for t in threads:
    runs.append(run_subprocess(export_base, t, rounds, repeats))
    print_summary(runs[-1])
  head = runs[0]
  names = {m: export_name(m) for m in modes}
  if export_name(modes[-1]) + "_nocache" in head[next(iter(SHAPES))]:
    names[modes[-1] + " (no item cache)"] = export_name(modes[-1]) + "_nocache"
  per_mode = {m: {shape: {**head[shape][n]["all"], "median_round_p99_ms": head[shape][n]["median_round_p99_ms"]}
                  for shape in SHAPES} for m, n in names.items()}
  return runs, per_mode


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="3 modes, 4 periods")
  p.add_argument("--embeddings", default=None, help=".npz with item_ids and embeddings (MovieLens items)")
  p.add_argument("--budget", type=int, default=4096, help="embedding-table budget of every mode")
  p.add_argument("--repeats", type=int, default=300, help="1x100 requests per model per latency round")
  p.add_argument("--rounds", type=int, default=7, help="latency rounds (per-round p99 and the median round)")
  p.add_argument("--threads", default="1,0",
                 help="TF intra/inter-op threads of the serving process, one latency run each (0 = TF default); "
                      "the first is the headline")
  p.add_argument("--export-dir", default=None,
                 help="keep the exports and requests here (rerun latency alone with ranker_latency); default: temp")
  p.add_argument("--modes", default=None, help="comma-separated (default: all; quick random_hash,unigram,spm)")
  p.add_argument("--no-cache", action="store_true", help="export without the item-vector cache")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  import tensorflow as tf
  from semrec.ranking import ALL_MODES, prepare_sequential
  modes = tuple(args.modes.split(",")) if args.modes else (("random_hash", "unigram", "spm") if args.quick
                                                           else ALL_MODES)
  if "random_hash" not in modes:
    raise SystemExit("--modes must include the random_hash baseline")
  threads = [int(t) for t in args.threads.split(",")]
  num_periods = 4 if args.quick else 10
  ds, fi, sid_info = movielens_item_features(args.embeddings)
  inter = ds.interactions
  if args.quick:  # the most recent 30% of the log
    inter = inter.iloc[int(len(inter) * 0.7):].reset_index(drop=True)
  data = prepare_sequential(inter, fi, num_periods=num_periods, history_length=20)
  results = {"training": {}, "serving": {}}
  export_base = args.export_dir or tempfile.mkdtemp(prefix="bench_ranker_")
  if args.export_dir:
    shutil.rmtree(export_base, ignore_errors=True)
  served, models = {}, {}
  for mode in tqdm(modes, desc="modes"):
    run, results["training"][mode] = train_mode(mode, data, fi, args.budget)
    models[mode] = run.model
    served[mode] = export_and_requests(run, data, fi, export_base, export_name(mode), item_cache=not args.no_cache)
    if mode == modes[-1] and not args.no_cache:  # the production mode also without the cache, same latency run
      export_and_requests(run, data, fi, export_base, export_name(mode) + "_nocache", item_cache=False)
    results["serving"][mode] = served_auc(served[mode][0], run, data.eval_examples, data.cold_mask)
  results["serving_graph_ab"] = serving_graph_ab(models[modes[-1]], fi, served[modes[-1]][1], args.repeats)
  # Latency after all training, in a clean process, models interleaved (the machine is shared).
  results["latency"], per_mode = serving_latency(export_base, modes, threads, args.rounds, args.repeats)
  results["serving_threads"] = threads[0]
  for m, lat in per_mode.items():
    results["serving"].setdefault(m, {}).update(lat)
  if not args.export_dir:
    shutil.rmtree(export_base, ignore_errors=True)
  print(f"\nMovieLens, budget {args.budget}, {len(data.train_examples)} training periods "
        f"({sum(len(e) for e in data.train_examples)} examples), SIDs: {sid_info}")
  print_table(results, modes)
  nc = results["serving"].get(modes[-1] + " (no item cache)")
  if nc:
    print(f"{modes[-1]} exported without the item-vector cache, same latency run: " + ", ".join(
        f"{k}: p50 {v['p50_ms']:.2f} / p99 {v['p99_ms']:.2f} ms" for k, v in nc.items()))
  print(f"serving graph A/B, {modes[-1]}, 1 user x 100 candidates, in process: {results['serving_graph_ab']}")
  out = args.out or os.path.join(_HERE, "results", "bench_ranker_quick.json" if args.quick else "bench_ranker.json")
  from semrec.atomic import write_json
  write_json(out, {"quick": args.quick, "budget": args.budget, "num_periods": num_periods,
                   "sids": sid_info, "cpus": os.cpu_count(), "platform": platform.platform(),
                   "tensorflow": tf.__version__, "baseline": "random_hash", **results}, indent=1)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
