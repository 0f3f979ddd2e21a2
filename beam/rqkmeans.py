"""RQ-KMeans Semantic-ID model fitted level by level over an embedding store, as one Beam pipeline.

Shape letters: N items, F content width, D normalised width, L levels, K codes per level.

The in-process driver is ``semrec.sid.train_sid_model(x, RQVAEConfig(mode="rqkmeans", ...))``. This pipeline
runs the same steps over the store's shards, with the same functions:
  1. the input normaliser: per-shard float64 column sums, then per-shard ``InputNormalizer.centred_moments``
     around their mean, summed by combines and set with ``InputNormalizer.set_statistics`` (``adapt`` sums the
     same pieces over chunks);
  2. level l = 0..L-1: ``fit_kmeans(r, K, seed + l)`` on the rows ``fit_kmeans(..., sample_size)`` samples
     in-process (the fit needs only them: they are read and pushed through levels < l on one worker), then
     ``kmeans_refine_steps`` full-data Lloyd passes, each a ``CombineGlobally(LloydCombineFn)`` over every
     shard's level-l residuals (r - its nearest code, level after level);
  3. the codebooks and normaliser -> a frozen ``SidModel``; per-item codes come from ``assign_pipeline``
     (``semrec batch assign``), the same assigner as in-process.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np

from semrec.atomic import save_npz
from semrec.beam.kmeans import LloydCombineFn, _sample_rows, _store_files, sum_accumulators
from semrec.beam.options import make_pipeline
from semrec.encoders.store import read_shard
from semrec.sid import RQVAEConfig, SidAssigner, SidModel, fit_kmeans
from semrec.sid.kmeans import nearest_centroid
from semrec.sid.training import sized_config


def rqkmeans_assigner(config: RQVAEConfig, input_dim: int, normalizer_weights=None, codebooks=None) -> SidAssigner:
  """The network-free ``SidAssigner`` of an RQ-KMeans model (as ``train_sid_model`` builds it), optionally
  with its normaliser weights and [L, K, D] codebooks set."""
  a = SidAssigner(input_dim, config.num_levels, config.codebook_size, hidden_dims=(), latent_dim=None,
                  normalization=config.normalization, whiten_dim=config.whiten_dim,
                  dead_code_window=config.dead_code_window, name="assigner")
  a.build((None, input_dim))
  if normalizer_weights is not None:
    a.normalizer.set_weights(list(normalizer_weights))
  if codebooks is not None:
    a.quantizer.set_codebooks(np.asarray(codebooks, np.float32))
  return a


def level_residuals(assigner: SidAssigner, x: np.ndarray, books: np.ndarray) -> np.ndarray:
  """[n, F] embeddings -> [n, D] float32 residuals entering level len(books): the normalised input minus
  its nearest code of each level so far (the step ``train_sid_model``'s residual k-means takes)."""
  r = assigner.normalizer(np.asarray(x, np.float32)).numpy().astype(np.float32)
  for book in books:
    r -= book[nearest_centroid(r, book)]
  return r


class _SumFn(beam.CombineFn):
  """Element-wise sum of the tuples of arrays ``part(chunk, *side)`` returns (None entries stay None)."""

  def __init__(self, part):
    self._part = part

  def create_accumulator(self, *args, **kwargs):
    return None

  def add_input(self, acc, chunk, *side):
    return self.merge_accumulators([acc, self._part(chunk, *side)])

  def merge_accumulators(self, accs, *args, **kwargs):
    return sum_accumulators(accs)

  def extract_output(self, acc, *side):
    if acc is None:
      raise ValueError("RQ-KMeans got no data (empty store?)")
    return acc


class _Fit:
  """The pipeline's steps as picklable callables over one store and config (their state: paths + config)."""

  def __init__(self, store_dir: str, files: list, n: int, dim: int, config: RQVAEConfig):
    self.store_dir, self.files, self.n, self.dim, self.config = store_dir, files, n, dim, config

  def read(self, name):
    yield read_shard(os.path.join(self.store_dir, name)).embeddings

  def column_sums(self, x):
    return np.asarray([len(x)], np.int64), np.asarray(x, np.float64).sum(0)

  def moments(self, x, mean):
    return rqkmeans_assigner(self.config, self.dim).normalizer.centred_moments(x, mean)

  def mean(self, sums):
    return rqkmeans_assigner(self.config, self.dim).normalizer.mean_of(int(sums[0][0]), sums[1])

  def normalizer(self, moments, sums, mean):
    a = rqkmeans_assigner(self.config, self.dim)
    a.normalizer.set_statistics(int(sums[0][0]), mean, moments[0], moments[1])
    return a.normalizer.get_weights()

  def residuals(self, name, weights, books):
    yield level_residuals(rqkmeans_assigner(self.config, self.dim, weights), next(self.read(name)), books)

  def fit_level(self, books, weights):
    """Level len(books): ``fit_kmeans`` on the residuals of the rows the in-process fit samples."""
    c, level = self.config, len(books)
    if c.kmeans_sample_size is not None and c.kmeans_sample_size < self.n:
      if c.kmeans_sample_size < c.codebook_size:
        raise ValueError(f"sample_size={c.kmeans_sample_size} is smaller than k={c.codebook_size}")
      rows = np.sort(np.random.default_rng(c.seed + level).choice(self.n, size=c.kmeans_sample_size,
                                                                  replace=False))
    else:
      rows = np.arange(self.n)
    x = _sample_rows(self.store_dir, self.files, rows, None)
    r = level_residuals(rqkmeans_assigner(c, self.dim, weights), x, books)
    return fit_kmeans(r, c.codebook_size, seed=c.seed + level, max_iter=c.kmeans_max_iter)


def _checked_config(config: RQVAEConfig, n: int, f: int) -> RQVAEConfig:
  """``train_sid_model``'s checks and whitening-width cap for N items of width F."""
  if config.mode != "rqkmeans":
    raise ValueError(f"fit_rqkmeans_pipeline fits mode='rqkmeans' models, got mode={config.mode!r}")
  return sized_config(config, n, f)


def fit_rqkmeans_pipeline(store_dir: str, config: Optional[RQVAEConfig] = None, runner: str = "direct",
                          num_workers: int = 1, beam_options: Optional[Sequence[str]] = None,
                          out_dir: Optional[str] = None) -> SidModel:
  """Fits an RQ-KMeans ``SidModel`` on a complete embedding store with one Beam pipeline (module docstring).

  Equals ``train_sid_model(store embeddings, config)``: the same normaliser, codebooks within float32
  rounding of the float64 sums (identical without refinement), the same codes. ``out_dir``: save the model.
  """
  config = config or RQVAEConfig(mode="rqkmeans")
  t0 = time.time()
  files, n = _store_files(store_dir)
  dim = read_shard(os.path.join(store_dir, files[0])).embeddings.shape[1]
  config = _checked_config(config, n, dim)
  fit = _Fit(store_dir, files, n, dim, config)
  result = os.path.join(store_dir, f".rqkmeans-{os.getpid()}.npz")
  side = beam.pvalue.AsSingleton
  with make_pipeline(runner, num_workers, beam_options) as p:
    names = p | "shards" >> beam.Create(files) | "spread" >> beam.Reshuffle()
    x = names | "read" >> beam.FlatMap(fit.read)
    sums = x | "sums" >> beam.CombineGlobally(_SumFn(fit.column_sums))
    mean = sums | "mean" >> beam.Map(fit.mean)
    moments = x | "moments" >> beam.CombineGlobally(_SumFn(fit.moments), side(mean))
    weights = moments | "normalizer" >> beam.Map(fit.normalizer, side(sums), side(mean))
    books = p | "no_levels" >> beam.Create([np.zeros((0, config.codebook_size, 0), np.float32)])
    for level in range(config.num_levels):
      book = books | f"fit{level}" >> beam.Map(fit.fit_level, side(weights))
      if config.kmeans_refine_steps:
        res = names | f"residuals{level}" >> beam.FlatMap(fit.residuals, side(weights), side(books))
        for s in range(config.kmeans_refine_steps):
          book = res | f"lloyd{level}_{s}" >> beam.CombineGlobally(LloydCombineFn(), side(book))
      books = books | f"append{level}" >> beam.Map(
          lambda b, new: np.concatenate([b.reshape(len(b), new.shape[0], new.shape[1]), new[None]]), side(book))
    _ = books | "save" >> beam.Map(
        lambda b, w: save_npz(result, codebooks=b, **{f"normalizer_{i}": a for i, a in enumerate(w)}), side(weights))
  with np.load(result) as r:
    books, w = r["codebooks"], [r[f"normalizer_{i}"] for i in range(len(r.files) - 1)]
  os.remove(result)
  model = SidModel(config, rqkmeans_assigner(config, dim, w, books), None,
                   history={"train_seconds": time.time() - t0, "runner": runner, "num_workers": num_workers})
  if out_dir:
    model.save(out_dir)
  return model
