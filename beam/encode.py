"""Beam driver of the embedding-store job: one task per shard of the item table.

It calls exactly what ``encode_corpus`` calls (``plan_store`` -> ``prepare_store`` -> ``encode_shard`` per
shard -> ``finalize_store``), so the shard files and the manifest are the same; a rerun skips finished
shards. ``store_dir`` must be a filesystem every worker sees (local disk for the FnApiRunner; a shared
mount on a cluster).
"""
from __future__ import annotations

from typing import Optional, Sequence

import apache_beam as beam

from semrec.beam.options import make_pipeline
from semrec.encoders.multimodal import EncoderConfig, build_encoder
from semrec.encoders.store import EmbeddingStore, StorePlan, encode_shard, finalize_store, plan_store, prepare_store


class EncodeShardFn(beam.DoFn):
  """shard index -> ``encode_shard`` result; the encoder is built once per worker from its config."""

  def __init__(self, plan: StorePlan, store_dir: str, encoder_config: EncoderConfig):
    self.plan = plan
    self.store_dir = store_dir
    self.encoder_config = encoder_config
    self.encoder = None

  def setup(self):
    self.encoder = build_encoder(self.encoder_config)
    if self.encoder.info != self.plan.base_manifest["encoder"]:
      raise ValueError("the worker's encoder differs from the planned one (different weights or versions "
                       "on the worker?): refusing to mix embeddings in one store")

  def process(self, index: int):
    yield encode_shard(self.plan, index, self.store_dir, self.encoder)


def encode_pipeline(dataset, encoder_config: EncoderConfig, store_dir: str, shard_size: int = 1024,
                    overwrite: bool = False, runner: str = "direct", num_workers: int = 1,
                    beam_options: Optional[Sequence[str]] = None, encoder_info: Optional[dict] = None
                    ) -> EmbeddingStore:
  """Encodes ``dataset`` into the embedding store at ``store_dir`` with Beam (same result as ``encode_corpus``).

  Args:
    dataset: A ``semrec.data.RecDataset``.
    encoder_config: The ``EncoderConfig``; each worker builds the encoder from it.
    store_dir: Output directory (shared by the workers).
    shard_size: Items per shard (one Beam task each).
    overwrite: Clear a store for other inputs instead of refusing.
    runner, num_workers, beam_options: see ``semrec.beam.make_pipeline``.
    encoder_info: ``MultimodalEncoder.info`` if the caller already built the encoder (skips building one here).
  Returns:
    The complete ``EmbeddingStore``.
  """
  info = encoder_info if encoder_info is not None else build_encoder(encoder_config).info
  plan = plan_store(dataset, info, shard_size)
  prepare_store(plan, store_dir, overwrite=overwrite)
  with make_pipeline(runner, num_workers, beam_options) as p:
    _ = (p
         | "shards" >> beam.Create(list(range(plan.num_shards)))
         | "spread" >> beam.Reshuffle()
         | "encode" >> beam.ParDo(EncodeShardFn(plan, store_dir, encoder_config))
         | "gather" >> beam.combiners.ToList()
         | "manifest" >> beam.Map(lambda results: finalize_store(plan, store_dir, results) and None))
  return EmbeddingStore(store_dir)
