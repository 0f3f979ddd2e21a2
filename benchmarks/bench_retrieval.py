"""MovieLens retrieval comparison: hashed-ID baseline vs content / cluster-ID / SID candidate towers.

  python -m semrec.benchmarks.bench_retrieval --content-npz EMB.npz            # full settings
  python -m semrec.benchmarks.bench_retrieval --content-npz EMB.npz --quick    # the `semrec run` defaults

Content embeddings come from ``--content-npz`` (keys ``item_ids`` [N] and ``embeddings`` [N, D]) or, without
it, are computed here with ``semrec.encoders.TextEncoder`` (MiniLM) over the item texts.

Also reproduces the TFRS basic-retrieval tutorial protocol on the bundled data (``--tfrs-protocol``):
random 80/20 split of all ratings (seed 42), user-id query tower and movie-title candidate tower
(StringLookup + 32-d Embedding), ``tfrs.tasks.Retrieval`` with FactorizedTopK over all movies, Adagrad 0.1,
3 epochs, batch 8192; reports test top-100 categorical accuracy. The tutorial's published ~0.23 is on
ml-100k (943 users, 1,682 movies); the bundled data is ml-latest-small (671 users, 9,125 movies), so the
figure is comparable in protocol only, not in data.

Writes benchmarks/results/bench_retrieval[_quick].json, and the table CSV + recall plot PNG in
benchmarks/results/bench_retrieval[_quick]/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import write_json
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def tfrs_tutorial_protocol(dataset, epochs: int = 3, seed: int = 42) -> dict:
  """The TFRS basic-retrieval tutorial, verbatim in model and protocol, on ``dataset``'s ratings."""
  import tensorflow as tf
  import tensorflow_recommenders as tfrs

  inter = dataset.interactions
  titles = dict(zip(dataset.items["item_id"].astype(str), dataset.items["title"].astype(str)))
  ratings = tf.data.Dataset.from_tensor_slices({
      "user_id": inter["user_id"].astype(str).to_numpy(),
      "movie_title": inter["item_id"].astype(str).map(titles).to_numpy()})
  movies = tf.data.Dataset.from_tensor_slices(dataset.items["title"].astype(str).to_numpy())
  tf.random.set_seed(seed)
  n = len(inter)
  shuffled = ratings.shuffle(n, seed=seed, reshuffle_each_iteration=False)
  n_train = int(0.8 * n)
  train, test = shuffled.take(n_train), shuffled.skip(n_train).take(n - n_train)
  unique_titles = np.unique(dataset.items["title"].astype(str).to_numpy())
  unique_users = np.unique(inter["user_id"].astype(str).to_numpy())
  dim = 32
  user_model = tf.keras.Sequential([tf.keras.layers.StringLookup(vocabulary=unique_users, mask_token=None),
                                    tf.keras.layers.Embedding(len(unique_users) + 1, dim)])
  movie_model = tf.keras.Sequential([tf.keras.layers.StringLookup(vocabulary=unique_titles, mask_token=None),
                                     tf.keras.layers.Embedding(len(unique_titles) + 1, dim)])
  task = tfrs.tasks.Retrieval(metrics=tfrs.metrics.FactorizedTopK(candidates=movies.batch(128).map(movie_model)))

  class MovielensModel(tfrs.Model):
    def __init__(self):
      super().__init__()
      self.user_model, self.movie_model, self.task = user_model, movie_model, task

    def compute_loss(self, features, training=False):
      return self.task(self.user_model(features["user_id"]), self.movie_model(features["movie_title"]),
                       compute_metrics=not training)

  model = MovielensModel()
  model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))
  t0 = time.time()
  model.fit(train.shuffle(100_000, seed=seed).batch(8192).cache(), epochs=epochs, verbose=0)
  train_seconds = time.time() - t0
  res = model.evaluate(test.batch(4096).cache(), return_dict=True, verbose=0)
  return {"protocol": "TFRS basic retrieval tutorial (random 80/20, user-id x title embeddings, 3 epochs)",
          "data": f"{dataset.name} (ml-latest-small), NOT the tutorial's ml-100k",
          "num_ratings": int(n), "num_movies": int(len(unique_titles)), "num_users": int(len(unique_users)),
          "top_100_accuracy": float(res["factorized_top_k/top_100_categorical_accuracy"]),
          "top_10_accuracy": float(res["factorized_top_k/top_10_categorical_accuracy"]),
          "published_ml100k_top_100_accuracy": 0.23, "train_seconds": train_seconds}


