"""Kuaishou-style cluster IDs: k-means over content embeddings, in-graph assignment, trainable table.

Shape letters: N items, B batch, D content width, k clusters, d embedding width.

Fitting uses scikit-learn's ``KMeans`` (k-means++ init, Lloyd/Elkan in compiled code) on the whole
input or on a random sample of it; nothing iterates over the corpus in Python. The fitted centroids
become a frozen, non-trainable weight of ``ClusterIdLayer``, which maps content embeddings to the
nearest centroid inside the TensorFlow graph, so a tower can take raw content as input. The
cluster ID then indexes a trainable ``ClusterIdEmbedding`` that the recommender learns (mapping
content space to behaviour space).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from semrec.data import DataError


def validate_embeddings(x, item_ids=None, expected_dim: Optional[int] = None,
                        name: str = "embeddings") -> np.ndarray:
  """Checks a content-embedding matrix and returns it as float32 [N, D].

  Args:
    x: array-like [N, D].
    item_ids: optional [N] ids, used to name bad rows in error messages.
    expected_dim: if given, D must equal it.
    name: what to call the input in messages.

  Raises:
    DataError: empty input, wrong rank or width, or rows holding NaN / inf (the first bad rows
      are named by index and item id).
  """
  arr = np.asarray(x)
  if arr.ndim != 2:
    raise DataError(f"{name}: expected a 2-D array [num_items, dim], got shape {arr.shape}")
  if arr.shape[0] == 0:
    raise DataError(f"{name}: empty (0 items); nothing to cluster or quantise")
  if expected_dim is not None and arr.shape[1] != expected_dim:
    raise DataError(f"{name}: wrong embedding width {arr.shape[1]}, the model expects {expected_dim}")
  if not np.issubdtype(arr.dtype, np.number):
    raise DataError(f"{name}: expected numeric values, got dtype {arr.dtype}")
  arr = arr.astype(np.float32, copy=False)
  finite = np.isfinite(arr).all(axis=1)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    shown = []
    for i in bad[:5]:
      ident = f" (item {item_ids[i]!r})" if item_ids is not None else ""
      shown.append(f"row {i}{ident}")
    raise DataError(f"{name}: {len(bad)} row(s) contain NaN or inf values: " + ", ".join(shown)
                    + (" ..." if len(bad) > 5 else ""))
  if item_ids is not None and len(item_ids) != arr.shape[0]:
    raise DataError(f"{name}: {arr.shape[0]} rows but {len(item_ids)} item ids")
  return arr


def fit_kmeans(x, k: int, seed: int = 0, sample_size: Optional[int] = None, max_iter: int = 100,
               item_ids=None) -> np.ndarray:
  """Fits k-means (k-means++ init) and returns the centroids.

  Args:
    x: [N, D] float content embeddings.
    k: number of clusters; must not exceed the number of (sampled) items.
    seed: seeds both the sample and k-means++.
    sample_size: if set and smaller than N, fit on a uniform random sample of this many rows
      (catalogue-scale corpora: the centroids of a large sample are as good and far cheaper).
    max_iter: Lloyd iterations.
    item_ids: optional [N] ids for error messages.

  Returns:
    [k, D] float32 centroids.
  """
  from sklearn.cluster import KMeans

  x = validate_embeddings(x, item_ids=item_ids)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if sample_size is not None and sample_size < x.shape[0]:
    if sample_size < k:
      raise ValueError(f"sample_size={sample_size} is smaller than k={k}")
    rows = np.random.default_rng(seed).choice(x.shape[0], size=sample_size, replace=False)
    x = x[np.sort(rows)]
  if k > x.shape[0]:
    raise ValueError(f"k={k} clusters is larger than the number of items ({x.shape[0]}); "
                     "use k <= number of items")
  # k-means++ seeding (greedy, 2 + log k local trials, as scikit-learn's) in block NumPy: sklearn's own
  # `kmeans_plusplus` took ~4 min for k=1000 on 9k x 384 on this 2-core machine, this takes seconds.
  # The Lloyd iterations are scikit-learn's.
  init = kmeans_plusplus_init(x, k, seed=seed)
  km = KMeans(n_clusters=k, init=init, n_init=1, max_iter=max_iter, random_state=seed)
  km.fit(x)
  return km.cluster_centers_.astype(np.float32)


def kmeans_plusplus_init(x: np.ndarray, k: int, seed: int = 0, n_local_trials: Optional[int] = None) -> np.ndarray:
  """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant with local trials).

  Args:
    x: [N, D] float32 points.
    k: number of centres (<= N).
    seed: RNG seed.
    n_local_trials: candidates sampled per centre (default 2 + floor(log k)); the one that lowers the
      potential most is kept.

  Returns:
    [k, D] float32 initial centres (rows of ``x``).
  """
  x = np.asarray(x, np.float32)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be in [1, number of points={n}]")
  rng = np.random.default_rng(seed)
  trials = n_local_trials or 2 + int(np.log(k))
  sq = (x * x).sum(1)
  centres = np.empty((k, x.shape[1]), np.float32)
  first = int(rng.integers(n))
  centres[0] = x[first]
  closest = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)
  potential = float(closest.sum())
  for c in range(1, k):
    if potential <= 0:  # every point coincides with a centre: fill with distinct unused rows
      centres[c] = x[int(rng.integers(n))]
      continue
    cand = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * potential), n - 1)
    dist = np.maximum(sq[None, :] - 2.0 * (x[cand] @ x.T) + sq[cand][:, None], 0.0)
    np.minimum(closest[None, :], dist, out=dist)
    pots = dist.sum(1)
    best = int(np.argmin(pots))
    closest, potential = dist[best], float(pots[best])
    centres[c] = x[cand[best]]
  return centres


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, batch_size: int = 65536) -> np.ndarray:
  """NumPy nearest-centroid assignment (squared L2), [N, D] x [k, D] -> [N] int32."""
  c2 = (centroids.astype(np.float32) ** 2).sum(1)
  out = np.empty(x.shape[0], np.int32)
  for s in range(0, x.shape[0], batch_size):
    xb = x[s:s + batch_size]
    out[s:s + batch_size] = np.argmin(c2[None, :] - 2.0 * xb @ centroids.T, axis=1)
  return out


def lloyd_statistics(x: np.ndarray, centroids: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
  """One chunk's share of a Lloyd step: per-centroid sums and counts of its nearest points.

  Pure and additive over chunks, so any driver (a loop, a Beam ``CombineFn``) can sum the partial results.

  Args:
    x: [n, D] float32 points.
    centroids: [k, D] current centroids.
  Returns:
    (sums [k, D] float64, counts [k] int64, squared error float) of this chunk.
  """
  x = np.asarray(x, np.float32)
  a = nearest_centroid(x, centroids)
  k = centroids.shape[0]
  sums = np.zeros((k, x.shape[1]), np.float64)
  np.add.at(sums, a, x.astype(np.float64))
  sse = float(((x - centroids[a]) ** 2).sum())
  return sums, np.bincount(a, minlength=k).astype(np.int64), sse


def lloyd_update(centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """New [k, D] float32 centroids from summed ``lloyd_statistics``; an empty cluster keeps its centroid."""
  new = np.asarray(centroids, np.float32).copy()
  used = counts > 0
  new[used] = (sums[used] / counts[used, None]).astype(np.float32)
  return new


def refine_kmeans(x, centroids: np.ndarray, steps: int, chunk_size: int = 65536) -> np.ndarray:
  """Full-data Lloyd refinement of (e.g. sample-fitted) centroids, in chunks: [k, D] float32.

  The in-process driver of ``lloyd_statistics`` + ``lloyd_update`` (``semrec.beam.refine_kmeans_pipeline``
  runs the same functions as a Beam combine).
  """
  x = validate_embeddings(x)
  c = np.asarray(centroids, np.float32)
  for _ in range(steps):
    parts = [lloyd_statistics(x[s:s + chunk_size], c) for s in range(0, x.shape[0], chunk_size)]
    c = lloyd_update(c, sum(p[0] for p in parts), sum(p[1] for p in parts))
  return c


def fit_cluster_granularities(x, ks: Sequence[int] = (100, 1000), seed: int = 0,
                              sample_size: Optional[int] = None,
                              modality_slices: Optional[Mapping[str, Tuple[int, int]]] = None
                              ) -> Dict[str, "ClusterIdLayer"]:
  """Fits one ``ClusterIdLayer`` per granularity (and per modality, if slices are given).

  Args:
    x: [N, D] content embeddings (e.g. the concatenated multimodal vector).
    ks: cluster counts, e.g. (100, 1000) for a coarse and a fine ID.
    seed: k-means seed.
    sample_size: optional fitting sample per k-means.
    modality_slices: optional {"text": (0, 384), "image": (384, 2432), ...}: cluster each
      modality's columns separately (Kuaishou clusters the concatenation; per-modality IDs are an
      option when modalities differ in scale or coverage).

  Returns:
    {name: ClusterIdLayer}, names like "k100" or "text_k100".
  """
  x = validate_embeddings(x)
  layers = {}
  slices = dict(modality_slices) if modality_slices else {"": (0, x.shape[1])}
  for mod, (start, stop) in slices.items():
    if not 0 <= start < stop <= x.shape[1]:
      raise ValueError(f"modality slice {mod!r}=({start}, {stop}) is outside the embedding width {x.shape[1]}")
    for k in ks:
      cents = fit_kmeans(x[:, start:stop], k, seed=seed, sample_size=sample_size)
      name = f"{mod}_k{k}" if mod else f"k{k}"
      input_slice = None if (start, stop) == (0, x.shape[1]) else (start, stop)
      layers[name] = ClusterIdLayer(cents, input_slice=input_slice, name=f"cluster_id_{name}")
  return layers


@tf.keras.utils.register_keras_serializable(package="semrec")
class ClusterIdLayer(tf.keras.layers.Layer):
  """Nearest-centroid cluster ID, in-graph, with frozen centroids.

  Input: [B, D] float32 content embeddings (or wider, with ``input_slice`` picking columns).
  Output: [B] int32 cluster ids in [0, num_clusters).

  The centroids are a non-trainable weight (saved with the model's weights, not in the config).

  Args:
    centroids: optional [k, D] initial centroids (from ``fit_kmeans``). When rebuilding from a
      config it is omitted and the weights are restored afterwards.
    num_clusters: k (inferred from ``centroids`` if given).
    dim: D (inferred from ``centroids`` if given).
    input_slice: optional (start, stop) columns of the input to cluster (per-modality IDs).
  """

  def __init__(self, centroids=None, num_clusters: Optional[int] = None, dim: Optional[int] = None,
               input_slice: Optional[Tuple[int, int]] = None, **kwargs):
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    if centroids is not None:
      centroids = np.asarray(centroids, np.float32)
      if centroids.ndim != 2:
        raise ValueError(f"centroids must be [k, D], got shape {centroids.shape}")
      num_clusters, dim = centroids.shape
    if not num_clusters or not dim:
      raise ValueError("ClusterIdLayer needs centroids or both num_clusters and dim")
    self.num_clusters = int(num_clusters)
    self.dim = int(dim)
    self.input_slice = tuple(int(v) for v in input_slice) if input_slice is not None else None
    if self.input_slice is not None and self.input_slice[1] - self.input_slice[0] != self.dim:
      raise ValueError(f"input_slice {self.input_slice} has width {self.input_slice[1] - self.input_slice[0]}, "
                       f"centroids have width {self.dim}")
    init = (tf.constant_initializer(centroids) if centroids is not None else "zeros")
    self.centroids = self.add_weight(name="centroids", shape=(self.num_clusters, self.dim), dtype=tf.float32,
                                     initializer=init, trainable=False)

  def build(self, input_shape):
    width = input_shape[-1]
    need = self.input_slice[1] if self.input_slice else self.dim
    if width is not None and (width < need if self.input_slice else width != need):
      raise ValueError(f"{self.name}: wrong embedding width {width}; the centroids expect "
                       f"{'at least ' if self.input_slice else ''}{need}")
    super().build(input_shape)

  def call(self, x):
    x = tf.cast(x, tf.float32)
    if self.input_slice is not None:
      x = x[..., self.input_slice[0]:self.input_slice[1]]
    # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c); ||x||^2 is constant per row.
    c2 = tf.reduce_sum(tf.square(self.centroids), axis=-1)
    scores = c2 - 2.0 * tf.matmul(x, self.centroids, transpose_b=True)
    return tf.argmin(scores, axis=-1, output_type=tf.int32)

  def get_config(self):
    config = super().get_config()
    config.update({"num_clusters": self.num_clusters, "dim": self.dim,
                   "input_slice": list(self.input_slice) if self.input_slice else None})
    return config


@tf.keras.utils.register_keras_serializable(package="semrec")
class ClusterIdEmbedding(tf.keras.layers.Layer):
  """Trainable embedding of cluster IDs, learned with the recommender.

  Input: [...] int cluster ids in [0, num_clusters). Output: [..., dim] float32.
  Out-of-range ids raise an InvalidArgumentError naming the layer.

  Args:
    num_clusters: table rows (k).
    dim: embedding width d.
    embeddings_initializer: Keras initializer for the table.
    embeddings_regularizer: optional Keras regularizer.
  """

  def __init__(self, num_clusters: int, dim: int, embeddings_initializer="uniform",
               embeddings_regularizer=None, **kwargs):
    super().__init__(**kwargs)
    if num_clusters < 1 or dim < 1:
      raise ValueError(f"num_clusters and dim must be >= 1, got {num_clusters}, {dim}")
    self.num_clusters = int(num_clusters)
    self.dim = int(dim)
    self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)
    self.embeddings_regularizer = tf.keras.regularizers.get(embeddings_regularizer)
    self.embeddings = self.add_weight(name="embeddings", shape=(self.num_clusters, self.dim),
                                      initializer=self.embeddings_initializer,
                                      regularizer=self.embeddings_regularizer, trainable=True)

  def call(self, ids):
    ids = tf.cast(ids, tf.int32)
    checks = [tf.debugging.assert_non_negative(ids, message=f"{self.name}: negative cluster id"),
              tf.debugging.assert_less(ids, self.num_clusters,
                                       message=f"{self.name}: cluster id >= num_clusters={self.num_clusters}")]
    with tf.control_dependencies(checks):
      return tf.gather(self.embeddings, ids)

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_clusters": self.num_clusters, "dim": self.dim,
        "embeddings_initializer": tf.keras.initializers.serialize(self.embeddings_initializer),
        "embeddings_regularizer": tf.keras.regularizers.serialize(self.embeddings_regularizer)
        if self.embeddings_regularizer else None,
    })
    return config

