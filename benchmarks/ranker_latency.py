"""Serving latency of exported rankers, measured in a clean process from the reloaded SavedModels.

The process imports only TensorFlow and NumPy (no semrec model code), pins TensorFlow's intra-op and
inter-op thread pools (``--threads``, default 1: one request runs on one core, as a TF Serving worker
thread would run it; 0 = TensorFlow's default pools), loads every ``<export_base>/<name>/<version>/``
SavedModel with ``tf.saved_model.load`` and calls its ``serving_default`` signature on the saved requests
(``<export_base>/<name>.requests.npz``, written by ``bench_ranker``):

- ``request_1_user_100_candidates``: one user (last item, 20-item history, context) x 100 catalogue candidates;
- ``request_100_candidates_10_new``: the same with 10 candidates replaced by items not in the catalogue (for
  an export with an item-vector cache, the path that embeds the missing items);
- ``batch_1000_rows``: 1,000 independent rows.

Timing: after warm-up calls, ``--rounds`` rounds; in each round every model gets ``--repeats`` calls of each
request and ``--repeats // 5`` batches, every (model, input) interleaved in chunks of calls (10 requests or 2
batches at a time, so a load change on the shared machine hits every model and input alike). Every timed call is kept: per round p50/p95/p99/max and the load
average (``os.getloadavg``) before and after the round; over the whole run p50/p95/p99/max of all calls
pooled, and the median over rounds of the per-round p99.

  python -m semrec.benchmarks.ranker_latency /tmp/bench_ranker_exports [--threads 1] [--rounds 7]
Writes benchmarks/results/ranker_latency.json (or --out).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
NOOP = "noop_signature"  # reference: a SavedModel signature with the same inputs that does no work
# shape -> (saved input kind, repeats divisor)
SHAPES = {"request_1_user_100_candidates": ("request", 1), "request_100_candidates_10_new": ("request_new", 1),
          "batch_1000_rows": ("batch", 5)}  # a batch is timed 1/5 as often as a request


def configure_threads(threads: int) -> None:
  """Pins TensorFlow's intra-/inter-op pools to ``threads`` (0 = TF default); before any op runs."""
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)


def summarize(ms: np.ndarray) -> dict:
  """p50/p95/p99/max (milliseconds) and the count of ``ms`` (every call, none dropped)."""
  q = np.percentile(ms, [50, 95, 99])
  return {"p50_ms": float(q[0]), "p95_ms": float(q[1]), "p99_ms": float(q[2]), "max_ms": float(ms.max()),
          "calls": int(len(ms))}


def interleaved_times(calls: dict, steps: int, chunk: dict) -> dict:
  """name -> [steps * chunk[name]] milliseconds: ``steps`` times, ``chunk[name]`` timed calls of each name in
  turn (names interleaved, so a load change on the shared machine hits all alike). No warm-up here."""
  from semrec.benchmarks.timing import call_times
  times = {n: [] for n in calls}
  for _ in range(steps):
    for n, fn in calls.items():
      times[n].append(call_times(fn, chunk[n], warmup=0))
  return {n: np.concatenate(ts) * 1e3 for n, ts in times.items()}


