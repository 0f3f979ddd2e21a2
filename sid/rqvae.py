"""RQ-VAE (and the RQ-KMeans baseline) that turns content embeddings into Semantic IDs.

Shape letters: N items, B batch, F content width, D latent width, L levels, K codes per level.

RQ-VAE (Singh et al., RecSys 2024; Zeghidour et al. / Lee et al. for residual VQ): normalised input
-> MLP encoder -> latent z [B, D] -> ``ResidualQuantizer`` (L x K, straight-through) -> MLP decoder
-> x_hat. Loss = ||x - x_hat||^2 + sum_l beta*||r_l - sg(e_l)||^2 + ||sg(r_l) - e_l||^2, beta = 0.25.
What keeps every code in use (plain RQ-VAEs collapse to 20-60% of level-1 codes on text embeddings):
  * codebooks initialised by k-means (k-means++) on the first batch's residuals, level by level;
  * dead-code reset: a code idle for ``dead_code_window`` steps jumps to the residual of one of the
    batch's worst-quantised items;
  * a final codebook refresh (``refresh_steps``): with the encoder frozen, a few k-means passes
    per level over the whole catalogue's residuals (same nearest-code rule as inference), with any
    still-empty code re-seeded at the worst-served residual.
RQ-KMeans: no network; residual k-means on the normalised input, level by level.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from semrec.config import from_dict, to_dict
from semrec.sid.assign import NORMALIZATIONS, SidAssigner, predict_codes
from semrec.sid.kmeans import fit_kmeans, nearest_centroid, refine_kmeans, validate_embeddings
from semrec.sid.quantizer import rq_vae_loss

MODES = ("rqvae", "rqkmeans")
FORMAT_VERSION = 1


@dataclasses.dataclass
class RQVAEConfig:
  """Configuration of a Semantic-ID model.

  Attributes:
    mode: "rqvae" (encoder + residual quantiser + decoder, trained with fit) or "rqkmeans"
      (residual k-means on the normalised input, no network).
    num_levels: L, code levels per SID.
    codebook_size: K, codes per level; must not exceed the number of training items.
    hidden_dims: encoder MLP hidden widths (the decoder mirrors them). rqvae only.
    latent_dim: D, the quantised latent width. rqvae only.
    normalization: input normalisation, "center" (mean-centre, one global scale), "standardize"
      (per-feature z-score), "whiten" (PCA whitening to ``whiten_dim`` dims) or "none".
    whiten_dim: PCA components kept by "whiten" (None keeps all; capped at min(N - 1, F) when training).
    activation: MLP hidden activation.
    beta: commitment weight of the loss.
    epochs: training epochs (rqvae).
    batch_size: training batch size (rqvae).
    learning_rate: Adam learning rate (cosine-decayed to 10% over training).
    init_batch_size: size of the first batch whose residuals initialise the codebooks by k-means.
    dead_code_window: steps a code may stay unused before it is reset (0 disables).
    refresh_steps: k-means passes per level over all residuals after training (rqvae; 0 disables).
    kmeans_sample_size: rqkmeans: fit each level on a random sample of this many items when the
      catalogue is larger (None = all items; 65,536 = 256 points per code at K=256, faiss' default).
    kmeans_max_iter: Lloyd iterations per k-means fit.
    kmeans_refine_steps: rqkmeans: full-data Lloyd passes per level after its (sample) fit, over all items'
      residuals (0 = none; ``semrec.beam.fit_rqkmeans_pipeline`` runs them as Beam combines).
    seed: seeds shuffling, initialisation and k-means.
    verbose: Keras fit verbosity.
  """
  mode: str = "rqvae"
  num_levels: int = 3
  codebook_size: int = 256
  hidden_dims: Tuple[int, ...] = (256, 128)
  latent_dim: int = 32
  normalization: str = "whiten"
  whiten_dim: Optional[int] = 64
  activation: str = "relu"
  beta: float = 0.25
  epochs: int = 40
  batch_size: int = 256
  learning_rate: float = 1e-3
  init_batch_size: int = 4096
  dead_code_window: int = 50
  refresh_steps: int = 3
  kmeans_sample_size: Optional[int] = 65536
  kmeans_max_iter: int = 100
  kmeans_refine_steps: int = 0
  seed: int = 0
  verbose: int = 0

  def __post_init__(self):
    self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
    for f in ("num_levels", "latent_dim", "epochs", "batch_size", "init_batch_size", "kmeans_max_iter"):
      if getattr(self, f) < 1:
        raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
    if self.codebook_size < 2:
      raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
    if self.beta < 0 or self.learning_rate <= 0:
      raise ValueError(f"need beta >= 0 and learning_rate > 0, got {self.beta}, {self.learning_rate}")
    if self.dead_code_window < 0 or self.refresh_steps < 0 or self.kmeans_refine_steps < 0:
      raise ValueError("dead_code_window, refresh_steps and kmeans_refine_steps must be >= 0")


def replica_all_gather(x: tf.Tensor) -> tf.Tensor:
  """[B, ...] per-replica tensor -> [G, ...] concatenated over all replicas in sync, in replica order.

  The identity with one replica or outside ``strategy.run``. Replicas may hold different B. Used wherever
  every replica must take the same decision from the global batch (the RQ-VAE's dead-code reset,
  ``semrec.towers.distributed.gather_candidates``).
  """
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x
  devices = tf.distribute.get_strategy().extended.worker_devices
  if not x.device and len(devices) == 1:  # MWMS's all_gather needs a device on its input
    with tf.device(devices[0]):
      x = tf.identity(x)
  return ctx.all_gather(x, axis=0)


@tf.keras.utils.register_keras_serializable(package="semrec")
class RQVAE(tf.keras.Model):
  """The trainable RQ-VAE: ``SidAssigner`` (normaliser, encoder, quantiser) + MLP decoder.

  ``call(x)`` on [B, F] float32 returns {"codes" [B, L] int32, "reconstruction" [B, F] (normalised
  space), "target" [B, F] (normalised input), "residuals" [B, L, D], "code_vectors" [B, L, D]}.
  The loss lives in ``compute_losses``; ``train_step`` also updates the dead-code counters.
  """

  def __init__(self, input_dim: int, num_levels: int = 3, codebook_size: int = 256,
               hidden_dims: Sequence[int] = (256, 128), latent_dim: int = 32, normalization: str = "center",
               whiten_dim: Optional[int] = None, activation: str = "relu", beta: float = 0.25,
               dead_code_window: int = 50, **kwargs):
    super().__init__(**kwargs)
    self.input_dim = int(input_dim)
    self.beta = float(beta)
    self.assigner = SidAssigner(input_dim, num_levels, codebook_size, hidden_dims=hidden_dims,
                                latent_dim=latent_dim, normalization=normalization, whiten_dim=whiten_dim,
                                activation=activation, dead_code_window=dead_code_window, name="assigner")
    self.decoder_layers = [tf.keras.layers.Dense(h, activation=activation, name=f"decoder_{i}")
                           for i, h in enumerate(reversed(tuple(hidden_dims)))]
    self.decoder_layers.append(tf.keras.layers.Dense(self.assigner.normalizer.output_dim, name="decoder_out"))
    self._trackers = {k: tf.keras.metrics.Mean(name=k)
                      for k in ("loss", "reconstruction", "commitment", "codebook", "codes_reset")}

  @property
  def metrics(self):
    return list(self._trackers.values())

  def decode(self, quantized: tf.Tensor) -> tf.Tensor:
    h = quantized
    for layer in self.decoder_layers:
      h = layer(h)
    return h

  def call(self, x, training=False):
    target = self.assigner.normalizer(x)
    z = target
    for layer in self.assigner.encoder_layers:
      z = layer(z)
    q = self.assigner.quantizer(z)
    out = dict(q)
    out["reconstruction"] = self.decode(q["quantized"])
    out["target"] = target
    return out

  def compute_losses(self, out: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return rq_vae_loss(out["target"], out["reconstruction"], out["residuals"], out["code_vectors"], self.beta)

  def train_step(self, data):
    x = data[0] if isinstance(data, (tuple, list)) else data
    with tf.GradientTape() as tape:
      out = self(x, training=True)
      losses = self.compute_losses(out)
    variables = self.trainable_variables
    grads = tape.gradient(losses["loss"], variables)
    self.optimizer.apply_gradients(zip(grads, variables))
    # Under a synchronous strategy every replica resets dead codes from the same (global) batch, so the
    # codebooks stay identical on all replicas.
    codes, residuals, vectors = (replica_all_gather(out[k]) for k in ("codes", "residuals", "code_vectors"))
    n_reset = self.assigner.quantizer.update_usage_and_reset(codes, residuals, vectors)
    for k, v in losses.items():
      self._trackers[k].update_state(v)
    self._trackers["codes_reset"].update_state(tf.cast(n_reset, tf.float32))
    return {k: t.result() for k, t in self._trackers.items()}

  def test_step(self, data):
    x = data[0] if isinstance(data, (tuple, list)) else data
    losses = self.compute_losses(self(x, training=False))
    for k, v in losses.items():
      self._trackers[k].update_state(v)
    return {k: self._trackers[k].result() for k in losses}

  def get_config(self):
    a = self.assigner
    return {"input_dim": self.input_dim, "num_levels": a.num_levels, "codebook_size": a.codebook_size,
            "hidden_dims": list(a.hidden_dims), "latent_dim": a.latent_dim, "normalization": a.normalization,
            "whiten_dim": a.whiten_dim, "activation": a.activation, "beta": self.beta,
            "dead_code_window": a.dead_code_window,
            "name": self.name}


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


class SidModel:
  """A trained Semantic-ID model: ``assigner`` (frozen ``SidAssigner``), plus the decoder for rqvae.

  Attributes:
    config: the ``RQVAEConfig`` it was trained with.
    assigner: ``SidAssigner`` [B, F] float32 -> [B, L] int32, frozen (trainable=False).
    network: the ``RQVAE`` Keras model (rqvae mode) or None (rqkmeans).
    history: per-epoch training losses (rqvae) and timings.
  """

  def __init__(self, config: RQVAEConfig, assigner: SidAssigner, network: Optional[RQVAE] = None,
               history: Optional[dict] = None):
    self.config = config
    self.assigner = assigner
    self.network = network
    self.history = history or {}
    self.assigner.trainable = False

  @property
  def input_dim(self) -> int:
    return self.assigner.input_dim

  @property
  def codebook_size(self) -> int:
    return self.assigner.codebook_size

  @property
  def num_levels(self) -> int:
    return self.assigner.num_levels

  def codebooks(self) -> np.ndarray:
    """[L, K, D] float32 codebooks."""
    return self.assigner.quantizer.codebooks.numpy()

  def codes(self, x, item_ids=None, batch_size: int = 8192) -> np.ndarray:
    """[N, F] embeddings -> [N, L] int32 codes (validated input)."""
    x = validate_embeddings(x, item_ids=item_ids, expected_dim=self.input_dim)
    return predict_codes(self.assigner, x, batch_size=batch_size)

  def reconstruct(self, x, batch_size: int = 8192) -> np.ndarray:
    """[N, F] -> [N, F] float32 reconstructions in the input space (decoder output, or the
    sum of code vectors for rqkmeans, mapped back through the normaliser)."""
    x = validate_embeddings(x, expected_dim=self.input_dim)
    out = np.empty_like(x)
    books = self.assigner.quantizer.codebooks
    for s in range(0, x.shape[0], batch_size):
      xb = tf.constant(x[s:s + batch_size])
      if self.network is not None:
        y = self.network(xb)["reconstruction"]
      else:
        c = self.assigner(xb)
        y = tf.add_n([tf.gather(books[l], c[:, l]) for l in range(self.num_levels)])
      out[s:s + batch_size] = self.assigner.normalizer.invert(y).numpy()
    return out

  def table(self, x, item_ids, suffix: bool = True, cluster_ids=None):
    """``SidTable`` of [N, F] embeddings with their item ids (TIGER suffix added by default)."""
    from semrec.sid.table import SidTable
    t = SidTable(item_ids, self.codes(x, item_ids=item_ids), self.codebook_size, cluster_ids=cluster_ids)
    return t.with_suffix() if suffix else t

  def health(self, x, item_ids=None, **kwargs) -> dict:
    """``sid_health`` of this model's codes and reconstructions on [N, F] embeddings."""
    from semrec.sid.health import sid_health
    x = validate_embeddings(x, item_ids=item_ids, expected_dim=self.input_dim)
    return sid_health(self.codes(x), x, self.codebook_size, reconstructions=self.reconstruct(x), **kwargs)

  # ---- persistence -------------------------------------------------------------------------------
  def save(self, directory: str):
    """Writes manifest.json + weights.npz atomically (a temp dir swapped into place)."""
    from semrec.atomic import atomic_directory
    with atomic_directory(directory) as tmp:
      arrays = {f"assigner/{i:03d}": w for i, w in enumerate(self.assigner.get_weights())}
      if self.network is not None:
        for j, layer in enumerate(self.network.decoder_layers):
          for i, w in enumerate(layer.get_weights()):
            arrays[f"decoder/{j:03d}/{i:03d}"] = w
      np.savez(os.path.join(tmp, "weights.npz"), **arrays)
      manifest = {"format_version": FORMAT_VERSION, "kind": "semrec.sid.SidModel", "config": to_dict(self.config),
                  "input_dim": self.input_dim, "assigner_config": self.assigner.get_config(),
                  "fingerprint": self.assigner.fingerprint(), "history": self.history}
      with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, default=float)

  @classmethod
  def load(cls, directory: str) -> "SidModel":
    from semrec.atomic import read_manifest
    manifest = read_manifest(directory, "SID model", kind="semrec.sid.SidModel")
    config = from_dict(RQVAEConfig, manifest["config"])
    from semrec.atomic import read_npz
    arrays = read_npz(os.path.join(directory, "weights.npz"), "SID model weights",
                      "run `semrec sid train --force` to retrain the SID model")
    network = _build_network(config, manifest["input_dim"]) if config.mode == "rqvae" else None
    assigner = network.assigner if network is not None else _build_assigner(config, manifest["input_dim"])
    assigner.trainable = False  # get_weights order depends on trainability; saved models are frozen
    assigner.set_weights([arrays[k] for k in sorted(a for a in arrays if a.startswith("assigner/"))])
    if network is not None:
      for j, layer in enumerate(network.decoder_layers):
        layer.set_weights([arrays[k] for k in sorted(a for a in arrays if a.startswith(f"decoder/{j:03d}/"))])
    model = cls(config, assigner, network, history=manifest.get("history"))
    if assigner.fingerprint() != manifest["fingerprint"]:
      raise ValueError(f"{directory}: weights do not match the manifest fingerprint (corrupt or mixed files); run "
                       "`semrec sid train --force` to retrain the SID model")
    return model


