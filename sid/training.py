"""Training of a Semantic-ID model: ``train_sid_model`` (RQ-VAE fit or RQ-KMeans) and its codebook tricks.

RQ-VAE: codebooks initialised by residual k-means on the first batch, Keras fit (the dead-code reset runs
inside ``RQVAE.train_step``), then a final codebook refresh over the whole catalogue's residuals.
RQ-KMeans: residual k-means on the normalised input, level by level, no network.

Shape letters: N items, F content width, D latent width, L levels, K codes per level.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from semrec.sid.kmeans import fit_kmeans, nearest_centroid, refine_kmeans, validate_embeddings
from semrec.sid.model import SidModel, build_assigner, build_network
from semrec.sid.rqvae import RQVAEConfig


def _residual_kmeans(z: np.ndarray, num_levels: int, k: int, seed: int, sample_size: Optional[int],
                     max_iter: int, refine_steps: int = 0) -> np.ndarray:
  """Residual k-means: [N, D] -> codebooks [L, K, D] (level l fits the residuals left by 1..l-1, on a
  sample of them, then ``refine_steps`` Lloyd passes over all of them)."""
  books = []
  r = z.astype(np.float32).copy()
  for level in range(num_levels):
    book = fit_kmeans(r, k, seed=seed + level, sample_size=sample_size, max_iter=max_iter)
    if refine_steps:
      book = refine_kmeans(r, book, refine_steps)
    books.append(book)
    r -= book[nearest_centroid(r, book)]
  return np.stack(books)


def _refresh_codebooks(z: np.ndarray, books: np.ndarray, steps: int) -> np.ndarray:
  """Lloyd passes per level over all residuals, starting from the trained codebooks.

  Each pass assigns by the inference rule (nearest code), moves each used code to the mean of its
  residuals and re-seeds each unused code at the residual of the worst-served item (largest
  squared error), one distinct item per empty code. Returns new [L, K, D] codebooks.
  """
  books = books.astype(np.float32).copy()
  r = z.astype(np.float32).copy()
  k = books.shape[1]
  for level in range(books.shape[0]):
    book = books[level]
    for _ in range(steps):
      a = nearest_centroid(r, book)
      counts = np.bincount(a, minlength=k)
      order = np.argsort(a, kind="stable")
      used = counts > 0
      sums = np.zeros_like(book)
      starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[used]
      sums[used] = np.add.reduceat(r[order], starts, axis=0)
      book[used] = sums[used] / counts[used, None]
      empty = np.flatnonzero(~used)
      if len(empty):
        err = ((r - book[a]) ** 2).sum(1)
        worst = np.argsort(-err)[:len(empty)]
        book[empty[:len(worst)]] = r[worst]
    books[level] = book
    r -= book[nearest_centroid(r, book)]
  return books


class _TqdmEpochs(tf.keras.callbacks.Callback):
  """One tqdm bar over epochs with the latest losses (Keras' own bar is off: verbose=0)."""

  def __init__(self, epochs: int):
    super().__init__()
    from tqdm.auto import tqdm
    self.bar = tqdm(total=epochs, desc="RQ-VAE", unit="epoch")

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    self.bar.set_postfix({k: f"{logs[k]:.3g}" for k in ("loss", "reconstruction", "codes_reset") if k in logs})
    self.bar.update(1)

  def on_train_end(self, logs=None):
    self.bar.close()


def sized_config(config: RQVAEConfig, n: int, f: int) -> RQVAEConfig:
  """``config`` checked for N items of width F (K <= N; whitening needs N >= 3), with the whitening width
  capped at min(N - 1, F). Raises ValueError naming the setting."""
  if config.codebook_size > n:
    raise ValueError(f"codebook_size K={config.codebook_size} is larger than the number of items N={n}: "
                     "every code needs at least one item; use K <= N (e.g. K ~ N/30 or less)")
  if config.normalization == "whiten" and (config.whiten_dim is None or config.whiten_dim > min(n - 1, f)):
    if n < 3:
      raise ValueError(f"whitening needs at least 3 items, got {n}; use normalization='center'")
    config = dataclasses.replace(config, whiten_dim=min(n - 1, f))
  return config


def train_sid_model(embeddings, config: Optional[RQVAEConfig] = None, item_ids=None,
                    progress: bool = True) -> SidModel:
  """Trains an RQ-VAE or RQ-KMeans Semantic-ID model on [N, F] content embeddings.

  Args:
    embeddings: [N, F] float content embeddings (e.g. ``EmbeddingStore.load().embeddings``).
    config: ``RQVAEConfig`` (defaults: rqvae, L=3, K=256).
    item_ids: optional [N] ids, only used to name bad rows in errors.
    progress: show a tqdm bar over epochs (rqvae) when ``config.verbose`` is 0.

  Returns:
    a ``SidModel`` with ``.assigner``, ``.save(dir)``, ``SidModel.load(dir)``, ``.health(x)``.

  Raises:
    DataError: empty input or NaN/inf rows; ValueError: K larger than the number of items.
  """
  config = config or RQVAEConfig()
  x = validate_embeddings(embeddings, item_ids=item_ids)
  n, f = x.shape
  config = sized_config(config, n, f)
  tf.keras.utils.set_random_seed(config.seed)
  t0 = time.time()
  if config.mode == "rqkmeans":
    assigner = build_assigner(config, f)
    assigner.normalizer.adapt(x)
    z = assigner.normalizer(x).numpy()
    books = _residual_kmeans(z, config.num_levels, config.codebook_size, config.seed, config.kmeans_sample_size,
                             config.kmeans_max_iter, config.kmeans_refine_steps)
    assigner.quantizer.set_codebooks(books)
    return SidModel(config, assigner, None, history={"train_seconds": time.time() - t0})

  net = build_network(config, f)
  net.assigner.normalizer.adapt(x)
  rng = np.random.default_rng(config.seed)
  order = rng.permutation(n)
  # Codebook initialisation: k-means on the first batch's residuals, level by level.
  first = x[order[:max(config.init_batch_size, config.codebook_size)]]
  z0 = net.assigner.encode(tf.constant(first)).numpy()
  net.assigner.quantizer.set_codebooks(
      _residual_kmeans(z0, config.num_levels, config.codebook_size, config.seed, None, config.kmeans_max_iter))
  batch = min(config.batch_size, n)
  steps_per_epoch = max(n // batch, 1)
  schedule = tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps_per_epoch,
                                                        alpha=0.1)
  net.compile(optimizer=tf.keras.optimizers.Adam(schedule))
  ds = (tf.data.Dataset.from_tensor_slices(x).shuffle(n, seed=config.seed, reshuffle_each_iteration=True)
        .batch(batch, drop_remainder=True).prefetch(2))
  callbacks = [_TqdmEpochs(config.epochs)] if (progress and not config.verbose) else []
  hist = net.fit(ds, epochs=config.epochs, verbose=config.verbose, callbacks=callbacks)
  t_fit = time.time() - t0
  if config.refresh_steps:
    z = np.concatenate([net.assigner.encode(tf.constant(x[s:s + 8192])).numpy() for s in range(0, n, 8192)])
    net.assigner.quantizer.set_codebooks(_refresh_codebooks(z, net.assigner.quantizer.codebooks.numpy(),
                                                            config.refresh_steps))
  history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
  history.update({"fit_seconds": t_fit, "train_seconds": time.time() - t0})
  return SidModel(config, net.assigner, net, history=history)
