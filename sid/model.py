"""A trained Semantic-ID model (``SidModel``): codes, reconstructions, health, atomic save / load.

Shape letters: N items, B batch, F content width, D latent width, L levels, K codes per level.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from semrec.config import from_dict, to_dict
from semrec.sid.assign import SidAssigner, predict_codes
from semrec.sid.kmeans import validate_embeddings
from semrec.sid.rqvae import RQVAE, RQVAEConfig

FORMAT_VERSION = 1


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
    network = build_network(config, manifest["input_dim"]) if config.mode == "rqvae" else None
    assigner = network.assigner if network is not None else build_assigner(config, manifest["input_dim"])
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


def build_assigner(config: RQVAEConfig, input_dim: int) -> SidAssigner:
  a = SidAssigner(input_dim, config.num_levels, config.codebook_size, hidden_dims=(), latent_dim=None,
                  normalization=config.normalization, whiten_dim=config.whiten_dim,
                  dead_code_window=config.dead_code_window, name="assigner")
  a.build(tf.TensorShape([None, input_dim]))
  return a


def build_network(config: RQVAEConfig, input_dim: int) -> RQVAE:
  net = RQVAE(input_dim, config.num_levels, config.codebook_size, hidden_dims=config.hidden_dims,
              latent_dim=config.latent_dim, normalization=config.normalization, whiten_dim=config.whiten_dim,
              activation=config.activation,
              beta=config.beta, dead_code_window=config.dead_code_window)
  net.assigner(tf.zeros([1, input_dim]))
  net(tf.zeros([1, input_dim]))
  return net