def _build_assigner(config: RQVAEConfig, input_dim: int) -> SidAssigner:
  a = SidAssigner(input_dim, config.num_levels, config.codebook_size, hidden_dims=(), latent_dim=None,
                  normalization=config.normalization, whiten_dim=config.whiten_dim,
                  dead_code_window=config.dead_code_window, name="assigner")
  a.build(tf.TensorShape([None, input_dim]))
  return a


def _build_network(config: RQVAEConfig, input_dim: int) -> RQVAE:
  net = RQVAE(input_dim, config.num_levels, config.codebook_size, hidden_dims=config.hidden_dims,
              latent_dim=config.latent_dim, normalization=config.normalization, whiten_dim=config.whiten_dim,
              activation=config.activation,
              beta=config.beta, dead_code_window=config.dead_code_window)
  net.assigner(tf.zeros([1, input_dim]))
  net(tf.zeros([1, input_dim]))
  return net


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
  if config.codebook_size > n:
    raise ValueError(f"codebook_size K={config.codebook_size} is larger than the number of items N={n}: "
                     "every code needs at least one item; use K <= N (e.g. K ~ N/30 or less)")
  if config.normalization == "whiten" and (config.whiten_dim is None or config.whiten_dim > min(n - 1, f)):
    if n < 3:
      raise ValueError(f"whitening needs at least 3 items, got {n}; use normalization='center'")
    config = dataclasses.replace(config, whiten_dim=min(n - 1, f))
  tf.keras.utils.set_random_seed(config.seed)
  t0 = time.time()
  if config.mode == "rqkmeans":
    assigner = _build_assigner(config, f)
    assigner.normalizer.adapt(x)
    z = assigner.normalizer(x).numpy()
    books = _residual_kmeans(z, config.num_levels, config.codebook_size, config.seed, config.kmeans_sample_size,
                             config.kmeans_max_iter, config.kmeans_refine_steps)
    assigner.quantizer.set_codebooks(books)
    return SidModel(config, assigner, None, history={"train_seconds": time.time() - t0})

  net = _build_network(config, f)
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
