"""Scale-out throughput: Beam encode and SID assignment at 1, 2, 4 FnApiRunner workers vs the in-process path,
peak RSS per worker, and MWMS retriever training examples/s at 1 and 2 workers -- all in one run.

  nice -n 10 python -m semrec.benchmarks.bench_scale            # writes benchmarks/results/bench_scale.json

Each measurement runs in a fresh child process: ``driver_rss_mb`` is its peak RSS (VmHWM), ``worker_rss_mb``
the sampled (every 0.3 s) peak RSS of each of its Beam SDK worker processes (multi_processing; in-process and
1-worker runs execute in the driver, so the list is empty). Encode: the synthetic world with image + audio encoders (seeded random ResNet-18
at 32 px, VGGish-small), one Beam task per shard. Assign: an RQ-KMeans SID model over a random store. Items/s
include pipeline start-up and per-worker model loading (what a user pays for a job of that size). The machine
load average is recorded before and after each measurement: on a shared 2-core box the figures for > 2
workers measure contention, not scaling.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ENCODER = dict(modalities=("image", "audio"), image_weights="random", image_architecture="resnet18", image_size=32,
               audio_weights="random", audio_architecture="vggish-small")


def _status_kb(pid, key: str) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def _descendants(root: int) -> list:
  children = {}
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        with open(f"/proc/{d}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(ppid, []).append(int(d))
  out, todo = [], [root]
  while todo:
    for c in children.get(todo.pop(), []):
      out.append(c)
      todo.append(c)
  return out


class _PeakRss:
  """Samples the resident memory of this process's descendants (Beam SDK workers) every 0.3 s."""

  def __enter__(self):
    import threading
    self.peaks, self._stop = {}, threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.wait(0.3):
      for pid in _descendants(os.getpid()):
        self.peaks[pid] = max(self.peaks.get(pid, 0), _status_kb(pid, "VmRSS"))

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def result(self) -> dict:
    workers = [v for v in self.peaks.values() if v > 100 * 1024]  # SDK workers hold TF: > 100 MB
    return {"driver_rss_mb": _status_kb("self", "VmHWM") / 1024,
            "worker_rss_mb": [round(v / 1024) for v in sorted(workers, reverse=True)]}


def _child_encode(work: str, runner: str, workers: int, items: int, shard: int) -> dict:
  from semrec.data import SyntheticConfig, make_synthetic
  from semrec.encoders import EncoderConfig, build_encoder, encode_corpus
  ds = make_synthetic(SyntheticConfig(output_dir=os.path.join(work, "world"), num_items=items, num_users=20,
                                      num_topics=4, num_days=4, impressions_per_user_per_day=2, seed=0))
  cfg = EncoderConfig(**ENCODER)
  out = os.path.join(work, f"store-{runner}-{workers}")
  shutil.rmtree(out, ignore_errors=True)  # measure a full encode, not a resume
  t = time.perf_counter()
  if runner == "inprocess":
    encode_corpus(ds, build_encoder(cfg), out, shard_size=shard, progress=False)
  else:
    from semrec.beam import encode_pipeline
    encode_pipeline(ds, cfg, out, shard_size=shard, num_workers=workers)
  return {"seconds": time.perf_counter() - t, "items": items}


