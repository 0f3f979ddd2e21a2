"""Non-learned baselines on the development benchmarks: reproduction of the reference figures + cold_items.

  python -m semrec.benchmarks.bench_baselines                  # popularity + transition + content kNN (MiniLM)
  python -m semrec.benchmarks.bench_baselines --no-encoder     # popularity + transition only (seconds)

Loads ``<data-dir>/{scientific,microlens}`` (semrec's generic format, implicit feedback, timestamp = position)
with ``semrec.data.load_generic``; ``--movielens`` adds the bundled MovieLens. For each set:
  * ``leave_one_out``, test stage, all users, full ranking, history excluded: popularity and transition R@10 /
    NDCG@10 against the reference figures of the dev-benchmarks README (must match within 0.002);
  * content kNN (MiniLM embeddings of the item texts, cached under ``--cache-dir``, default ~/.cache/semrec)
    on ``leave_one_out``, with its recency decay chosen on the validation stage among ``--knn-decays``;
  * the same baselines on ``cold_items`` (20% of the items held out, seed 0; popularity / transition have no
    signal on unseen items and fall back to catalogue order: what a non-content recommender does), and on
    ``temporal`` for MovieLens (real timestamps; the dev sets' timestamps are positions).
Prints a table and writes benchmarks/results/baselines_dev.json.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np

from semrec.atomic import save_npy

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEV_SETS = ("scientific", "microlens")
# dev-benchmarks/README.md: leave-one-out, test split, all users; (Recall@10, NDCG@10).
REFERENCE = {"scientific": {"popularity": (0.0316, 0.0180), "transition": (0.0823, 0.0595)},
             "microlens": {"popularity": (0.0074, 0.0041), "transition": (0.0712, 0.0458)}}
TOLERANCE = 0.002


def default_dev_dir() -> str:
  """``$SEMREC_DEV_BENCHMARKS``, else the first ``shared/data/dev-benchmarks`` beside the repository or one of
  its parent folders (``../shared/...`` for a checkout next to ``shared``); "" when none exists."""
  if os.environ.get("SEMREC_DEV_BENCHMARKS"):
    return os.environ["SEMREC_DEV_BENCHMARKS"]
  d = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the repository root
  while os.path.dirname(d) != d:
    d = os.path.dirname(d)
    cand = os.path.join(d, "shared", "data", "dev-benchmarks")
    if os.path.isdir(cand):
      return cand
  return ""


def load_dev_set(root: str, name: str):
  """A dev benchmark as a ``RecDataset`` (implicit interactions; item text column ``text``)."""
  from semrec.data import load_generic
  d = os.path.join(root, name)
  return load_generic(os.path.join(d, "interactions.csv"), os.path.join(d, "items.csv"), text_columns=("text",),
                      name=name)


def reproduce_reference(dataset, split=None) -> dict:
  """{baseline: {"recall@10", "ndcg@10", "reference": [r, n], "abs_diff": max |diff|, "ok"}} for one dev set."""
  from semrec.data import make_split
  from semrec.towers.baselines import evaluate_baselines
  split = split or make_split(dataset, "leave_one_out")
  got = evaluate_baselines(split, dataset.item_ids, names=("popularity", "transition"), ks=(10,), ndcg_ks=(10,))
  out = {}
  for name, (ref_r, ref_n) in REFERENCE[dataset.name].items():
    m = got[name]["overall"]
    diff = max(abs(m["recall@10"] - ref_r), abs(m["ndcg@10"] - ref_n))
    out[name] = {"recall@10": m["recall@10"], "ndcg@10": m["ndcg@10"], "reference": [ref_r, ref_n],
                 "abs_diff": diff, "ok": bool(diff <= TOLERANCE)}
  return out


def content_embeddings(dataset, cache_dir: str) -> np.ndarray:
  """[N, 384] MiniLM embeddings of the item texts, cached by a hash of the texts (outside the repository)."""
  from semrec.encoders import TextEncoder
  texts = [t if t.strip() else str(i) for t, i in zip(dataset.item_texts(), dataset.item_ids)]
  key = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
  path = os.path.join(cache_dir, "baseline-embeddings", f"{dataset.name}-minilm-{key}.npy")
  if os.path.exists(path):
    return np.load(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t0 = time.time()
  emb = TextEncoder().encode(texts, item_ids=list(dataset.item_ids)).astype(np.float32)
  print(f"  encoded {len(texts)} {dataset.name} texts with MiniLM in {time.time() - t0:.0f}s -> {path}")
  save_npy(path, emb)
  return emb


def _row(metrics: dict) -> dict:
  keep = ("recall@5", "recall@10", "recall@20", "recall@50", "recall@100", "ndcg@5", "ndcg@10", "queries")
  return {s: {k: m[k] for k in keep} for s, m in metrics.items()}


def run_set(dataset, content, decays, cold_fraction: float, seed: int) -> dict:
  """LOO + cold_items baseline tables for one dataset (content kNN only when ``content`` is given)."""
  from semrec.data import make_split
  from semrec.towers.baselines import evaluate_baselines
  out = {"dataset": dataset.summary()}
  loo = make_split(dataset, "leave_one_out")
  out["reproduction"] = reproduce_reference(dataset, loo) if dataset.name in REFERENCE else None
  decay = None
  if content is not None:
    sweep = {str(d): evaluate_baselines(loo, dataset.item_ids, content, stage="valid", names=("content_knn",),
                                        knn_decay=d)["content_knn"]["overall"]["recall@10"] for d in decays}
    decay = float(max(decays, key=lambda d: sweep[str(d)]))
    out["knn_decay_valid_recall@10"] = sweep
  out["knn_decay"] = decay
  splits = [("leave_one_out", loo),
            ("cold_items", make_split(dataset, "cold_items", cold_fraction=cold_fraction, seed=seed))]
  if dataset.name not in REFERENCE:  # real timestamps (the dev sets' timestamps are positions)
    splits.append(("temporal", make_split(dataset, "temporal")))
  for kind, split in splits:
    t0 = time.time()
    res = evaluate_baselines(split, dataset.item_ids, content, knn_decay=decay or 0.5)
    out[kind] = {"split": split.summary(), "seconds": round(time.time() - t0, 1),
                 "baselines": {n: _row(m) for n, m in res.items()}}
  return out


def _print(name: str, res: dict):
  rep = res.get("reproduction") or {}
  for kind in ("leave_one_out", "cold_items", "temporal"):
    for base, m in res.get(kind, {}).get("baselines", {}).items():
      o = m["overall"]
      ref = rep.get(base) if kind == "leave_one_out" else None
      ref_s = f"  ref {ref['reference'][0]:.4f} / {ref['reference'][1]:.4f} ({'ok' if ref['ok'] else 'MISMATCH'})" \
          if ref else ""
      print(f"{name:11s} {kind:14s} {base:12s} R@10 {o['recall@10']:.4f}  NDCG@10 {o['ndcg@10']:.4f}  "
            f"R@100 {o['recall@100']:.4f}  queries {o['queries']}{ref_s}")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--data-dir", default=default_dev_dir())
  ap.add_argument("--sets", default=",".join(DEV_SETS))
  ap.add_argument("--movielens", action="store_true", help="also the bundled MovieLens")
  ap.add_argument("--no-encoder", action="store_true", help="skip content kNN (no MiniLM encoding)")
  ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "semrec"))
  ap.add_argument("--knn-decays", default="1.0,0.8,0.5")
  ap.add_argument("--cold-fraction", type=float, default=0.2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=os.path.join(RESULTS, "baselines_dev.json"))
  args = ap.parse_args(argv)
  from semrec.atomic import write_json
  from semrec.data import load_movielens
  if not os.path.isdir(args.data_dir):
    raise SystemExit(f"dev benchmarks not found at {args.data_dir} (set --data-dir or SEMREC_DEV_BENCHMARKS)")
  decays = [float(d) for d in args.knn_decays.split(",")]
  results, t_start = {}, time.time()
  names = [s for s in args.sets.split(",") if s] + (["movielens"] if args.movielens else [])
  for name in names:
    ds = load_movielens() if name == "movielens" else load_dev_set(args.data_dir, name)
    content = None if args.no_encoder else content_embeddings(ds, args.cache_dir)
    results[name] = run_set(ds, content, decays, args.cold_fraction, args.seed)
    _print(name, results[name])
  payload = {"command": "python -m semrec.benchmarks.bench_baselines" + (" --no-encoder" if args.no_encoder else "")
             + (" --movielens" if args.movielens else ""), "tolerance": TOLERANCE, "cold_fraction": args.cold_fraction,
             "seed": args.seed, "seconds": round(time.time() - t_start, 1), "results": results}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  write_json(args.out, payload)
  print(f"wrote {args.out}")
  bad = [f"{n}/{b}" for n, r in results.items() for b, v in (r.get("reproduction") or {}).items() if not v["ok"]]
  if bad:
    raise SystemExit(f"reference figures not reproduced within {TOLERANCE}: {bad}")


if __name__ == "__main__":
  main()
