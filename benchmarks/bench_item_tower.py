"""Item-tower ablation: hashed ID vs content vs SID vs the cold-aware item tower, warm and cold slices.

    python -m semrec.benchmarks.bench_item_tower --embeddings movielens_minilm.npz --split temporal
    python -m semrec.benchmarks.bench_item_tower --embeddings movielens_minilm.npz --split cold_items

Every variant is the same ``TwoTowerRetriever`` (mean-pooled history of 10, in-batch softmax with logQ,
3 epochs) and differs only in its ``ItemEncoderConfig``; the split, queries, metrics and baselines are
semrec's (``semrec.data.make_split``, ``semrec.towers.evaluate_scores`` / ``evaluate_baselines``). With
``--quality`` the Etsy w is tuned on the validation queries (cold-constrained) and applied to the test.
Writes ``benchmarks/results/bench_item_tower_<split>.json``. The 3-seed acceptance figures are
``benchmarks/bench_retrieval.py``'s; this script is the item side's quick check.
"""
import argparse
import dataclasses
import os
import time

import semrec  # noqa: F401  (before tensorflow)
import numpy as np

VARIANTS = ("hashed_id", "content", "sid_spm_hashed", "cold_aware", "cold_aware_no_residual",
            "cold_aware_no_dropout")


def item_config(variant, args, side):
  """The ``ItemEncoderConfig`` of a variant (see the module docstring)."""
  from semrec.sid import ItemRepresentationConfig
  from semrec.towers import ItemEncoderConfig
  modes = {"hashed_id": ("random_hash",), "content": ("dense",), "sid_spm_hashed": ("spm", "random_hash")}.get(
      variant, ("spm", "random_hash", "cluster"))
  cold = variant.startswith("cold_aware")
  rc = ItemRepresentationConfig(
      modes=modes, embedding_dim=args.dim, num_levels=side["levels"], codebook_size=side["k"],
      table_budget=args.spm_vocab if "spm" in modes else 1, hash_buckets=args.hash_per_item * side["n"],
      cluster_sizes=args.cluster_sizes if "cluster" in modes else (),
      id_dropout=args.id_dropout if cold and variant != "cold_aware_no_dropout" else 0.0)
  return ItemEncoderConfig(representation=rc, content_residual=cold and variant != "cold_aware_no_residual")


def item_side(ds, split, content, args):
  """Item features shared by every variant: content, SIDs, cluster ids at each k, the SPM."""
  from semrec.data import ItemFeatures
  from semrec.sid import RQVAEConfig, cluster_feature, train_sid_model, train_sid_spm
  from semrec.sid.kmeans import fit_kmeans, nearest_centroid
  ids = ds.item_ids.astype(str).astype(object)
  sid_model = train_sid_model(content, RQVAEConfig(mode="rqkmeans", num_levels=args.levels,
                                                   codebook_size=args.codebook, seed=args.seed), item_ids=ids)
  codes = sid_model.codes(content)
  arrays = {"content": content, "sid": codes.astype(np.int32)}
  for k in args.cluster_sizes:
    arrays[cluster_feature(k)] = nearest_centroid(content, fit_kmeans(content, k, seed=args.seed)).astype(np.int32)
  pos = split.train[split.train["label"] > 0]
  weights = pos["item_id"].astype(str).value_counts().reindex(ids).fillna(0).to_numpy()
  spm = train_sid_spm(codes, weights=weights, vocab_size=args.spm_vocab, codebook_size=args.codebook, item_ids=ids)
  return {"features": ItemFeatures(ids, arrays), "spm": spm, "levels": args.levels, "k": args.codebook,
          "n": len(ids), "content": content}


def query_batches(inputs, queries, max_history):
  """``RetrievalInputs.encode``-style rows for the query side of ``queries`` (first target as item)."""
  return {"user_id": queries.user_ids.astype(str).astype(object), "timestamp": queries.timestamps,
          "item_id": np.array([t[0] for t in queries.targets], dtype=object),
          "history": queries.padded_histories(max_history),
          "item_prob": np.ones(len(queries), np.float32)}


def train_variant(variant, args, side, split, quality):
  """(model, inputs, train seconds) of one trained variant."""
  import tensorflow as tf
  from semrec.sid import ItemRepresentation
  from semrec.towers import (CandidateTowerConfig, QueryTowerConfig, RetrievalInputs, RetrieverConfig, ScoreConfig,
                             TwoTowerRetriever, compile_retriever, init_model, item_frequencies)
  from semrec.towers import content_basis
  tf.keras.utils.set_random_seed(args.seed)
  item = item_config(variant, args, side)
  rc = RetrieverConfig(item=item, candidate=CandidateTowerConfig(mlp_dims=(64,), output_dim=args.dim),
                       query=QueryTowerConfig(max_history=args.history, mlp_dims=(64,), output_dim=args.dim),
                       temperature=0.05, learning_rate=5e-3,
                       scores=ScoreConfig(quality_dim=quality.dim if quality is not None else 0,
                                          quality_mode="tuned" if quality is not None else "none"))
  rep = ItemRepresentation(item.representation, spm=side["spm"], name="item_representation")
  model = TwoTowerRetriever(rc, item_representation=rep)
  if item.content_residual:  # the catalogue's top-d content directions (content only: no interactions)
    model.item_encoder.residual.set_basis(content_basis(side["content"], args.dim))
  inputs = RetrievalInputs(side["features"], model.item_encoder.required_features(), args.history,
                           quality=quality.features() if quality is not None else None,
                           unknown_quality=quality.new_item_features() if quality is not None else None)
  pos = split.train[split.train["label"] > 0]
  enc = inputs.encode(pos, item_probs=item_frequencies(pos))
  ds = inputs.dataset(enc, 1024, shuffle=True, seed=args.seed)
  init_model(model, next(iter(ds)))
  compile_retriever(model)
  t0 = time.time()
  model.fit(ds, epochs=args.epochs, verbose=0)
  return model, inputs, time.time() - t0