def _provenance() -> dict:
  """The code the figures came from: git commit, and whether towers/ or sid/ had uncommitted edits."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*a):
    try:
      return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return ""
  return {"git_commit": git("rev-parse", "HEAD"), "uncommitted": git("status", "--short", "--", "towers", "sid")}


def load_content(dataset, npz_path):
  if npz_path:
    z = np.load(npz_path, allow_pickle=False)
    return z["item_ids"].astype(str), z["embeddings"].astype(np.float32), f"npz:{os.path.basename(npz_path)}"
  from semrec.encoders import TextEncoder
  enc = TextEncoder()
  ids = dataset.item_ids.astype(str)
  return ids, enc.encode(dataset.item_texts(), item_ids=ids), "semrec.encoders.TextEncoder (MiniLM)"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="the default ComparisonConfig (what `semrec run` uses)")
  ap.add_argument("--content-npz", default=None)
  ap.add_argument("--epochs", type=int, default=None)
  ap.add_argument("--learned", action="store_true", help="also train towers with a learned quality w")
  ap.add_argument("--tune-new-item-weight", type=float, default=None,
                  help="ComparisonConfig.tune_new_item_weight (weight of new-item queries in the w search)")
  ap.add_argument("--tfrs-protocol", action="store_true", help="also run the TFRS tutorial protocol")
  ap.add_argument("--out", default=None, help="default results/bench_retrieval[_quick].json")
  args = ap.parse_args(argv)
  args.out = args.out or os.path.join(RESULTS, "bench_retrieval_quick.json" if args.quick else "bench_retrieval.json")

  from semrec.data import load_movielens
  from semrec.towers.comparison import ComparisonConfig, run_retrieval_comparison

  ds = load_movielens()
  ids, emb, source = load_content(ds, args.content_npz)
  cfg = ComparisonConfig() if args.quick else ComparisonConfig(epochs=6, output_dim=64, embedding_dim=64,
                                                                 mlp_dims=(128,), max_history=20)
  if args.epochs:
    cfg = dataclasses.replace(cfg, epochs=args.epochs)
  if args.tune_new_item_weight is not None:
    cfg = dataclasses.replace(cfg, tune_new_item_weight=args.tune_new_item_weight)
  if args.learned:
    cfg = dataclasses.replace(cfg, quality_modes=tuple(cfg.quality_modes) + ("learned",))
  out_dir = os.path.splitext(os.path.abspath(args.out))[0]  # table CSV, full JSON and PNG go here
  t0 = time.time()
  res = run_retrieval_comparison(ds, ids, emb, cfg, output_dir=out_dir)
  table = res["table"]
  import pandas as pd
  pd.set_option("display.width", 200)
  cols = ["variant", "quality", "slice", "recall@10", "recall@50", "recall@100", "ndcg@10", "num_queries"]
  print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
  print("acceptance:", json.dumps(res["acceptance"], indent=1, default=str))
  result = {"benchmark": "bench_retrieval", "quick": args.quick, "content": source, "provenance": _provenance(),
            "comparison_seconds": time.time() - t0, **{k: v for k, v in res.items() if k != "table"},
            "table": table.to_dict("records")}
  if args.tfrs_protocol:
    result["tfrs_tutorial_protocol"] = tfrs_tutorial_protocol(ds)
    print("TFRS tutorial protocol:", result["tfrs_tutorial_protocol"])
  write_json(args.out, result)
  print(f"wrote {args.out} ({result['comparison_seconds']:.0f}s)")
  return result


if __name__ == "__main__":
  main()
