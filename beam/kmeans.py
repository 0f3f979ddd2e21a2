"""k-means over an embedding store with Beam: fit on a sample, refine with full-data Lloyd passes.

The sample is the one ``semrec.sid.fit_kmeans(x, k, seed, sample_size)`` draws (same rows, same seed), and
the fit on it is that function, so the sample-fitted centroids equal the in-process ones. Each refinement
step is a ``CombineGlobally(LloydCombineFn)`` over the store's shards with the previous centroids as a
side input; the combine sums ``semrec.sid.lloyd_statistics`` partials (float64), the in-process
``refine_kmeans`` sums the same partials in a loop.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np

from semrec.atomic import save_npy
from semrec.beam.options import make_pipeline
from semrec.encoders.store import EmbeddingStore, read_shard
from semrec.sid.kmeans import fit_kmeans, lloyd_statistics, lloyd_update


def sum_accumulators(accs):
  """Element-wise sum of tuple accumulators (None accumulators, and None parts, are skipped); None if empty."""
  accs = [a for a in accs if a is not None]
  if not accs:
    return None
  return tuple(None if parts[0] is None else sum(parts) for parts in zip(*accs))


class LloydCombineFn(beam.CombineFn):
  """[n, D] chunks -> new [k, D] centroids (one Lloyd step); side input: the current centroids."""

  def create_accumulator(self, *args, **kwargs):
    return None

  def add_input(self, acc, chunk, centroids):
    part = lloyd_statistics(chunk, centroids)
    return part if acc is None else (acc[0] + part[0], acc[1] + part[1], acc[2] + part[2])

  def merge_accumulators(self, accs, *args, **kwargs):
    return sum_accumulators(accs)

  def extract_output(self, acc, centroids):
    if acc is None:
      raise ValueError("k-means refinement got no data (empty store?)")
    return lloyd_update(centroids, acc[0], acc[1])


def _shard_chunks(store_dir: str, columns: Optional[Tuple[int, int]]):
  def read(name):
    x = read_shard(os.path.join(store_dir, name)).embeddings
    yield x if columns is None else x[:, columns[0]:columns[1]]
  return read


def _store_files(store_dir: str) -> list:
  m = EmbeddingStore(store_dir).manifest()
  if not m.get("complete"):
    raise ValueError(f"embedding store {store_dir!r} is incomplete: finish the encode job first")
  return [s["file"] for s in m["shards"]], m["dataset"]["num_items"]


def _sample_rows(store_dir: str, files: list, rows: np.ndarray, columns) -> np.ndarray:
  """Rows ``rows`` (sorted) of the store, reading it shard by shard on the driver."""
  out, lo = [], 0
  for f in files:
    x = read_shard(os.path.join(store_dir, f)).embeddings
    hi = lo + len(x)
    pick = rows[(rows >= lo) & (rows < hi)] - lo
    out.append(x[pick] if columns is None else x[pick, columns[0]:columns[1]])
    lo = hi
  return np.concatenate(out)


def refine_kmeans_pipeline(store_dir: str, centroids: np.ndarray, steps: int,
                           columns: Optional[Tuple[int, int]] = None, runner: str = "direct", num_workers: int = 1,
                           beam_options: Optional[Sequence[str]] = None, out_path: Optional[str] = None
                           ) -> np.ndarray:
  """``steps`` full-data Lloyd passes over the store's embeddings (optionally columns [a, b)) -> [k, D].

  ``out_path`` (default a temp file next to the store) receives the result as .npy (written by the last
  pipeline step, on a worker).
  """
  files, _ = _store_files(store_dir)
  out_path = out_path or os.path.join(store_dir, f".kmeans-refined-{os.getpid()}.npy")
  c0 = np.asarray(centroids, np.float32)

  def save(c):
    save_npy(out_path, c)

  with make_pipeline(runner, num_workers, beam_options) as p:
    chunks = (p | "shards" >> beam.Create(files) | "spread" >> beam.Reshuffle()
              | "read" >> beam.FlatMap(_shard_chunks(store_dir, columns)))
    cents = p | "init" >> beam.Create([c0])
    for i in range(steps):
      cents = chunks | f"lloyd{i}" >> beam.CombineGlobally(LloydCombineFn(), beam.pvalue.AsSingleton(cents))
    _ = cents | "save" >> beam.Map(save)
  out = np.load(out_path)
  if out_path.startswith(os.path.join(store_dir, ".kmeans-refined-")):
    os.remove(out_path)
  return out


def fit_kmeans_pipeline(store_dir: str, k: int, seed: int = 0, sample_size: Optional[int] = None,
                        max_iter: int = 100, refine_steps: int = 0, columns: Optional[Tuple[int, int]] = None,
                        runner: str = "direct", num_workers: int = 1,
                        beam_options: Optional[Sequence[str]] = None) -> np.ndarray:
  """k-means centroids [k, D] of a store: ``fit_kmeans`` on its sample, then ``refine_steps`` Beam Lloyd passes.

  With ``refine_steps=0`` no pipeline runs (the fit needs only the sample). Equals
  ``refine_kmeans(x, fit_kmeans(x, k, seed, sample_size, max_iter), refine_steps)`` in-process.
  """
  files, n = _store_files(store_dir)
  if sample_size is not None and sample_size < n:
    if sample_size < k:
      raise ValueError(f"sample_size={sample_size} is smaller than k={k}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
  else:
    rows = np.arange(n)
  cents = fit_kmeans(_sample_rows(store_dir, files, rows, columns), k, seed=seed, max_iter=max_iter)
  if refine_steps:
    cents = refine_kmeans_pipeline(store_dir, cents, refine_steps, columns, runner, num_workers, beam_options)
  return cents
