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

This module holds the config and the Keras network; ``sid/training.py`` trains it (``train_sid_model``:
codebook initialisation, fit, final refresh) and ``sid/model.py`` holds the trained ``SidModel`` (apply, save,
load). Both names stay importable from here.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from semrec.sid.assign import NORMALIZATIONS, SidAssigner
from semrec.sid.quantizer import rq_vae_loss

MODES = ("rqvae", "rqkmeans")


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


def __getattr__(name: str):
  """``SidModel`` and ``train_sid_model`` live in sid/model.py and sid/training.py (which import this module);
  resolved on first use so ``from semrec.sid.rqvae import SidModel`` keeps working."""
  if name == "SidModel":
    from semrec.sid.model import SidModel
    return SidModel
  if name == "train_sid_model":
    from semrec.sid.training import train_sid_model
    return train_sid_model
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
