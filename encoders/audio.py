"""VGGish audio encoder: the VGGish log-mel front end in TF ops and the VGGish conv stack.

The front end follows VGGish's ``vggish_input.py`` / ``mel_features.py`` exactly: 16 kHz mono,
25 ms (400-sample) periodic-Hann windows every 10 ms (160 samples), |rfft| with FFT length 512
(257 bins), 64 mel bands from 125 to 7500 Hz on the HTK mel scale ``1127 ln(1 + f / 700)`` with the
DC bin zeroed, ``log(mel + 0.01)``, then non-overlapping 0.96 s patches of 96 frames x 64 bands.
The STFT and mel matrix are computed in float64 like the NumPy reference, then cast to float32.

The network is VGGish (``vggish_slim.py``): conv64-pool-conv128-pool-conv256x2-pool-conv512x2-pool,
fc4096-fc4096-fc128 (the last one linear), one 128-d embedding per patch, mean-pooled per clip.
YAMNet (1024-d per 0.96 s frame, hop 0.48 s) is an option loaded through ``tensorflow_hub`` from a Hub
handle or local Hub directory; its model runs its own front end on the 16 kHz waveform.

Shape letters: N clips, S samples, F spectrogram frames, P patches (96 frames each).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from semrec.encoders.common import RANDOM, EncodeError, is_hub_handle, load_hub_model, seeded_reinit

SAMPLE_RATE = 16000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_SECONDS = 0.96
PATCH_HOP_SECONDS = 0.96
EMBEDDING_SIZE = 128

WINDOW_LENGTH = int(round(SAMPLE_RATE * WINDOW_SECONDS))  # 400
HOP_LENGTH = int(round(SAMPLE_RATE * HOP_SECONDS))  # 160
FFT_LENGTH = 2 ** int(math.ceil(math.log2(WINDOW_LENGTH)))  # 512
PATCH_FRAMES = int(round(PATCH_SECONDS / HOP_SECONDS))  # 96
PATCH_HOP_FRAMES = int(round(PATCH_HOP_SECONDS / HOP_SECONDS))  # 96
# Fewest samples that yield one full patch: 400 + 95 * 160 = 15600 (0.975 s).
MIN_SAMPLES = WINDOW_LENGTH + (PATCH_FRAMES - 1) * HOP_LENGTH

# Channel widths of the VGGish stack and of a 4x narrower variant with the same topology (for tests).
ARCHITECTURES = {
    "vggish": {"conv": (64, 128, 256, 512), "fc": 4096},
    "vggish-small": {"conv": (16, 32, 64, 128), "fc": 512},
}


def _hertz_to_mel(hz):
  return 1127.0 * tf.math.log(1.0 + hz / 700.0)


def vggish_mel_matrix(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
                      sample_rate: int = SAMPLE_RATE, lower_edge_hertz: float = MEL_MIN_HZ,
                      upper_edge_hertz: float = MEL_MAX_HZ) -> tf.Tensor:
  """VGGish's triangular mel weights: [num_spectrogram_bins, num_mel_bins] float64.

  Bands are equally spaced on the HTK mel scale between the edges; the DC bin gets no weight.
  """
  nyquist = sample_rate / 2.0
  if not 0.0 <= lower_edge_hertz < upper_edge_hertz <= nyquist:
    raise ValueError(f"need 0 <= lower_edge_hertz < upper_edge_hertz <= {nyquist}, got "
                     f"{lower_edge_hertz}, {upper_edge_hertz}")
  bins_mel = _hertz_to_mel(tf.linspace(tf.constant(0.0, tf.float64), nyquist, num_spectrogram_bins))
  edges = tf.linspace(_hertz_to_mel(tf.constant(lower_edge_hertz, tf.float64)),
                      _hertz_to_mel(tf.constant(upper_edge_hertz, tf.float64)), num_mel_bins + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  lower_slope = (bins_mel[:, None] - lower[None, :]) / (center - lower)[None, :]
  upper_slope = (upper[None, :] - bins_mel[:, None]) / (upper - center)[None, :]
  weights = tf.maximum(tf.constant(0.0, tf.float64), tf.minimum(lower_slope, upper_slope))
  return tf.concat([tf.zeros([1, num_mel_bins], tf.float64), weights[1:]], axis=0)


@tf.keras.utils.register_keras_serializable(package="semrec")
class LogMelSpectrogram(tf.keras.layers.Layer):
  """VGGish log-mel front end: [..., S] float32 waveform at 16 kHz -> [..., F, 64] float32.

  ``F = 1 + (S - 400) // 160`` (no padding, like VGGish); values are ``log(mel + 0.01)``.
  """

  def __init__(self, num_mel_bins: int = NUM_MEL_BINS, log_offset: float = LOG_OFFSET, **kwargs):
    super().__init__(**kwargs)
    self.num_mel_bins = num_mel_bins
    self.log_offset = log_offset
    self._mel = vggish_mel_matrix(num_mel_bins=num_mel_bins)

  def call(self, waveform):
    x = tf.cast(waveform, tf.float64)
    frames = tf.signal.frame(x, WINDOW_LENGTH, HOP_LENGTH, pad_end=False)
    window = tf.signal.hann_window(WINDOW_LENGTH, periodic=True, dtype=tf.float64)
    spectrum = tf.abs(tf.signal.rfft(frames * window, fft_length=[FFT_LENGTH]))
    mel = tf.tensordot(spectrum, self._mel, axes=1)
    return tf.cast(tf.math.log(mel + self.log_offset), tf.float32)

  def get_config(self):
    config = super().get_config()
    config.update({"num_mel_bins": self.num_mel_bins, "log_offset": self.log_offset})
    return config


_FRONT_END = None


def waveform_to_patches(waveform) -> tf.Tensor:
  """16 kHz mono waveform [S] float32 (S >= 15600) -> log-mel patches [P, 96, 64] float32."""
  global _FRONT_END
  if _FRONT_END is None:
    _FRONT_END = LogMelSpectrogram()
  log_mel = _FRONT_END(tf.convert_to_tensor(waveform, tf.float32))
  return tf.signal.frame(log_mel, PATCH_FRAMES, PATCH_HOP_FRAMES, pad_end=False, axis=0)


def prepare_waveform(samples: np.ndarray, sample_rate: int, item_id: str = "",
                     field: str = "audio_path") -> np.ndarray:
  """Any waveform -> 16 kHz mono float32 in [-1, 1], zero-padded to at least one patch.

  Args:
    samples: [S] or [S, channels] array; integer PCM is scaled to [-1, 1], floats are taken as is.
    sample_rate: Sample rate of ``samples`` (Hz); other rates than 16000 are resampled with a
      polyphase filter (``scipy.signal.resample_poly``).
  Returns:
    [max(S', 15600)] float32 at 16 kHz: clips shorter than 0.975 s are zero-padded to one patch.
  Raises:
    EncodeError: empty audio or a non-positive sample rate.
  """
  from scipy.signal import resample_poly

  x = np.asarray(samples)
  if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
    raise EncodeError(item_id, field, f"invalid sample rate {sample_rate!r}")
  if np.issubdtype(x.dtype, np.integer):
    info = np.iinfo(x.dtype)
    if info.min == 0:  # unsigned PCM (8-bit WAV) is offset binary
      x = (x.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    else:
      x = x.astype(np.float64) / -float(info.min)
  else:
    x = x.astype(np.float64)
  if x.ndim == 2:
    x = x.mean(axis=1)
  if x.ndim != 1:
    raise EncodeError(item_id, field, f"audio must be [samples] or [samples, channels], got shape {x.shape}")
  if x.size == 0:
    raise EncodeError(item_id, field, "audio has no samples")
  if not np.isfinite(x).all():
    raise EncodeError(item_id, field, "audio has NaN/inf samples")
  if sample_rate != SAMPLE_RATE:
    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    x = resample_poly(x, SAMPLE_RATE // g, int(sample_rate) // g)
  if x.size < MIN_SAMPLES:
    x = np.pad(x, (0, MIN_SAMPLES - x.size))
  return x.astype(np.float32)


def build_vggish(architecture: str = "vggish") -> tf.keras.Model:
  """The VGGish network: [P, 96, 64] log-mel patches -> [P, 128] float32 embeddings.

  Layer names follow the slim checkpoint scopes (conv1 ... fc2) so checkpoints map by name.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"audio architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}")
  widths, fc = ARCHITECTURES[architecture]["conv"], ARCHITECTURES[architecture]["fc"]
  L = tf.keras.layers
  conv = lambda n, name: L.Conv2D(n, 3, padding="same", activation="relu", name=name)
  pool = lambda name: L.MaxPool2D(2, 2, padding="same", name=name)
  inputs = tf.keras.Input([PATCH_FRAMES, NUM_MEL_BINS], name="log_mel_patches")
  x = L.Reshape([PATCH_FRAMES, NUM_MEL_BINS, 1])(inputs)
  x = pool("pool1")(conv(widths[0], "conv1")(x))
  x = pool("pool2")(conv(widths[1], "conv2")(x))
  x = pool("pool3")(conv(widths[2], "conv3_2")(conv(widths[2], "conv3_1")(x)))
  x = pool("pool4")(conv(widths[3], "conv4_2")(conv(widths[3], "conv4_1")(x)))
  x = L.Flatten(name="flatten")(x)
  x = L.Dense(fc, activation="relu", name="fc1_1")(x)
  x = L.Dense(fc, activation="relu", name="fc1_2")(x)
  outputs = L.Dense(EMBEDDING_SIZE, activation=None, name="fc2")(x)
  return tf.keras.Model(inputs, outputs, name=architecture.replace("-", "_"))


# Keras layer name -> scope in the original VGGish slim checkpoint (vggish_model.ckpt).
_CKPT_SCOPES = {
    "conv1": "vggish/conv1", "conv2": "vggish/conv2", "conv3_1": "vggish/conv3/conv3_1",
    "conv3_2": "vggish/conv3/conv3_2", "conv4_1": "vggish/conv4/conv4_1", "conv4_2": "vggish/conv4/conv4_2",
    "fc1_1": "vggish/fc1/fc1_1", "fc1_2": "vggish/fc1/fc1_2", "fc2": "vggish/fc2",
}


def load_vggish_checkpoint(model: tf.keras.Model, prefix: str):
  """Loads a VGGish slim checkpoint (``vggish/conv1/weights`` ... ``vggish/fc2/biases``) into ``model``."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  for layer_name, scope in _CKPT_SCOPES.items():
    layer = model.get_layer(layer_name)
    values = []
    for part, var in (("weights", layer.kernel), ("biases", layer.bias)):
      key = f"{scope}/{part}"
      if key not in shapes:
        raise ValueError(f"VGGish checkpoint {prefix!r} has no variable {key!r}")
      if tuple(shapes[key]) != tuple(var.shape):
        raise ValueError(f"VGGish checkpoint {prefix!r}: {key} has shape {shapes[key]}, model expects "
                         f"{tuple(var.shape)}")
      values.append(reader.get_tensor(key))
    layer.set_weights(values)


class AudioEncoder:
  """Clip embeddings: waveforms -> [N, D] float32 (mean over each clip's patches / frames).

  D is 128 for VGGish and 1024 for YAMNet (in general the width of the Hub model's output).

  Args:
    weights: Where the weights come from: a TF Hub handle or local Hub directory (loaded with
      ``tensorflow_hub``: a VGGish model mapping a 16 kHz waveform [S] to [P, 128], or YAMNet mapping
      it to ``(scores [P, 521], embeddings [P, 1024], log_mel [F, 64])``; either runs its own front
      end), a Keras ``.h5`` weights file of ``build_vggish(architecture)``, a VGGish slim checkpoint
      prefix (``vggish_model.ckpt``), or ``"random"`` for seeded random initialisation of VGGish
      (reported in ``info``).
    architecture: ``"vggish"`` (default, the real network), ``"vggish-small"`` (same topology, 4x
      narrower; for fast tests only) or ``"yamnet"`` (Hub weights only: ``https://tfhub.dev/google/yamnet/1``
      or a local copy of it).
    batch_size: Patches per network call.
    seed: Seed of the random initialisation.
  """

  dim = EMBEDDING_SIZE

  def __init__(self, weights: Optional[str], architecture: str = "vggish", batch_size: int = 64, seed: int = 0):
    if not weights:
      raise ValueError("AudioEncoder needs weights: a TF Hub handle/directory, a .h5 or VGGish checkpoint path, "
                       "or 'random' (pretrained VGGish weights cannot be downloaded here)")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if architecture not in ARCHITECTURES and architecture != "yamnet":
      raise ValueError(f"audio architecture must be one of {sorted(ARCHITECTURES) + ['yamnet']}, got "
                       f"{architecture!r}")
    if architecture == "yamnet" and not is_hub_handle(str(weights)):
      raise ValueError(f"YAMNet loads from a TF Hub handle or local Hub directory, got weights={weights!r}: "
                       "e.g. https://tfhub.dev/google/yamnet/1 or a downloaded copy of it (for random init use "
                       "architecture='vggish', weights='random')")
    self.weights = str(weights)
    self.architecture = architecture
    self.batch_size = batch_size
    self.seed = seed
    self._hub = None
    self.model = None
    if self.weights == RANDOM:
      self.model = build_vggish(architecture)
      seeded_reinit(self.model, seed)
    elif is_hub_handle(self.weights):
      self._hub = load_hub_model(self.weights)
      self.dim = int(self.patch_embeddings(np.zeros(MIN_SAMPLES, np.float32)).shape[-1])
    elif self.weights.endswith((".h5", ".hdf5", ".weights.h5")):
      if not os.path.isfile(self.weights):
        raise FileNotFoundError(f"VGGish weights file not found: {self.weights}")
      self.model = build_vggish(architecture)
      self.model.load_weights(self.weights)
    else:
      if not tf.io.gfile.exists(self.weights + ".index") and not tf.io.gfile.exists(self.weights):
        raise FileNotFoundError(f"VGGish weights not found: {self.weights!r} is not 'random', a TF Hub handle/"
                                f"directory, a .h5 file or a checkpoint prefix")
      self.model = build_vggish(architecture)
      load_vggish_checkpoint(self.model, self.weights)
    if self.model is not None:
      self._embed = tf.function(lambda p: self.model(p, training=False), reduce_retracing=True)

  @property
  def info(self) -> dict:
    """Model name, weights source and random-init flag (goes into store manifests)."""
    return {"model": f"{self.architecture}-tfhub" if self._hub is not None else self.architecture,
            "weights": self.weights,
            "random_init": self.weights == RANDOM, "seed": self.seed if self.weights == RANDOM else None,
            "dim": self.dim, "sample_rate": SAMPLE_RATE}

  def patch_embeddings(self, waveform: np.ndarray) -> np.ndarray:
    """16 kHz waveform (from ``prepare_waveform``) -> [P, D] float32 per-patch (YAMNet: per-frame) embeddings."""
    if self._hub is not None:
      out = self._hub(tf.convert_to_tensor(waveform, tf.float32))
      if isinstance(out, dict):
        out = out["embeddings"] if "embeddings" in out else next(iter(out.values()))
      elif isinstance(out, (tuple, list)):
        out = out[1] if len(out) > 1 else out[0]  # YAMNet: (scores, embeddings, log_mel_spectrogram)
      return np.asarray(out, np.float32)
    return self._embed_patches(waveform_to_patches(waveform).numpy())

  def _embed_patches(self, patches: np.ndarray) -> np.ndarray:
    out = [self._embed(tf.convert_to_tensor(patches[i:i + self.batch_size]))
           for i in range(0, len(patches), self.batch_size)]
    return np.concatenate([o.numpy() for o in out], axis=0).astype(np.float32)

  def encode(self, waveforms: Sequence[np.ndarray], sample_rates: Union[int, Sequence[int]] = SAMPLE_RATE,
             item_ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """Clip embeddings (not normalised): N waveforms -> [N, 128] float32.

    Args:
      waveforms: N arrays [S] or [S, channels] (int PCM or float in [-1, 1]); lengths may differ.
      sample_rates: One rate for all clips or one per clip; non-16 kHz clips are resampled.
      item_ids: Optional ids, used in error messages.
    Raises:
      EncodeError: an empty clip or invalid sample rate (naming the item and ``audio_path``).
    """
    n = len(waveforms)
    rates = [sample_rates] * n if isinstance(sample_rates, (int, np.integer)) else list(sample_rates)
    ids = list(item_ids) if item_ids is not None else [""] * n
    if len(rates) != n or len(ids) != n:
      raise ValueError(f"got {n} waveforms, {len(rates)} sample rates and {len(ids)} item ids")
    if n == 0:
      return np.zeros([0, self.dim], np.float32)
    clips = [prepare_waveform(w, r, i) for w, r, i in zip(waveforms, rates, ids)]
    if self._hub is not None:
      return np.stack([self.patch_embeddings(c).mean(axis=0) for c in clips]).astype(np.float32)
    # Front end per clip (lengths differ), then one batched pass over all patches.
    patches = [waveform_to_patches(c).numpy() for c in clips]
    counts = np.array([len(p) for p in patches])
    emb = self._embed_patches(np.concatenate(patches, axis=0))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (np.add.reduceat(emb.astype(np.float64), starts, axis=0) / counts[:, None]).astype(np.float32)
