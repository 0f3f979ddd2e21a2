"""Writes the MovieLens content embeddings several benchmarks take with `--embeddings` / `--content-npz`.

    python -m semrec.benchmarks.make_embeddings --out movielens_minilm.npz

Encodes the bundled MovieLens item texts (title | genres | tags) with semrec's TF all-MiniLM-L6-v2 encoder
(`semrec.encoders.TextEncoder`) and saves `item_ids` [N] str and `embeddings` [N, 384] float32 (unit norm).
The figures quoted in the README were measured with the same texts embedded by sentence-transformers' copy of the
model, which this encoder matches to cosine >= 0.99999 (tests/fixtures/text_parity.npz).
"""
import argparse
import os
import time

import semrec  # noqa: F401  (before tensorflow)
from semrec.atomic import save_npz
import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="movielens_minilm.npz")
  parser.add_argument("--batch-size", type=int, default=64)
  args = parser.parse_args()
  from semrec.data import load_movielens
  from semrec.encoders import TextEncoder
  ds = load_movielens()
  t0 = time.perf_counter()
  emb = TextEncoder(batch_size=args.batch_size).encode(ds.item_texts(), item_ids=list(ds.item_ids))
  seconds = time.perf_counter() - t0
  save_npz(args.out, item_ids=np.asarray(ds.item_ids, dtype=str), embeddings=emb.astype(np.float32))
  print(f"wrote {args.out}: {emb.shape[0]} x {emb.shape[1]} in {seconds:.0f}s ({emb.shape[0] / seconds:.0f} items/s)")


if __name__ == "__main__":
  main()
