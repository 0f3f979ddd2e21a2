"""Frozen SID inference: the ``SidAssigner`` layer and the resumable batch job ``assign_sids``.

Shape letters: N items, B batch, F content width, D latent width, L levels.

``SidAssigner`` holds the input normaliser, the encoder MLP (absent in RQ-KMeans mode) and the
residual quantiser. The RQ-VAE trains *these same layer objects*, so ``SidAssigner`` runs exactly
the training-time quantisation path. It is an ordinary serialisable Keras layer: drop it into a
candidate tower to turn raw content embeddings into SIDs in-graph, or run ``assign_sids`` over an
embedding store to give every (including every new) item its SID without retraining.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from semrec.atomic import save_npz
from semrec.sid.kmeans import validate_embeddings
from semrec.sid.quantizer import ResidualQuantizer

NORMALIZATIONS = ("center", "standardize", "whiten", "none")


@tf.keras.utils.register_keras_serializable(package="semrec")
class InputNormalizer(tf.keras.layers.Layer):
  """Fixed input normalisation with statistics adapted from data.

  Modes:
    "center": x - mean, divided by one global scale (mean squared value per feature = 1); keeps
      the geometry of cosine embeddings.
    "standardize": per-feature z-score.
    "whiten": PCA whitening onto the top ``output_dim`` principal directions, (x - mean) @ W with
      unit variance per output dimension. Spreads residuals over many directions, which keeps the
      deeper code levels balanced (higher unique-SID ratio).
    "none": identity.
  Input [B, F] float32 -> [B, output_dim] float32 (output_dim = F except for "whiten").
  Statistics are non-trainable weights.
  """

  def __init__(self, dim: int, mode: str = "center", output_dim: Optional[int] = None, **kwargs):
    kwargs.setdefault("trainable", False)
    super().__init__(**kwargs)
    if mode not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    self.dim = int(dim)
    self.mode = mode
    self.output_dim = int(output_dim) if (mode == "whiten" and output_dim) else self.dim
    if mode == "whiten" and not 1 <= self.output_dim <= self.dim:
      raise ValueError(f"whiten output_dim must be in [1, {self.dim}], got {output_dim}")
    self.mean = self.add_weight(name="mean", shape=(self.dim,), initializer="zeros", trainable=False)
    if mode == "whiten":
      self.projection = self.add_weight(name="projection", shape=(self.dim, self.output_dim),
                                        initializer="zeros", trainable=False)
      self.inverse = self.add_weight(name="inverse", shape=(self.output_dim, self.dim), initializer="zeros",
                                     trainable=False)
    else:
      self.scale = self.add_weight(name="scale", shape=(self.dim,), initializer="ones", trainable=False)

  def adapt(self, x: np.ndarray, chunk_size: int = 65536):
    """Sets the statistics from [N, F] data (float64 accumulation over chunks; N may be millions)."""
    n = x.shape[0]
    total = np.zeros(self.dim)
    for s in range(0, n, chunk_size):
      total += np.asarray(x[s:s + chunk_size], np.float64).sum(0)
    mean = self.mean_of(n, total)
    sq = np.zeros(self.dim)
    cov = np.zeros((self.dim, self.dim)) if self.mode == "whiten" else None
    if self.mode != "none":
      for s in range(0, n, chunk_size):
        part = self.centred_moments(x[s:s + chunk_size], mean)
        sq += part[0]
        if cov is not None:
          cov += part[1]
    self.set_statistics(n, mean, sq, cov)

  def mean_of(self, n: int, total: np.ndarray) -> np.ndarray:
    """[F] float64 mean from the row count and the [F] float64 column sums (zeros in mode "none")."""
    return total / n if self.mode != "none" else np.zeros(self.dim)

  def centred_moments(self, x: np.ndarray, mean: np.ndarray) -> tuple:
    """One chunk's share of ``adapt``'s second pass: (sum of squares [F], X^T X [F, F] or None), float64,
    of the chunk centred on ``mean``; additive over chunks (``semrec.beam`` sums them per shard)."""
    xc = np.asarray(x, np.float64) - mean
    return (xc ** 2).sum(0), (xc.T @ xc if self.mode == "whiten" else None)

  def set_statistics(self, n: int, mean: np.ndarray, sq: np.ndarray, cov: Optional[np.ndarray]):
    """Sets the weights from N, the float64 mean [F] and the summed ``centred_moments`` (see ``adapt``)."""
    self.mean.assign(np.asarray(mean).astype(np.float32))
    if self.mode == "none":
      self.scale.assign(np.ones(self.dim, np.float32))
      return
    if self.mode == "whiten":
      if n <= self.output_dim:
        raise ValueError(f"whitening to {self.output_dim} dims needs more than {self.output_dim} items, got {n}")
      eigval, eigvec = np.linalg.eigh(cov / (n - 1))
      top = np.argsort(eigval)[::-1][:self.output_dim]
      std = np.sqrt(np.maximum(eigval[top], 1e-6 * max(eigval.max(), 1e-12)))  # no blow-up of null directions
      v = eigvec[:, top]  # [F, P]
      self.projection.assign((v / std).astype(np.float32))
      self.inverse.assign((v * std).T.astype(np.float32))
    elif self.mode == "standardize":
      self.scale.assign(np.maximum(np.sqrt(sq / n), 1e-6).astype(np.float32))
    else:
      self.scale.assign(np.full(self.dim, max(np.sqrt(sq.sum() / (n * self.dim)), 1e-6), np.float32))

  def call(self, x):
    x = tf.cast(x, tf.float32) - self.mean
    if self.mode == "whiten":
      return tf.matmul(x, self.projection)
    return x / self.scale

  def invert(self, y):
    """Maps normalised values back to the input space (projection onto the kept PCA directions)."""
    if self.mode == "whiten":
      return tf.matmul(y, self.inverse) + self.mean
    return y * self.scale + self.mean

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self.output_dim])

  def get_config(self):
    config = super().get_config()
    config.update({"dim": self.dim, "mode": self.mode, "output_dim": self.output_dim})
    return config


@tf.keras.utils.register_keras_serializable(package="semrec")
class SidAssigner(tf.keras.layers.Layer):
  """Content embedding -> Semantic ID codes, frozen.

  Input: [B, F] float32 content embeddings. Output: [B, L] int32 codes in [0, K).

  Args:
    input_dim: F, the content width (checked at build time).
    num_levels: L.
    codebook_size: K.
    hidden_dims: encoder MLP hidden widths; empty with ``latent_dim=None`` for RQ-KMeans (the
      quantiser then works on the normalised input).
    latent_dim: D; None means no encoder (RQ-KMeans).
    normalization: "center" | "standardize" | "whiten" | "none" (see ``InputNormalizer``).
    whiten_dim: output width of "whiten" normalisation (PCA components kept).
    activation: hidden activation of the encoder.
    dead_code_window: passed to the quantiser (used only while training).
  """

  def __init__(self, input_dim: int, num_levels: int, codebook_size: int, hidden_dims: Sequence[int] = (),
               latent_dim: Optional[int] = None, normalization: str = "center", whiten_dim: Optional[int] = None,
               activation: str = "relu", dead_code_window: int = 50, **kwargs):
    super().__init__(**kwargs)
    self.input_dim = int(input_dim)
    self.num_levels = int(num_levels)
    self.codebook_size = int(codebook_size)
    self.hidden_dims = tuple(int(h) for h in hidden_dims)
    self.latent_dim = int(latent_dim) if latent_dim else None
    self.normalization = normalization
    self.whiten_dim = int(whiten_dim) if whiten_dim else None
    self.activation = activation
    self.dead_code_window = int(dead_code_window)
    if self.latent_dim is None and self.hidden_dims:
      raise ValueError("hidden_dims given without latent_dim")
    self.normalizer = InputNormalizer(self.input_dim, normalization, output_dim=self.whiten_dim, name="normalizer")
    self.encoder_layers = []
    if self.latent_dim is not None:
      for i, h in enumerate(self.hidden_dims):
        self.encoder_layers.append(tf.keras.layers.Dense(h, activation=activation, name=f"encoder_{i}"))
      self.encoder_layers.append(tf.keras.layers.Dense(self.latent_dim, name="encoder_out"))
    self.quantizer = ResidualQuantizer(self.num_levels, self.codebook_size,
                                       self.latent_dim or self.normalizer.output_dim,
                                       dead_code_window=dead_code_window, name="quantizer")

  def build(self, input_shape):
    if input_shape[-1] is not None and input_shape[-1] != self.input_dim:
      raise ValueError(f"{self.name}: wrong embedding width {input_shape[-1]}, the SID model expects {self.input_dim}")
    h = tf.TensorShape([None, self.input_dim])
    # Sublayers may already be built (the RQ-VAE trains them directly): never rebuild (re-initialise) them.
    for layer in [self.normalizer] + self.encoder_layers:
      if not layer.built:
        layer.build(h)
      h = layer.compute_output_shape(h)
    if not self.quantizer.built:
      self.quantizer.build(h)
    super().build(input_shape)

  def encode(self, x: tf.Tensor) -> tf.Tensor:
    """[B, F] -> [B, D] latent (normalised input when there is no encoder)."""
    h = self.normalizer(x)
    for layer in self.encoder_layers:
      h = layer(h)
    return h

  def call(self, x):
    return self.quantizer.codes(self.encode(x))

  def fingerprint(self) -> str:
    """Short hash of config and weights; shards written by another model are not reused."""
    h = hashlib.sha256(json.dumps(self.get_config(), sort_keys=True, default=str).encode())
    for w in self.weights:
      if w is not self.quantizer.steps_since_used:  # training-only idle counters
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:16]

  def get_config(self):
    config = super().get_config()
    config.update({"input_dim": self.input_dim, "num_levels": self.num_levels,
                   "codebook_size": self.codebook_size, "hidden_dims": list(self.hidden_dims),
                   "latent_dim": self.latent_dim, "normalization": self.normalization,
                   "whiten_dim": self.whiten_dim, "activation": self.activation,
                   "dead_code_window": self.dead_code_window})
    return config


def predict_codes(assigner: SidAssigner, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
  """Runs the assigner over [N, F] float32 in batches -> [N, L] int32 (one compiled graph)."""
  fn = _compiled(assigner)
  out = np.empty((x.shape[0], assigner.num_levels), np.int32)
  for s in range(0, x.shape[0], batch_size):
    out[s:s + batch_size] = fn(tf.constant(x[s:s + batch_size])).numpy()
  return out


def _compiled(assigner: SidAssigner):
  fn = getattr(assigner, "_semrec_compiled", None)
  if fn is None:
    fn = tf.function(assigner.call, input_signature=[tf.TensorSpec([None, assigner.input_dim], tf.float32)],
                     jit_compile=False)
    assigner._semrec_compiled = fn
  return fn


def _load_source(store_or_array, item_ids):
  """Returns (item_ids [N] object, embeddings [N, F]) from an array, a store, or store contents."""
  if isinstance(store_or_array, (np.ndarray, list, tuple)) or tf.is_tensor(store_or_array):
    x = np.asarray(store_or_array)
    ids = np.asarray(item_ids, dtype=object) if item_ids is not None else np.array(
        [str(i) for i in range(len(x))], dtype=object)
    return ids, x
  contents = store_or_array.load() if hasattr(store_or_array, "load") else store_or_array
  if not hasattr(contents, "embeddings") or not hasattr(contents, "item_ids"):
    raise TypeError("assign_sids expects an array, an EmbeddingStore (with .load()) or StoreContents "
                    f"(with .item_ids/.embeddings); got {type(store_or_array).__name__}")
  return np.asarray(contents.item_ids, dtype=object), np.asarray(contents.embeddings)


def shard_starts(num_items: int, shard_size: int) -> list:
  """First rows of the assignment shards of ``num_items`` items: 0, shard_size, 2 * shard_size, ..."""
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  return list(range(0, num_items, shard_size))


def assign_shard(assigner: SidAssigner, x: np.ndarray, start: int, out_dir: str, item_ids=None,
                 fingerprint: Optional[str] = None, batch_size: int = 8192,
                 cluster_layers: Optional[Mapping[str, tf.keras.layers.Layer]] = None) -> dict:
  """Codes of one shard, rows [start, start + len(x)) of the store; written to ``codes-<start>.npz``.

  Pure per shard (any driver may call it). A file already written by the same assigner (fingerprint,
  row range and cluster granularities) is reused, so a rerun skips finished shards.

  Args:
    assigner: the frozen ``SidAssigner``.
    x: [n, F] float embeddings of the shard.
    start: first store row of the shard (names the file).
    out_dir: output directory (must exist).
    item_ids: [n] ids (named in bad-input errors).
    fingerprint: ``assigner.fingerprint()`` (pass it to avoid rehashing per shard).
    batch_size: items per assigner call.
    cluster_layers: optional {name: ``ClusterIdLayer``}: also assign those cluster IDs.

  Returns:
    {"start", "stop", "codes" [n, L] int32, "cluster_ids" {name: [n] int32}}.
  """
  fp = fingerprint or assigner.fingerprint()
  stop = start + len(x)
  names = sorted(cluster_layers or {})
  path = os.path.join(out_dir, f"codes-{start:012d}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as f:
      if (str(f["fingerprint"]) == fp and int(f["stop"]) == stop and f["codes"].shape[0] == stop - start
              and sorted(k.split("/", 1)[1] for k in f.files if k.startswith("cluster/")) == names):
        return {"start": start, "stop": stop, "codes": f["codes"],
                "cluster_ids": {n: f[f"cluster/{n}"] for n in names}}
  x = validate_embeddings(x, item_ids=item_ids, expected_dim=assigner.input_dim, name="embedding store")
  codes = predict_codes(assigner, x, batch_size=batch_size)
  clusters = {n: cluster_layers[n](x).numpy().astype(np.int32) for n in names}
  save_npz(path, codes=codes, start=start, stop=stop, fingerprint=fp,
           **{f"cluster/{n}": v for n, v in clusters.items()})
  return {"start": start, "stop": stop, "codes": codes, "cluster_ids": clusters}


def collect_table(item_ids, shard_results, codebook_size: int, out_dir: str, suffix: bool = False):
  """Joins ``assign_shard`` results (any order) into the ``SidTable`` saved under ``out_dir/table``."""
  from semrec.sid.table import SidTable
  results = sorted(shard_results, key=lambda r: r["start"])
  n = len(item_ids)
  bounds = [(r["start"], r["stop"]) for r in results]
  if [b[0] for b in bounds] != [0] + [b[1] for b in bounds[:-1]] or (bounds and bounds[-1][1] != n):
    raise ValueError(f"{out_dir}: assignment shards {bounds} do not cover rows [0, {n})")
  codes = np.concatenate([r["codes"] for r in results]).astype(np.int32)
  names = sorted(results[0]["cluster_ids"]) if results else []
  clusters = {k: np.concatenate([r["cluster_ids"][k] for r in results]) for k in names}
  table = SidTable(item_ids, codes, codebook_size, cluster_ids=clusters or None)
  if suffix:
    table = table.with_suffix()
  table.save(os.path.join(out_dir, "table"))
  return table


def assign_sids(store_or_array, assigner: SidAssigner, out_dir: str, item_ids=None, shard_size: int = 65536,
                batch_size: int = 8192, suffix: bool = False, progress: bool = True,
                cluster_layers: Optional[Mapping[str, tf.keras.layers.Layer]] = None):
  """Assigns SIDs to every item of an embedding store, in resumable shards.

  Each shard ``codes-<start>.npz`` is written atomically; a rerun skips shards already written by
  the same assigner (checked by its fingerprint), so an interrupted job resumes where it stopped.
  At the end the full ``SidTable`` is saved under ``out_dir/table``. This is the in-process driver of
  ``assign_shard`` + ``collect_table``; ``semrec.beam.assign_pipeline`` runs the same functions on Beam.

  Args:
    store_or_array: [N, F] array, or an ``EmbeddingStore`` / ``StoreContents`` (item_ids, embeddings).
    assigner: a trained ``SidAssigner`` (e.g. ``train_sid_model(...).assigner``).
    out_dir: output directory (created).
    item_ids: [N] ids when an array is given (default "0".."N-1").
    shard_size: items per shard file.
    batch_size: items per assigner call.
    suffix: also add the TIGER-style uniqueness suffix to the table.
    progress: show a tqdm bar.
    cluster_layers: optional {name: ``ClusterIdLayer``}; their cluster IDs go into the table too.

  Returns:
    the ``SidTable`` (also saved in ``out_dir/table``).

  Raises:
    DataError: empty store, wrong embedding width, NaN/inf rows (named by item id).
  """
  from tqdm.auto import tqdm

  ids, x = _load_source(store_or_array, item_ids)
  x = validate_embeddings(x, item_ids=ids, expected_dim=assigner.input_dim, name="embedding store")
  os.makedirs(out_dir, exist_ok=True)
  fp = assigner.fingerprint()
  results = []
  for start in tqdm(shard_starts(x.shape[0], shard_size), desc="assign SIDs", unit="shard", disable=not progress):
    stop = min(start + shard_size, x.shape[0])
    results.append(assign_shard(assigner, x[start:stop], start, out_dir, item_ids=ids[start:stop], fingerprint=fp,
                                batch_size=batch_size, cluster_layers=cluster_layers))
  return collect_table(ids, results, assigner.codebook_size, out_dir, suffix=suffix)
