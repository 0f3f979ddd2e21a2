"""Trains a small two-tower retriever on the bundled MovieLens under a tf.distribute strategy.

Used by tests/test_distributed.py (MWMS vs one process) and benchmarks/bench_scale.py (examples/s).
Run it directly for one process, or under the launcher for N local MWMS workers:

  python -m semrec.benchmarks.dist_retriever --strategy none --out /tmp/one
  semrec launch-workers -n 2 -- python -m semrec.benchmarks.dist_retriever --strategy mwms --out /tmp/two

The chief (worker 0) writes ``<out>/result.npz``: the model weights, the top-10 item rows of ``--queries``
query rows, and the fit time; other workers write nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--strategy", default="none")
  ap.add_argument("--out", required=True)
  ap.add_argument("--rows", type=int, default=4096, help="training interactions (earliest positives)")
  ap.add_argument("--batch-size", type=int, default=256, help="global batch")
  ap.add_argument("--epochs", type=int, default=2)
  ap.add_argument("--queries", type=int, default=500)
  ap.add_argument("--drop-remainder", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--adam-epsilon", type=float, default=None,
                  help="Adam epsilon (default: compile_retriever's Adam, Keras' 1e-7); see docs/scale.md")
  args = ap.parse_args(argv)

  from semrec.towers.distributed import make_strategy, run_ps_server, task_info
  task_type, _, chief = task_info()
  if args.strategy == "ps" and task_type in ("worker", "ps"):
    return run_ps_server()  # blocks; the launcher stops it when the chief ends
  strategy = make_strategy(args.strategy)  # before any other TF op (MWMS)
  import numpy as np
  import tensorflow as tf
  from semrec.data import ItemFeatures, load_movielens
  from semrec.sid import ItemRepresentationConfig
  from semrec.towers import (CandidateTowerConfig, ItemEncoderConfig, QueryTowerConfig, RetrievalInputs,
                             RetrieverConfig, TwoTowerRetriever, brute_force_top_k, compile_retriever,
                             embed_candidates, embed_queries, init_model, item_frequencies, load_retriever,
                             save_retriever)

  ds = load_movielens()
  inter = ds.interactions.sort_values(["timestamp", "user_id"], kind="stable")
  pos = inter[inter["label"] > 0] if "label" in inter else inter
  train = pos.iloc[:args.rows]
  ids = np.asarray(ds.item_ids, dtype=object)
  t = train["timestamp"]
  # The hashed-ID retriever (in-batch softmax, logQ): the tables MWMS and PS must keep in sync / shard.
  cfg = RetrieverConfig(
      item=ItemEncoderConfig(representation=ItemRepresentationConfig(
          modes=("random_hash",), embedding_dim=16, hash_buckets=2 * len(ids))),
      candidate=CandidateTowerConfig(mlp_dims=(32,), output_dim=16),
      query=QueryTowerConfig(max_history=5, mlp_dims=(32,), output_dim=16, time_mean=float(t.mean()),
                             time_scale=float(max(t.std(), 1.0))))
  inputs = RetrievalInputs(ItemFeatures(ids, {}), [], cfg.max_history)
  enc = inputs.encode(train, item_probs=item_frequencies(train))
  train_ds = inputs.dataset(enc, args.batch_size, shuffle=True, seed=args.seed, drop_remainder=args.drop_remainder)
  tf.keras.utils.set_random_seed(args.seed)
  with strategy.scope():
    model = TwoTowerRetriever(cfg)
    init_model(model, next(iter(train_ds)))
    if args.adam_epsilon is None:
      compile_retriever(model)
    else:
      model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate, epsilon=args.adam_epsilon))
  t0 = time.perf_counter()
  if args.strategy == "ps":  # PS needs a per-worker dataset function and a fixed number of steps
    steps = len(train) // args.batch_size
    creator = tf.keras.utils.experimental.DatasetCreator(lambda ctx: inputs.dataset(
        enc, args.batch_size, shuffle=True, seed=args.seed, drop_remainder=True).repeat())
    hist = model.fit(creator, epochs=args.epochs, steps_per_epoch=steps, verbose=0)
  else:
    hist = model.fit(train_ds, epochs=args.epochs, verbose=0)
  fit_seconds = time.perf_counter() - t0
  if not chief:
    return
  # Parameter servers holding model variables (0 without PS), and how many variable pieces the model holds
  # (more than in a strategy-free model when a table is split over the parameter servers).
  ps_tasks = len({v.device.split("/device")[0] for v in model.variables if "/job:ps" in v.device})
  pieces = len(model.weights)
  if args.strategy == "ps":  # evaluate from the saved towers: reload them into a model without the strategy
    save_retriever(model, os.path.join(args.out, "model"))
    model = load_retriever(os.path.join(args.out, "model"), next(iter(train_ds)))
  q = embed_queries(model, inputs, {k: v[-args.queries:] for k, v in enc.items()})
  c = embed_candidates(model, inputs)
  _, top = brute_force_top_k(q, c, 10)
  weights = {f"w{i:03d}": w for i, w in enumerate(model.get_weights())}
  os.makedirs(args.out, exist_ok=True)
  np.savez(os.path.join(args.out, "result.npz"), top10=top, fit_seconds=fit_seconds,
           examples=len(train) * args.epochs, loss=np.asarray(hist.history["loss"]),
           replicas=strategy.num_replicas_in_sync, ps_tasks=ps_tasks, weight_pieces=pieces,
           weight_arrays=len(model.weights), **weights)
  print(f"{args.strategy}: {strategy.num_replicas_in_sync} replica(s), {len(train) * args.epochs / fit_seconds:.0f} "
        f"examples/s, loss {hist.history['loss']}")


if __name__ == "__main__":
  main()
  # Every result is written. Under MWMS, TF's cluster health-check thread sleeps 30 s between checks and the
  # strategy's __del__ joins it, so a normal interpreter exit idles up to 30 s after the work is done.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)