def evaluate_variant(model, inputs, split, args, stage="test", w=None):
  """``evaluate_scores`` metrics of a trained model on ``stage`` (with the quality weights ``w`` if given)."""
  from semrec.towers import dot_scores, embed_candidates, embed_queries, evaluate_scores
  queries = split.queries(stage)
  if w is not None:
    model.score_blocks.apply({"quality": {"w": w}})
  with_q = w is not None
  q = embed_queries(model, inputs, query_batches(inputs, queries, args.history), with_blocks=with_q)
  c = embed_candidates(model, inputs, with_blocks=with_q)
  ids = inputs.item_features.item_ids
  return evaluate_scores(lambda rows: dot_scores(q[rows], c), queries, ids, ks=(10, 100), ndcg_ks=(10,))


def tune_w(model, inputs, split, quality, args):
  """Cold-constrained w search on the validation queries (semrec.towers.tune_quality_weights)."""
  from semrec.towers import embed_candidates, embed_queries, tune_quality_weights
  queries = split.queries("valid")
  sub = queries.subset(np.random.default_rng(args.seed).permutation(len(queries))[:args.tune_queries])
  qb = embed_queries(model, inputs, query_batches(inputs, sub, args.history), with_blocks=False)
  cb = embed_candidates(model, inputs, with_blocks=False)
  rows = inputs.rows_of(np.array([t[0] for t in sub.targets], dtype=object))
  keep = rows < inputs.num_items
  excl = [inputs.rows_of(e) for e in sub.exclude]
  excl = [e[e < inputs.num_items] for e, k in zip(excl, keep) if k]
  w, info = tune_quality_weights(qb[keep], cb, quality.features(), rows[keep], excl, k=100,
                                 cold=sub.cold[keep], max_cold_drop=args.max_cold_drop)
  return w, {"w": dict(zip(quality.feature_names, map(float, w))), **info}


def _row(name, m):
  def get(s, k):
    return m[s][k] if s in m else float("nan")
  return (f"{name:26s} {get('overall', 'recall@10'):7.4f} {get('overall', 'recall@100'):7.4f} "
          f"{get('warm', 'recall@100'):7.4f} {get('cold', 'recall@10'):7.4f} {get('cold', 'recall@100'):7.4f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--embeddings", required=True, help="npz with item_ids, embeddings (make_embeddings.py)")
  parser.add_argument("--split", default="temporal", choices=("temporal", "leave_one_out", "cold_items"))
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--history", type=int, default=10)
  parser.add_argument("--levels", type=int, default=3)
  parser.add_argument("--codebook", type=int, default=64)
  parser.add_argument("--spm-vocab", type=int, default=1024)
  parser.add_argument("--cluster-sizes", default="100,1000")
  parser.add_argument("--id-dropout", type=float, default=0.5)
  parser.add_argument("--hash-per-item", type=int, default=2, help="hashed-ID rows per catalogue item")
  parser.add_argument("--quality", action="store_true", help="also tune the Etsy w (cold-constrained)")
  parser.add_argument("--max-cold-drop", type=float, default=0.1)
  parser.add_argument("--tune-queries", type=int, default=3000)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  args.cluster_sizes = tuple(int(v) for v in args.cluster_sizes.split(",") if v)
  from semrec.atomic import write_json
  from semrec.data import load_movielens, make_split
  from semrec.towers import QualityVector, evaluate_baselines
  t_start = time.time()
  ds = load_movielens()
  z = np.load(args.embeddings, allow_pickle=True)
  index = {str(i): r for r, i in enumerate(z["item_ids"])}
  content = np.asarray(z["embeddings"], np.float32)[[index[str(i)] for i in ds.item_ids]]
  split = make_split(ds, args.split, seed=args.seed)
  side = item_side(ds, split, content, args)
  quality = None
  if args.quality:
    quality = QualityVector.fit(split.train, ds.items, quality_columns=ds.quality_columns)
  results = {"baselines": evaluate_baselines(split, ds.item_ids, content, names=("popularity", "content_knn"),
                                             ks=(10, 100), ndcg_ks=(10,)), "variants": {}, "quality": {}}
  print(f"{'variant':26s} {'R@10':>7s} {'R@100':>7s} {'warm100':>7s} {'cold10':>7s} {'cold100':>7s}")
  for name, m in results["baselines"].items():
    print(_row(f"[baseline] {name}", m))
  for variant in args.variants.split(","):
    model, inputs, secs = train_variant(variant, args, side, split, quality)
    if quality is not None:
      zero = np.zeros(quality.dim, np.float32)
      results["variants"][variant] = evaluate_variant(model, inputs, split, args, w=zero)
      w, info = tune_w(model, inputs, split, quality, args)
      results["quality"][variant] = {**info, "test": evaluate_variant(model, inputs, split, args, w=w)}
      print(_row(f"{variant} +w", results["quality"][variant]["test"]))
    else:
      results["variants"][variant] = evaluate_variant(model, inputs, split, args)
    results["variants"][variant]["train_seconds"] = round(secs, 1)
    print(_row(variant, results["variants"][variant]), f"({secs:.0f}s)", flush=True)
  results.update(split=split.summary(), args=vars(args), seconds=round(time.time() - t_start, 1))
  out = args.out or os.path.join(os.path.dirname(__file__), "results", f"bench_item_tower_{args.split}.json")
  write_json(out, results)
  print(f"wrote {out} ({results['seconds']:.0f}s)")


if __name__ == "__main__":
  main()