def random_store(path: str, n: int, dim: int, shard: int):
  """A complete embedding store of n random unit vectors (written through the store's own functions)."""
  import numpy as np
  from semrec.encoders import EncodedBatch, ItemContent, StorePlan, finalize_store, prepare_store, write_shard
  from semrec.encoders.store import FORMAT, _content_hash, shard_name
  if os.path.isfile(os.path.join(path, "manifest.json")):
    return
  rng = np.random.default_rng(0)
  contents = [ItemContent(f"i{i}") for i in range(n)]
  num = -(-n // shard)
  info = {"modality_order": ["text"], "dim": dim, "random": True}
  plan = StorePlan(contents, shard, num, {"format": FORMAT, "plan_key": "bench", "complete": False,
                                          "dataset": {"name": "random", "fingerprint": "0", "num_items": n},
                                          "encoder": info, "shard_size": shard, "num_shards": num})
  prepare_store(plan, path)
  results = []
  for s in range(num):
    lo, hi = plan.shard_range(s)
    x = rng.normal(size=(hi - lo, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    b = EncodedBatch(np.array([c.item_id for c in contents[lo:hi]], object), x, np.ones((hi - lo, 1), np.float32), [])
    write_shard(os.path.join(path, shard_name(s, num)), b)
    results.append({"index": s, "file": shard_name(s, num), "num_items": hi - lo,
                    "content_sha256": _content_hash(b.item_ids, b.embeddings, b.mask), "fallbacks": []})
  finalize_store(plan, path, results)


def _child_assign(work: str, runner: str, workers: int, items: int, shard: int) -> dict:
  from semrec.encoders import EmbeddingStore
  from semrec.sid import SidModel, assign_sids
  store, model = os.path.join(work, "rstore"), os.path.join(work, "sidmodel")
  out = os.path.join(work, f"assign-{runner}-{workers}")
  shutil.rmtree(out, ignore_errors=True)
  t = time.perf_counter()
  if runner == "inprocess":
    assign_sids(EmbeddingStore(store), SidModel.load(model).assigner, out, shard_size=shard, suffix=True,
                progress=False)
  else:
    from semrec.beam import assign_pipeline
    assign_pipeline(store, model, out, shard_size=shard, suffix=True, num_workers=workers)
  return {"seconds": time.perf_counter() - t, "items": items}


def _prepare_assign(work: str, items: int, dim: int, shard: int):
  from semrec.encoders import EmbeddingStore
  from semrec.sid import RQVAEConfig, train_sid_model
  random_store(os.path.join(work, "rstore"), items, dim, shard)
  x = EmbeddingStore(os.path.join(work, "rstore")).load().embeddings
  train_sid_model(x, RQVAEConfig(mode="rqkmeans", num_levels=3, codebook_size=64, kmeans_sample_size=20000),
                  progress=False).save(os.path.join(work, "sidmodel"))


def _measure(args_list) -> dict:
  load0 = os.getloadavg()[0]
  proc = subprocess.run([sys.executable, "-m", "semrec.benchmarks.bench_scale", "--child"] + args_list,
                        capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"bench child {args_list} failed:\n{proc.stderr[-3000:]}")
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  res.update(load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
  return res


def _mwms(work: str, workers: int, rows: int, epochs: int) -> dict:
  from semrec.towers.distributed import launch_workers
  out = os.path.join(work, f"mwms-{workers}")
  shutil.rmtree(out, ignore_errors=True)
  cmd = [sys.executable, "-m", "semrec.benchmarks.dist_retriever", "--strategy", "mwms", "--out", out,
         "--rows", str(rows), "--epochs", str(epochs), "--batch-size", "256"]
  load0 = os.getloadavg()[0]
  rc = launch_workers(cmd, num_workers=workers, log_dir=os.path.join(work, f"mwms-{workers}-logs"), timeout=1800)
  if rc != 0:
    raise RuntimeError(f"MWMS x{workers} failed: see {work}/mwms-{workers}-logs")
  import numpy as np
  r = np.load(os.path.join(out, "result.npz"))
  ex = int(r["examples"])
  return {"workers": workers, "examples": ex, "fit_seconds": float(r["fit_seconds"]),
          "examples_per_s": ex / float(r["fit_seconds"]), "load_before": round(load0, 2),
          "load_after": round(os.getloadavg()[0], 2)}


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--child", nargs=5, metavar=("JOB", "WORK", "RUNNER", "WORKERS", "ITEMS"))
  ap.add_argument("--encode-items", type=int, default=480)
  ap.add_argument("--encode-shard", type=int, default=60)
  ap.add_argument("--assign-items", type=int, default=200_000)
  ap.add_argument("--assign-shard", type=int, default=25_000)
  ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
  ap.add_argument("--mwms-rows", type=int, default=8192)
  ap.add_argument("--mwms-epochs", type=int, default=2)
  ap.add_argument("--work-dir", default=None)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                "bench_scale.json"))
  args = ap.parse_args(argv)
  if args.child:
    job, work, runner, workers, items = args.child
    fn = _child_encode if job == "encode" else _child_assign
    shard = args.encode_shard if job == "encode" else args.assign_shard
    with _PeakRss() as peak:
      res = fn(work, runner, int(workers), int(items), shard)
    print(json.dumps(dict(res, **peak.result())))
    return

  work = args.work_dir or tempfile.mkdtemp(prefix="bench_scale-")
  _prepare_assign(work, args.assign_items, 64, args.assign_shard)
  rows = []
  for job, items in (("encode", args.encode_items), ("assign", args.assign_items)):
    for runner, workers in [("inprocess", 1)] + [("direct", w) for w in args.workers]:
      r = _measure([job, work, runner, str(workers), str(items)])
      r.update(job=job, runner=runner, workers=workers, items_per_s=r["items"] / r["seconds"])
      rows.append(r)
      print(f"{job:6s} {runner:9s} x{workers}: {r['items_per_s']:9.1f} items/s ({r['seconds']:.1f} s), "
            f"driver peak {r['driver_rss_mb']:.0f} MB, worker peaks {r['worker_rss_mb']} MB, "
            f"load {r['load_before']}->{r['load_after']}", flush=True)
  mwms = []
  for w in (1, 2):
    m = _mwms(work, w, args.mwms_rows, args.mwms_epochs)
    mwms.append(m)
    print(f"MWMS x{w}: {m['examples_per_s']:.0f} examples/s ({m['fit_seconds']:.1f} s fit), "
          f"load {m['load_before']}->{m['load_after']}", flush=True)
  result = {"benchmark": "bench_scale", "command": "nice -n 10 python -m semrec.benchmarks.bench_scale",
            "cpu_count": os.cpu_count(), "config": {k: v for k, v in vars(args).items() if k not in ("child",)},
            "batch_jobs": rows, "mwms": mwms}
  from semrec.atomic import write_json
  write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
