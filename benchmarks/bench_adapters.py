"""SID adapters: lookup throughput per mode, in-graph SPM segmentation vs sentencepiece, lookups per item.

Three parts (all by default; pick with --parts):

- throughput: items/s through ``ItemRepresentation`` for each mode (L=4, K=256, budget 2^16,
  d=32; one tf.function call per batch of 8,192 items, median of the repeats). Baseline:
  ``random_hash`` in the same run; each mode's ratio = its items/s / random_hash items/s.
- segmentation: latency to segment a batch of 1,000 SIDs into SentencePiece pieces, in-graph
  (``SpmSegmenter`` under tf.function) vs sentencepiece's Python call (SID -> string conversion
  + ``SentencePieceProcessor.encode``), median of the repeats; ratio = in-graph / sentencepiece.
  Also checks both give identical pieces.
- lookups: the paper's Figure 4 statistic (SPM uses fewer lookups for head items): mean
  embedding lookups per item by item-popularity decile, SPM at several budgets vs n-grams, on
  MovieLens-like SIDs: residual k-means (sklearn, L levels of K centroids) of the content
  embeddings given by --embeddings (an .npz with ``item_ids`` [N] and ``embeddings`` [N, D]),
  items weighted by their number of ratings in the bundled MovieLens. Writes a PNG (--figure)
  and a Markdown table (printed, and in the JSON). Skipped without --embeddings.

Full: python -m semrec.benchmarks.bench_adapters --embeddings movielens_minilm.npz
Small: python -m semrec.benchmarks.bench_adapters --quick
Writes benchmarks/results/bench_adapters.json (bench_adapters_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from semrec.atomic import save_figure, write_json
import numpy as np
from tqdm import tqdm

_HERE = os.path.dirname(os.path.abspath(__file__))


def hierarchical_sids(n: int, num_levels: int, codebook_size: int, seed: int = 0):
  """Synthetic popularity-skewed SIDs whose later codes depend on earlier ones, with zipf weights."""
  rng = np.random.default_rng(seed)
  K = codebook_size
  p = 1.0 / np.arange(1, K + 1) ** 1.1
  p /= p.sum()
  codes = np.zeros((n, num_levels), np.int64)
  codes[:, 0] = rng.choice(K, size=n, p=p)
  for l in range(1, num_levels):
    codes[:, l] = (codes[:, l - 1] * 7 + rng.choice(K, size=n, p=p)) % K
  return codes, rng.zipf(1.5, size=n).clip(1, 100_000)


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
  from semrec.benchmarks.timing import call_times
  return float(np.median(call_times(fn, repeats, warmup)))


def bench_throughput(args) -> dict:
  import tensorflow as tf
  from semrec.sid import ItemRepresentation, ItemRepresentationConfig, train_sid_spm
  L, K, budget, batch = 4, (64 if args.quick else 256), 2 ** 16, (1024 if args.quick else 8192)
  codes, weights = hierarchical_sids(20_000 if args.quick else 100_000, L, K)
  spm = train_sid_spm(codes, weights, vocab_size=budget, codebook_size=K)
  rng = np.random.default_rng(1)
  rows = rng.integers(0, len(codes), size=batch)
  feats = {"item_id": tf.constant([f"item{r}" for r in rows]), "sid": tf.constant(codes[rows], tf.int32),
           "content": tf.constant(rng.normal(size=(batch, 384)).astype(np.float32))}
  out = {"num_levels": L, "codebook_size": K, "table_budget": budget, "batch": batch, "embedding_dim": 32,
         "spm_vocab_size": spm.vocab_size, "modes": {}}
  for mode in tqdm(("random_hash", "dense", "unigram", "bigram", "prefix", "spm"), desc="throughput"):
    cfg = ItemRepresentationConfig(modes=(mode,), embedding_dim=32, num_levels=L, codebook_size=K,
                                   table_budget=budget, hash_buckets=budget, content_dim=384)
    layer = ItemRepresentation(cfg, spm=spm if mode == "spm" else None)
    fn = tf.function(lambda f, layer=layer: layer(f))
    sec = _median_seconds(lambda: fn(feats).numpy(), args.repeats)
    out["modes"][mode] = {"seconds_per_batch": sec, "items_per_second": batch / sec}
  base = out["modes"]["random_hash"]["items_per_second"]
  for mode, r in out["modes"].items():
    r["ratio_vs_random_hash"] = r["items_per_second"] / base
  return out


def bench_segmentation(args) -> dict:
  import tensorflow as tf
  from semrec.sid import SpmSegmenter, train_sid_spm
  L, K, vocab, batch = 4, (64 if args.quick else 256), (4096 if args.quick else 32768), 1000
  codes, weights = hierarchical_sids(20_000 if args.quick else 100_000, L, K)
  spm = train_sid_spm(codes, weights, vocab_size=vocab, codebook_size=K)
  rng = np.random.default_rng(2)
  sids = codes[rng.integers(0, len(codes), size=batch)]
  sids[: batch // 10] = rng.integers(0, K, size=(batch // 10, L))  # 10% random (mostly unseen) SIDs
  seg = SpmSegmenter(L, K, max_pieces=vocab, spm=spm)
  fn = tf.function(lambda c: seg(c), input_signature=[tf.TensorSpec([None, L], tf.int32)])
  x = tf.constant(sids, tf.int32)
  same = bool(np.array_equal(fn(x).numpy(), spm.segment_padded(sids)))
  strings = spm.to_strings(sids)
  t_graph = _median_seconds(lambda: fn(x).numpy(), args.repeats * 5)
  t_sp = _median_seconds(lambda: spm.segment(sids), args.repeats * 5)
  t_sp_encode = _median_seconds(lambda: spm.processor.encode(strings), args.repeats * 5)
  return {"num_levels": L, "codebook_size": K, "vocab_size": spm.vocab_size, "batch": batch,
          "identical_pieces": same, "in_graph_seconds": t_graph, "sentencepiece_seconds": t_sp,
          "sentencepiece_encode_only_seconds": t_sp_encode, "ratio_in_graph_vs_sentencepiece": t_graph / t_sp,
          "ratio_in_graph_vs_encode_only": t_graph / t_sp_encode}


def residual_kmeans(x: np.ndarray, num_levels: int, codebook_size: int, seed: int = 0) -> np.ndarray:
  """[N, L] codes: level l clusters the residual left by levels < l (sklearn KMeans)."""
  from sklearn.cluster import KMeans
  res = np.asarray(x, np.float64).copy()
  codes = np.zeros((len(x), num_levels), np.int64)
  for l in tqdm(range(num_levels), desc="residual k-means"):
    km = KMeans(n_clusters=codebook_size, n_init=1, random_state=seed + l).fit(res)
    codes[:, l] = km.labels_
    res -= km.cluster_centers_[km.labels_]
  return codes


def bench_lookups(args) -> dict:
  from semrec.data import load_movielens
  from semrec.sid import budget as bud
  from semrec.sid import train_sid_spm
  data = np.load(args.embeddings, allow_pickle=True)
  item_ids = np.asarray(data["item_ids"]).astype(str)
  emb = np.asarray(data["embeddings"], np.float32)
  L, K = args.levels, args.codebook_size
  codes = residual_kmeans(emb, L, K)
  counts = load_movielens().interactions["item_id"].astype(str).value_counts()
  weights = counts.reindex(item_ids).fillna(0).to_numpy(np.float64)
  budgets = [b for b in args.budgets if b >= L * K + 1]
  nb = 10
  bins = bud.popularity_bins(weights, nb)
  head, tail = bins == 0, bins >= 5
  torso = ~head & ~tail
  result = {"num_items": int(len(codes)), "num_levels": L, "codebook_size": K,
            "distinct_sids": int(len({tuple(r) for r in codes.tolist()})),
            "weighted_items": int((weights > 0).sum()), "total_weight": float(weights.sum()), "spm": {}, "ngram": {}}
  for mode in ("unigram", "bigram", "prefix"):
    result["ngram"][mode] = {"lookups_per_item": bud.lookups_per_item(mode, L),
                             "rows": {b: bud.table_rows(mode, L, K, b) for b in budgets}}
  for b in tqdm(budgets, desc="spm budgets"):
    spm = train_sid_spm(codes, weights, vocab_size=b, codebook_size=K, item_ids=item_ids)
    n = bud.pieces_per_item(spm.segment_padded(codes))
    result["spm"][b] = {
        "vocab_size": spm.vocab_size, "mean": float(n.mean()), "head_10pct": float(n[head].mean()),
        "torso_10_50pct": float(n[torso].mean()), "tail_50pct": float(n[tail].mean()),
        "impression_weighted": float((n * weights).sum() / weights.sum()),
        "by_decile": bud.mean_by_bin(n, bins, nb),
        "single_piece_items": float((n == 1).mean())}
  lines = ["| budget (rows) | SPM vocab | SPM head 10% | SPM 10-50% | SPM tail 50% | SPM all items | "
           "SPM per rating | bigram | unigram / prefix |", "|---|---|---|---|---|---|---|---|---|"]
  for b, r in result["spm"].items():
    big = "hashed" if bud.ngram_is_hashed("bigram", L, K, b) else "exact"
    lines.append(f"| {b} | {r['vocab_size']} | {r['head_10pct']:.2f} | {r['torso_10_50pct']:.2f} | "
                 f"{r['tail_50pct']:.2f} | {r['mean']:.2f} | {r['impression_weighted']:.2f} | "
                 f"{bud.lookups_per_item('bigram', L)} ({big}) | {L} |")
  result["table_markdown"] = "\n".join(lines)
  if args.figure:
    _plot(result, args.figure, nb)
    result["figure"] = args.figure
  return result


def _plot(result: dict, path: str, nb: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  L = result["num_levels"]
  fig, ax = plt.subplots(figsize=(9, 4.2))
  x = np.arange(1, nb + 1)
  for b, r in result["spm"].items():
    ax.plot(x, r["by_decile"], marker="o", label=f"SPM, budget {b}")
  ax.axhline(L, color="k", ls="--", lw=1, label=f"unigram / prefix ({L})")
  ax.axhline((L + 1) // 2, color="gray", ls=":", lw=1.5, label=f"bigram ({(L + 1) // 2})")
  ax.set_xticks(x)
  ax.set_xlabel("item popularity decile (1 = most rated)")
  ax.set_ylabel("embedding lookups per item")
  ax.set_ylim(0, L + 0.5)
  ax.set_title(f"MovieLens SIDs (L={L}, K={result['codebook_size']}): lookups per item")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  save_figure(fig, path)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="small sizes (K=64, batch 1,024, smaller SPM)")
  ap.add_argument("--parts", default="throughput,segmentation,lookups")
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument("--embeddings", default=None, help=".npz with item_ids and embeddings (MovieLens items)")
  ap.add_argument("--levels", type=int, default=4)
  ap.add_argument("--codebook-size", type=int, default=32)
  ap.add_argument("--budgets", type=lambda s: [int(v) for v in s.split(",")], default=[256, 512, 1024, 2048, 4096,
                                                                                          8192])
  ap.add_argument("--figure", default=None, help="PNG path for the lookups figure")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  args.repeats = args.repeats or (5 if args.quick else 20)
  out_path = args.out or os.path.join(_HERE, "results", "bench_adapters_quick.json" if args.quick
                                      else "bench_adapters.json")
  import tensorflow as tf
  result = {"quick": args.quick, "python": platform.python_version(), "tensorflow": tf.__version__,
            "command": " ".join(["python -m semrec.benchmarks.bench_adapters"] + (argv if argv is not None
                                                                                    else sys.argv[1:]))}
  parts = args.parts.split(",")
  if "throughput" in parts:
    r = result["throughput"] = bench_throughput(args)
    print(f"\nlookup throughput (L={r['num_levels']}, K={r['codebook_size']}, budget {r['table_budget']}, "
          f"batch {r['batch']}, d=32):")
    for mode, m in r["modes"].items():
      print(f"  {mode:12s} {m['items_per_second']:>12,.0f} items/s   x{m['ratio_vs_random_hash']:.2f} vs random_hash")
  if "segmentation" in parts:
    r = result["segmentation"] = bench_segmentation(args)
    print(f"\nSPM segmentation of {r['batch']} SIDs (vocab {r['vocab_size']}): in-graph "
          f"{r['in_graph_seconds'] * 1e3:.2f} ms, sentencepiece {r['sentencepiece_seconds'] * 1e3:.2f} ms "
          f"(encode only {r['sentencepiece_encode_only_seconds'] * 1e3:.2f} ms); ratio in-graph/sentencepiece "
          f"{r['ratio_in_graph_vs_sentencepiece']:.2f}; identical pieces: {r['identical_pieces']}")
  if "lookups" in parts:
    if args.embeddings is None:
      print("\nlookups: skipped (needs --embeddings)")
    else:
      r = result["lookups"] = bench_lookups(args)
      print(f"\nlookups per item, {r['num_items']} MovieLens items ({r['distinct_sids']} distinct SIDs, "
            f"L={r['num_levels']}, K={r['codebook_size']}):\n{r['table_markdown']}")
  write_json(out_path, result)
  print(f"\nwrote {out_path}")


if __name__ == "__main__":
  main()