def measure(calls: dict, rounds: int, repeats: int, chunk=10, warmup: int = 20) -> dict:
  """name -> {"rounds": [per-round summary + load average], "all": pooled summary, "median_round_p99_ms"}.

  ``chunk``: calls per interleaving step, one int or name -> int; each round has ceil(repeats / largest
  chunk) steps (e.g. 300 repeats, chunk 10 for a request and 2 for a batch: 300 requests and 60 batches)."""
  from semrec.benchmarks.timing import call_times
  chunk = dict(chunk) if isinstance(chunk, dict) else {n: int(chunk) for n in calls}
  steps = max(-(-repeats // max(chunk.values())), 1)
  for fn in calls.values():
    call_times(fn, 0, warmup=warmup)
  per_round = {n: [] for n in calls}
  for _ in range(rounds):
    load_before = os.getloadavg()
    ms = interleaved_times(calls, steps, chunk)
    load_after = os.getloadavg()
    for n in calls:
      per_round[n].append({**summarize(ms[n]), "load_before": load_before, "load_after": load_after,
                           "_ms": ms[n]})
  out = {}
  for n, rs in per_round.items():
    pooled = np.concatenate([r.pop("_ms") for r in rs])
    out[n] = {"all": summarize(pooled), "median_round_p99_ms": float(np.median([r["p99_ms"] for r in rs])),
              "rounds": rs}
  return out


def load_exports(export_base: str) -> dict:
  """name -> (serving_default fn, {"request": tensors, "batch": tensors}) for every exported model that
  has a ``<name>.requests.npz`` beside it (the latest version directory of each)."""
  import tensorflow as tf
  out = {}
  for req_path in sorted(glob.glob(os.path.join(export_base, "*.requests.npz"))):
    name = os.path.basename(req_path)[:-len(".requests.npz")]
    versions = sorted(glob.glob(os.path.join(export_base, name, "[0-9]*")), key=lambda p: int(os.path.basename(p)))
    if not versions:
      raise FileNotFoundError(f"{export_base}/{name}: no SavedModel version directory beside {req_path}")
    fn = tf.saved_model.load(versions[-1]).signatures["serving_default"]
    z = np.load(req_path, allow_pickle=False)
    inputs = {kind: {k.split("/", 1)[1]: tf.constant(z[k]) for k in z.files if k.startswith(kind + "/")}
              for kind, _ in SHAPES.values()}
    out[name] = (fn, inputs)
  if not out:
    raise FileNotFoundError(f"{export_base}: no <name>.requests.npz beside the exported rankers")
  return out


def noop_model(specs: dict, path: str):
  """A SavedModel with the given ``serving_default`` input signature that does no work (its output is
  zeros over the candidates), saved at ``path`` and reloaded: the floor of a signature call on this
  machine (Python dispatch + scheduling), timed in the same rounds as the rankers."""
  import tensorflow as tf

  class Noop(tf.Module):
    @tf.function(input_signature=[dict(specs)])
    def serve(self, f):
      return {"label": tf.zeros(tf.shape(f["candidate_item_id"]), tf.float32)}

  m = Noop()
  tf.saved_model.save(m, path, signatures={"serving_default": m.serve.get_concrete_function()})
  return tf.saved_model.load(path).signatures["serving_default"]


def save_requests(path: str, inputs: dict) -> None:
  """Writes the serving inputs of one model, ``{kind: {feature: array}}``, as ``<kind>/<feature>`` arrays."""
  import io
  from semrec.atomic import write_bytes
  arrays = {f"{kind}/{k}": np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v)
            for kind, feats in inputs.items() for k, v in feats.items()}
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def run(export_base: str, threads: int = 1, rounds: int = 7, repeats: int = 300) -> dict:
  """Latency of every exported ranker under ``export_base`` (see the module docstring)."""
  configure_threads(threads)
  import tensorflow as tf
  t = time.perf_counter()
  models = load_exports(export_base)
  load_seconds = time.perf_counter() - t
  first = next(iter(models.values()))
  res = {"threads": threads, "rounds": rounds, "repeats": repeats, "reference": NOOP,
         "load_seconds": load_seconds, "load_average_start": os.getloadavg(), "cpus": os.cpu_count(),
         "platform": platform.platform(), "tensorflow": tf.__version__}
  with tempfile.TemporaryDirectory() as tmp:  # the no-op reference, same inputs as the first model
    models[NOOP] = (noop_model(first[0].structured_input_signature[1], os.path.join(tmp, "noop")), first[1])
    res["models"] = sorted(models)
    calls, chunk = {}, {}  # every (shape, model) interleaved in the same rounds
    for shape, (kind, div) in SHAPES.items():
      for n, (fn, inp) in models.items():
        calls[(shape, n)] = lambda fn=fn, x=inp[kind]: fn(**x)
        chunk[(shape, n)] = max(10 // div, 1)
    timed = measure(calls, rounds, repeats, chunk)
    for shape in SHAPES:
      res[shape] = {n: timed[(shape, n)] for n in models}
  res["load_average_end"] = os.getloadavg()
  return res


def run_subprocess(export_base: str, threads: int, rounds: int, repeats: int) -> dict:
  """:func:`run` in a fresh Python process (clean TensorFlow runtime, so the thread pools can be pinned)."""
  import subprocess
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "latency.json")
    cmd = [sys.executable, "-m", "semrec.benchmarks.ranker_latency", export_base, "--threads", str(threads),
           "--rounds", str(rounds), "--repeats", str(repeats), "--out", out, "--quiet"]
    subprocess.run(cmd, check=True)
    with open(out) as f:
      return json.load(f)


def print_summary(res: dict) -> None:
  print(f"threads {res['threads']}, {res['rounds']} rounds; load average start {res['load_average_start']}, "
        f"end {res['load_average_end']}")
  print("| model | shape | p50 ms | p95 ms | p99 ms | max ms | calls | per-round p99 ms | median-round p99 ms |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
  for shape in SHAPES:
    for n, r in res[shape].items():
      a = r["all"]
      rounds = ", ".join(f"{x['p99_ms']:.1f}" for x in r["rounds"])
      print(f"| {n} | {shape} | {a['p50_ms']:.2f} | {a['p95_ms']:.2f} | {a['p99_ms']:.2f} | {a['max_ms']:.1f} | "
            f"{a['calls']} | {rounds} | {r['median_round_p99_ms']:.2f} |")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("export_base", help="directory holding <name>/<version>/ SavedModels and <name>.requests.npz")
  p.add_argument("--threads", type=int, default=1, help="intra- and inter-op threads (0 = TensorFlow default)")
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--repeats", type=int, default=300, help="1x100 requests per model per round (batches: / 5)")
  p.add_argument("--out", default=os.path.join(_HERE, "results", "ranker_latency.json"))
  p.add_argument("--quiet", action="store_true")
  args = p.parse_args(argv)
  res = run(args.export_base, args.threads, args.rounds, args.repeats)
  if not args.quiet:
    print_summary(res)
  from semrec.atomic import write_json
  write_json(args.out, res, indent=1)
  if not args.quiet:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
