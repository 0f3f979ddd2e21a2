"""Beam driver of SID (and cluster-ID) assignment with the frozen SID model.

One task per assignment shard (rows [start, start + shard_size) of the embedding store): the worker loads
the frozen model once (``SidModel.load``), reads only the store shards overlapping its rows, and calls
``semrec.sid.assign_shard`` -- the function ``assign_sids`` calls -- so the codes files and the SID table
equal the in-process ones. A rerun skips finished shards.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import apache_beam as beam
import numpy as np

from semrec.beam.inprocess import cluster_layers
from semrec.beam.options import make_pipeline
from semrec.encoders.store import EmbeddingStore, read_shard
from semrec.sid.assign import assign_shard, collect_table, shard_starts


def read_store_rows(store_dir: str, start: int, stop: int, manifest: Optional[dict] = None):
  """(item_ids [n] object, embeddings [n, F] float32) of store rows [start, stop), reading only the shards
  that overlap them (the store must be complete)."""
  manifest = manifest or EmbeddingStore(store_dir).manifest()
  if not manifest.get("complete"):
    raise ValueError(f"embedding store {store_dir!r} is incomplete: finish the encode job first")
  ids, embs, lo = [], [], 0
  for shard in manifest["shards"]:
    hi = lo + shard["num_items"]
    if hi > start and lo < stop:
      b = read_shard(os.path.join(store_dir, shard["file"]))
      a, z = max(start, lo) - lo, min(stop, hi) - lo
      ids.append(b.item_ids[a:z])
      embs.append(b.embeddings[a:z])
    lo = hi
  return np.concatenate(ids), np.concatenate(embs)


class AssignShardFn(beam.DoFn):
  """start row -> ``assign_shard`` result (+ the shard's item ids)."""

  def __init__(self, store_dir: str, sid_model_dir: str, out_dir: str, shard_size: int, batch_size: int,
               cluster_centroids: Optional[Mapping[str, np.ndarray]]):
    self.store_dir, self.sid_model_dir, self.out_dir = store_dir, sid_model_dir, out_dir
    self.shard_size, self.batch_size = shard_size, batch_size
    self.cluster_centroids = {k: np.asarray(v, np.float32) for k, v in (cluster_centroids or {}).items()}

  def setup(self):
    from semrec.sid.rqvae import SidModel
    self.assigner = SidModel.load(self.sid_model_dir).assigner
    self.fingerprint = self.assigner.fingerprint()
    self.cluster_layers = cluster_layers(self.cluster_centroids)
    self.manifest = EmbeddingStore(self.store_dir).manifest()

  def process(self, start: int):
    n = self.manifest["dataset"]["num_items"]
    ids, x = read_store_rows(self.store_dir, start, min(start + self.shard_size, n), self.manifest)
    r = assign_shard(self.assigner, x, start, self.out_dir, item_ids=ids, fingerprint=self.fingerprint,
                     batch_size=self.batch_size, cluster_layers=self.cluster_layers)
    yield dict(r, item_ids=ids)


def _collect(results, codebook_size: int, out_dir: str, suffix: bool):
  results = sorted(results, key=lambda r: r["start"])
  ids = np.concatenate([r["item_ids"] for r in results])
  collect_table(ids, results, codebook_size, out_dir, suffix=suffix)


def assign_pipeline(store_dir: str, sid_model_dir: str, out_dir: str, shard_size: int = 65536,
                    batch_size: int = 8192, suffix: bool = False,
                    cluster_centroids: Optional[Mapping[str, np.ndarray]] = None, runner: str = "direct",
                    num_workers: int = 1, beam_options: Optional[Sequence[str]] = None):
  """Assigns SIDs (and cluster IDs) to every item of the store with Beam; same files as ``assign_sids``.

  Args:
    store_dir: A complete embedding store.
    sid_model_dir: A saved ``SidModel`` (``SidModel.save``).
    out_dir: Output directory (codes shards + ``table/``), shared by the workers.
    shard_size, batch_size, suffix: as ``assign_sids``.
    cluster_centroids: optional {name: [k, D] centroids}, e.g. the run's ``centroids_k100.npy``.
    runner, num_workers, beam_options: see ``semrec.beam.make_pipeline``.
  Returns:
    The ``SidTable`` (saved under ``out_dir/table``).
  """
  from semrec.sid.rqvae import SidModel
  from semrec.sid.table import SidTable
  manifest = EmbeddingStore(store_dir).manifest()
  if not manifest.get("complete"):
    raise ValueError(f"embedding store {store_dir!r} is incomplete: finish the encode job first")
  codebook_size = SidModel.load(sid_model_dir).codebook_size
  os.makedirs(out_dir, exist_ok=True)
  starts = shard_starts(manifest["dataset"]["num_items"], shard_size)
  with make_pipeline(runner, num_workers, beam_options) as p:
    _ = (p
         | "shards" >> beam.Create(starts)
         | "spread" >> beam.Reshuffle()
         | "assign" >> beam.ParDo(AssignShardFn(store_dir, sid_model_dir, out_dir, shard_size, batch_size,
                                                cluster_centroids))
         | "gather" >> beam.combiners.ToList()
         | "table" >> beam.Map(_collect, codebook_size, out_dir, suffix))
  return SidTable.load(os.path.join(out_dir, "table"))
