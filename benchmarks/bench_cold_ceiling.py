"""What content alone can do for new items: non-learned and linear scorers on the ``cold_items`` split.

  python -m semrec.benchmarks.bench_cold_ceiling                      # scientific, microlens, movielens; 3 seeds
  python -m semrec.benchmarks.bench_cold_ceiling --sets scientific --seeds 0

Issue 17 asks the served retriever to reach 1.2x the content-kNN baseline's cold Recall@10. This benchmark
measures how far simple content-only scorers get on the same splits (``semrec.data.make_split(..., "cold_items",
seed)``, the same seeds as ``bench_retrieval``), so a gap can be read as "the model" or "the content":

  content_knn          the baseline: cosine of MiniLM rows, recency-weighted history (decay chosen on validation)
  residual64_knn       the same through the top-64 content directions (``semrec.towers.content_basis``): what the
                       cold-aware tower's frozen 64-d content residual scores before any training
  centred_knn          the same after subtracting the catalogue mean of the L2-normalised rows
  lexical_knn          TF-IDF (sublinear tf) of the item text, reduced to 384 dims (truncated SVD), cosine kNN
  centred+lexical_knn  both, concatenated
  content_knn_max      the MiniLM rows, but a candidate scores its best cosine to any of the last 10 history items
                       (``ContentKnnBaseline(pooling="max")``): the content part of the served multi-interest mix
  centred+lexical_knn_max  the same over centred+lexical rows
  linear_transfer      centred+lexical_knn plus a ridge map W fitted on the warm training sequences
                       (history vector -> next item's vector): score = u.z + beta * (u W).z, beta and the ridge
                       strength chosen on validation (beta = 0 allowed) -- a test of whether what warm users do
                       next transfers to new items through the content space at all

Every scorer ranks each user's held-out items among the held-out items only, exactly as the baseline rows of
``bench_retrieval`` do. The learned served variant's figure is copied from ``results/bench_retrieval.json``
(same split and seed) when present. Writes ``benchmarks/results/bench_cold_ceiling.json``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.benchmarks.bench_baselines import content_embeddings, default_dev_dir

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CACHE = os.path.expanduser("~/.cache/semrec")
SCORERS = ("content_knn", "residual64_knn", "centred_knn", "lexical_knn", "centred+lexical_knn", "content_knn_max",
           "centred+lexical_knn_max", "linear_transfer")
MAX_POOLED = ("content_knn", "centred+lexical_knn")  # also scored with pooling="max" (name + "_max")


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def lexical_vectors(texts, dim: int = 384, seed: int = 0) -> np.ndarray:
  """[N, dim] lexical item vectors (``semrec.encoders.LexicalEncoder``, the content mix's lexical channel)."""
  from semrec.encoders import LexicalEncoder, LexicalEncoderConfig
  return LexicalEncoder(LexicalEncoderConfig(dim=dim, seed=seed)).fit(texts).encode(texts)


def representations(content: np.ndarray, texts, residual_dim: int = 64) -> dict:
  """{scorer name: [N, D] item vectors} of the kNN scorers."""
  from semrec.towers.residual import content_basis
  unit = _unit(np.asarray(content, np.float64))
  centred = _unit(unit - unit.mean(axis=0))
  lexical = lexical_vectors(texts)
  return {"content_knn": content, "residual64_knn": unit @ content_basis(content, residual_dim),
          "centred_knn": centred, "lexical_knn": lexical,
          "centred+lexical_knn": np.concatenate([centred, lexical], axis=1)}


def _train_pairs(split, index, num_recent: int):
  """([P, H] history rows (N = padding, most recent last), [P] target rows) of every next-item step in the
  warm training sequences."""
  hist, target = [], []
  pad = len(index)
  for seq in split.train_sequences().values():
    rows = index.get_indexer(seq)
    for t in range(1, len(rows)):
      h = rows[max(0, t - num_recent):t]
      hist.append(np.concatenate([np.full(num_recent - len(h), pad), h]))
      target.append(rows[t])
  return np.asarray(hist, np.int64), np.asarray(target, np.int64)


def linear_transfer(split, item_ids, z: np.ndarray, decay: float, num_recent: int = 10,
                    lambdas=(1.0, 10.0, 100.0), betas=(0.0, 0.25, 0.5, 1.0)) -> dict:
  """Validation-chosen (lambda, beta) of the ridge transfer scorer on ``z`` and its valid/test metrics."""
  import pandas as pd

  from semrec.towers.baselines import ContentKnnBaseline
  from semrec.towers.evaluation import evaluate_scores
  knn = ContentKnnBaseline(num_recent, decay).fit(split, item_ids, z)
  unit = knn.unit  # [N + 1, D], row N = padding
  hist, target = _train_pairs(split, pd.Index(np.asarray(item_ids, dtype=object)), num_recent)
  u, t = knn.history_vectors(hist), unit[target]  # the same user vectors the baseline scores with
  gram, cross = u.T @ u, u.T @ t
  stages = {s: split.queries(s) for s in ("valid", "test")}

  def evaluate(stage, W, beta, ks=(10,)):
    q = stages[stage]
    fn = lambda rows: (lambda v: v @ unit[:-1].T + beta * (v @ W) @ unit[:-1].T)(knn.user_vectors(q, rows))  # noqa
    return evaluate_scores(fn, q, item_ids, candidates=split.candidates_for(stage), ks=ks)

  best = None
  for lam in lambdas:
    W = np.linalg.solve(gram + lam * np.eye(len(gram)), cross)
    for beta in betas:
      r = evaluate("valid", W, beta)["overall"]["recall@10"]
      if best is None or r > best[0]:
        best = (r, lam, beta, W)
  _, lam, beta, W = best
  return {"lambda": lam, "beta": beta, "pairs": int(len(target)),
          "valid": evaluate("valid", W, beta), "test": evaluate("test", W, beta, ks=(10, 100))}


def run_one(name: str, seed: int) -> dict:
  from semrec.benchmarks.bench_retrieval import load_dataset
  from semrec.data import make_split
  from semrec.towers.baselines import evaluate_baselines, select_knn_decay
  ds = load_dataset(name)
  ids = ds.item_ids.astype(object)
  reps = representations(content_embeddings(ds, CACHE), [t if t.strip() else str(i)
                                                         for t, i in zip(ds.item_texts(), ids)])
  split = make_split(ds, "cold_items", seed=seed)
  out = {}
  for scorer, z in reps.items():
    decay, _ = select_knn_decay(split, ids, z)
    m = evaluate_baselines(split, ids, z, stage="test", names=("content_knn",), knn_decay=decay,
                           ks=(10, 100))["content_knn"]
    out[scorer] = {"decay": decay, "test": m}
  for scorer in MAX_POOLED:
    m = evaluate_baselines(split, ids, reps[scorer], stage="test", names=("content_knn",), knn_pooling="max",
                           ks=(10, 100))["content_knn"]
    out[f"{scorer}_max"] = {"pooling": "max", "test": m}
  lt = linear_transfer(split, ids, reps["centred+lexical_knn"], out["centred+lexical_knn"]["decay"])
  out["linear_transfer"] = {"decay": out["centred+lexical_knn"]["decay"], "lambda": lt["lambda"],
                            "beta": lt["beta"], "pairs": lt["pairs"], "test": lt["test"]}
  return out


def _served_figure(name: str, seeds) -> dict:
  """The learned served variant's cold R@10 per seed from results/bench_retrieval.json (same splits)."""
  import json
  path = os.path.join(RESULTS, "bench_retrieval.json")
  if not os.path.exists(path):
    return {}
  run = json.load(open(path))["runs"].get(f"{name}:cold_items")
  if not run:
    return {}
  out = {}
  for s, r in zip(run["seeds"], run["per_seed"]):
    if s in seeds:
      v = r["served"]["variant"]
      out[s] = {"variant": v, "recall@10": r["models"][v]["cold"]["recall@10"]}
  return out


def main():
  from semrec.atomic import write_json
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sets", nargs="+", default=["scientific", "microlens", "movielens"])
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--out", default=os.path.join(RESULTS, "bench_cold_ceiling.json"))
  args = p.parse_args()
  report = {"command": f"python -m semrec.benchmarks.bench_cold_ceiling --sets {' '.join(args.sets)} "
                       f"--seeds {' '.join(map(str, args.seeds))}", "sets": {}}
  for name in args.sets:
    if name != "movielens" and not os.path.isdir(os.path.join(default_dev_dir(), name)):
      print(f"skip {name}: {default_dev_dir() or 'the dev-benchmarks folder'}/{name} not found")
      continue
    t0 = time.time()
    per_seed = {s: run_one(name, s) for s in args.seeds}
    served = _served_figure(name, args.seeds)
    base = np.mean([per_seed[s]["content_knn"]["test"]["overall"]["recall@10"] for s in args.seeds])
    summary = lambda vals: {"recall@10": [float(np.mean(vals)), float(np.std(vals))],  # noqa: E731
                            "over_content_knn": float(np.mean(vals) / base)}
    rows = {scorer: summary([per_seed[s][scorer]["test"]["overall"]["recall@10"] for s in args.seeds])
            for scorer in SCORERS}
    if len(served) == len(args.seeds):
      rows["served (bench_retrieval)"] = {**summary([served[s]["recall@10"] for s in args.seeds]),
                                          "variants": [served[s]["variant"] for s in args.seeds]}
    report["sets"][name] = {"seeds": args.seeds, "summary": rows, "per_seed": per_seed, "served": served,
                            "seconds": time.time() - t0}
    print(f"{name} cold_items, test cold Recall@10, mean ± std over seeds {args.seeds}:")
    for scorer, r in rows.items():
      print(f"  {scorer:>26}  {r['recall@10'][0]:.4f} ± {r['recall@10'][1]:.4f}  "
            f"{r['over_content_knn']:.2f}x content_knn", flush=True)
    write_json(args.out, report)


if __name__ == "__main__":
  main()
