"""One content embedding per item: text, image and audio encoders, per-modality L2 norm, concatenation.

Output layout (fixed order ``text, image, audio``, configured modalities only):
  embeddings [N, D] float32 = [text (d_t) | image (d_i) | audio (d_a)], each block unit-norm or all zero;
  mask [N, M] float32, 1 where the item has that modality, 0 where it is absent or was masked.
The concatenation is not re-normalised: an item with k present modalities has norm sqrt(k).

Bad input (``EncoderConfig.on_bad_input``):
  - No value (empty ``image_path``/``audio_path``): the modality is absent -> zeros, mask 0. Not an error.
  - Empty text, missing/corrupt image or audio file, empty audio, silent audio (all samples zero),
    invalid sample rate, or a NaN/inf encoder output: with ``"mask"`` (default) the modality is masked
    (zeros, mask 0) and the item, field and reason are recorded in ``EncodedBatch.fallbacks`` (and in
    the embedding store manifest); with ``"raise"`` an ``EncodeError`` names the item and the field.
  - Audio shorter than 0.975 s is zero-padded to one 0.96 s patch; other sample rates are resampled
    to 16 kHz; stereo is averaged to mono. These are normal, not fallbacks.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from semrec.config import to_dict
from semrec.encoders.common import PRETRAINED, RANDOM, EncodeError, l2_normalize

MODALITY_ORDER = ("text", "image", "audio")
_FIELDS = {"text": "text", "image": "image_path", "audio": "audio_path"}


@dataclasses.dataclass
class EncoderConfig:
  """Which encoders run and with which weights. Defaults suit MovieLens (text only, MiniLM).

  Attributes:
    modalities: Modalities to encode, any of ``text``, ``image``, ``audio`` (stored in that fixed order).
    text_model: ``"all-MiniLM-L6-v2"`` (packaged, SHA-256 checked) or a local HF BERT directory.
    text_max_length: Tokens per text.
    text_batch_size: Texts per model call.
    image_weights: ``"pretrained"`` (EfficientNet-Lite0 ImageNet weights, shipped in a package),
      ``"imagenet"`` (ResNet50: Keras cache, else a Keras download), a ``.h5``/``.pth`` path, a TF Hub
      handle/directory, or ``"random"`` (explicit random init, recorded in the manifest).
    image_architecture: ``"resnet50"`` (2048-d), ``"resnet18"`` (512-d, lighter, no pretrained weights)
      or ``"efficientnet_lite0"`` (1280-d).
    image_size: Frame side in pixels (224 for ImageNet weights; >= 32).
    image_batch_size: Frames per model call.
    max_video_frames: Frames kept (evenly spaced) from a video.
    audio_weights: A TF Hub handle/directory, a ``.h5`` or VGGish checkpoint path, or ``"random"``.
      Required when ``audio`` is a modality (there is no pretrained default available offline).
    audio_architecture: ``"vggish"``, ``"vggish-small"`` (4x narrower, for tests) or ``"yamnet"``
      (1024-d, a YAMNet TF Hub handle/directory as ``audio_weights``).
    audio_batch_size: Audio patches per model call.
    projection_dims: Optional per-modality output width of a fixed seeded random projection (e.g.
      ``{"image": 256}``), applied after the per-modality normalisation and re-normalised.
    seed: Seed of random inits and projections.
    on_bad_input: ``"mask"`` (fallback: mask the modality and record it) or ``"raise"``.
  """
  modalities: Tuple[str, ...] = ("text",)
  text_model: str = "all-MiniLM-L6-v2"
  text_max_length: int = 256
  text_batch_size: int = 64
  image_weights: Optional[str] = "imagenet"
  image_architecture: str = "resnet50"
  image_size: int = 224
  image_batch_size: int = 32
  max_video_frames: int = 16
  audio_weights: Optional[str] = None
  audio_architecture: str = "vggish"
  audio_batch_size: int = 64
  projection_dims: Dict[str, int] = dataclasses.field(default_factory=dict)
  seed: int = 0
  on_bad_input: str = "mask"

  def __post_init__(self):
    mods = tuple(self.modalities)
    unknown = [m for m in mods if m not in MODALITY_ORDER]
    if unknown or not mods or len(set(mods)) != len(mods):
      raise ValueError(f"modalities must be a non-empty subset of {MODALITY_ORDER} without repeats, got {mods}")
    self.modalities = tuple(m for m in MODALITY_ORDER if m in mods)
    if self.on_bad_input not in ("mask", "raise"):
      raise ValueError(f"on_bad_input must be 'mask' or 'raise', got {self.on_bad_input!r}")
    self.projection_dims = dict(self.projection_dims)
    for m, d in self.projection_dims.items():
      if m not in self.modalities or int(d) < 1:
        raise ValueError(f"projection_dims: {m!r} -> {d!r} needs a configured modality and a width >= 1")
    if "audio" in self.modalities and not self.audio_weights:
      raise ValueError("audio_weights is required for the audio modality: a TF Hub handle/directory, a .h5 or "
                       "VGGish checkpoint path, or 'random' (no pretrained VGGish can be downloaded here)")
    if "image" in self.modalities and not self.image_weights:
      raise ValueError("image_weights is required for the image modality: 'imagenet', a .h5 path, a TF Hub "
                       "handle/directory, or 'random'")
    for f in ("text_max_length", "text_batch_size", "image_batch_size", "max_video_frames", "audio_batch_size"):
      if getattr(self, f) < 1:
        raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

  @classmethod
  def movielens(cls, **overrides) -> "EncoderConfig":
    """Text only, all-MiniLM-L6-v2 (the defaults)."""
    return cls(**overrides)

  @classmethod
  def synthetic(cls, **overrides) -> "EncoderConfig":
    """The synthetic corpus: text (MiniLM) + image (EfficientNet-Lite0, shipped ImageNet weights, 224 px)
    + audio (VGGish, explicit seeded random init: no pretrained VGGish/YAMNet weights exist offline).

    Overriding ``image_architecture`` with one that has no shipped weights (``resnet18``, ``resnet50``)
    without giving ``image_weights`` selects ``"random"`` for it (explicit, recorded in the manifest),
    which keeps the light test/quick presets light.
    """
    arch = overrides.get("image_architecture", "efficientnet_lite0")
    kwargs = dict(modalities=("text", "image", "audio"), image_architecture="efficientnet_lite0",
                  image_weights=PRETRAINED if arch == "efficientnet_lite0" else RANDOM, image_size=224,
                  audio_weights=RANDOM)
    kwargs.update(overrides)
    return cls(**kwargs)


@dataclasses.dataclass
class ItemContent:
  """Raw content of one item.

  Attributes:
    item_id: Item id.
    text: Text (e.g. title and tags joined); "" when absent.
    image_path: Image file, multi-frame file or frame directory; "" when absent.
    audio_path: WAV file; "" when absent.
  """
  item_id: str
  text: str = ""
  image_path: str = ""
  audio_path: str = ""


def item_contents(dataset) -> List[ItemContent]:
  """A ``RecDataset`` -> one ``ItemContent`` per item, in catalogue order."""
  items = dataset.items
  texts = dataset.item_texts()

  def col(name):
    if name not in items.columns:
      return [""] * len(items)
    return ["" if (v is None or (isinstance(v, float) and math.isnan(v))) else str(v) for v in items[name]]

  return [ItemContent(str(i), t, im, au)
          for i, t, im, au in zip(items["item_id"], texts, col("image_path"), col("audio_path"))]


@dataclasses.dataclass
class EncodedBatch:
  """Encoder output for a batch (or shard) of items.

  Attributes:
    item_ids: [N] object array of item ids.
    embeddings: [N, D] float32, modality blocks in ``MODALITY_ORDER``.
    mask: [N, M] float32 presence mask, one column per configured modality.
    fallbacks: One dict ``{"item_id", "field", "reason"}`` per masked bad input.
  """
  item_ids: np.ndarray
  embeddings: np.ndarray
  mask: np.ndarray
  fallbacks: List[dict]


@tf.keras.utils.register_keras_serializable(package="semrec")
class ModalityProjection(tf.keras.layers.Layer):
  """Fixed seeded random projection + L2 norm: [B, d_in] float32 -> [B, output_dim] float32.

  The kernel is a Gaussian matrix with orthonormalised columns (rows when ``output_dim > d_in``), drawn
  from ``numpy.random.default_rng(seed)``, so it is a pure function of (d_in, output_dim, seed) and a
  layer rebuilt from ``get_config`` projects identically. It is a non-trainable weight.
  """

  def __init__(self, output_dim: int, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    if output_dim < 1:
      raise ValueError(f"output_dim must be >= 1, got {output_dim}")
    self.output_dim = int(output_dim)
    self.seed = int(seed)

  def build(self, input_shape):
    d_in = int(input_shape[-1])
    g = np.random.default_rng(self.seed).standard_normal([d_in, self.output_dim])
    q, _ = np.linalg.qr(g if d_in >= self.output_dim else g.T)
    kernel = q if d_in >= self.output_dim else q.T
    self.kernel = self.add_weight("kernel", shape=[d_in, self.output_dim], trainable=False,
                                  initializer=tf.keras.initializers.Constant(kernel.astype(np.float32)))
    super().build(input_shape)

  def call(self, x):
    return tf.math.l2_normalize(tf.matmul(tf.cast(x, tf.float32), self.kernel), axis=-1, epsilon=1e-12)

  def get_config(self):
    config = super().get_config()
    config.update({"output_dim": self.output_dim, "seed": self.seed})
    return config


class MultimodalEncoder:
  """Runs the configured encoders and concatenates unit-norm modality blocks (see module docstring).

  ``encode`` is a pure function of (config, items): the same shard gives the same rows bit for bit, and an
  item's row does not depend on its batch-mates beyond float rounding (padding, batch shape), so a
  corpus can be encoded shard by shard (here, or as a map over shards in an Apache Beam pipeline).
  """

  def __init__(self, config: Optional[EncoderConfig] = None):
    self.config = config or EncoderConfig()
    c = self.config
    self.encoders = {}
    for m in c.modalities:
      if m == "text":
        from semrec.encoders.text import TextEncoder
        self.encoders[m] = TextEncoder(c.text_model, max_length=c.text_max_length, batch_size=c.text_batch_size)
      elif m == "image":
        from semrec.encoders.image import ImageEncoder
        self.encoders[m] = ImageEncoder(c.image_weights, c.image_architecture, c.image_size,
                                        batch_size=c.image_batch_size, seed=c.seed)
      else:
        from semrec.encoders.audio import AudioEncoder
        self.encoders[m] = AudioEncoder(c.audio_weights, c.audio_architecture, batch_size=c.audio_batch_size,
                                        seed=c.seed)
    self.projections = {}
    for j, m in enumerate(c.modalities):
      if m in c.projection_dims:
        layer = ModalityProjection(c.projection_dims[m], seed=c.seed + 101 * (j + 1), name=f"{m}_projection")
        layer.build([None, self.encoders[m].dim])
        self.projections[m] = layer
    self.modalities = c.modalities
    self.dims = {m: (self.projections[m].output_dim if m in self.projections else self.encoders[m].dim)
                 for m in self.modalities}
    self.offsets, start = {}, 0
    for m in self.modalities:
      self.offsets[m] = (start, start + self.dims[m])
      start += self.dims[m]
    self.dim = start

  @property
  def info(self) -> dict:
    """Everything a store manifest needs about this encoder (JSON-serialisable, no timestamps)."""
    return {
        "modality_order": list(self.modalities),
        "dims": dict(self.dims),
        "offsets": {m: list(o) for m, o in self.offsets.items()},
        "dim": self.dim,
        "encoders": {m: e.info for m, e in self.encoders.items()},
        "random_init": {m: bool(e.info.get("random_init")) for m, e in self.encoders.items()},
        "projection_dims": dict(self.config.projection_dims),
        "per_modality_l2_normalized": True,
        "config": to_dict(self.config),
    }

  @staticmethod
  def _bad(policy, fallbacks, item_id, field, reason):
    if policy == "raise":
      raise EncodeError(item_id, field, reason)
    fallbacks.append({"item_id": item_id, "field": field, "reason": reason})

  def _load(self, m, item: ItemContent):
    """Raw input of modality ``m`` for one item, or None when the item has none. May raise EncodeError."""
    from semrec.encoders.media import read_image, read_wav
    if m == "text":
      if not item.text or not item.text.strip():
        raise EncodeError(item.item_id, "text", "empty text")
      return item.text
    if m == "image":
      return read_image(item.image_path, item.item_id, self.config.max_video_frames) if item.image_path else None
    if not item.audio_path:
      return None
    from semrec.encoders.audio import prepare_waveform
    samples, rate = read_wav(item.audio_path, item.item_id)
    clip = prepare_waveform(samples, rate, item.item_id)
    if not np.any(clip):
      raise EncodeError(item.item_id, "audio_path", f"silent audio (all samples zero) in {item.audio_path!r}")
    return clip

  def encode(self, items: Sequence[ItemContent], on_bad_input: Optional[str] = None) -> EncodedBatch:
    """N items -> ``EncodedBatch`` (embeddings [N, D] float32, mask [N, M] float32, fallbacks).

    ``on_bad_input`` overrides ``config.on_bad_input`` for this call (``"mask"`` or ``"raise"``).
    """
    policy = on_bad_input or self.config.on_bad_input
    if policy not in ("mask", "raise"):
      raise ValueError(f"on_bad_input must be 'mask' or 'raise', got {policy!r}")
    items = list(items)
    n = len(items)
    ids = np.array([it.item_id for it in items], dtype=object)
    out = np.zeros([n, self.dim], np.float32)
    mask = np.zeros([n, len(self.modalities)], np.float32)
    fallbacks: List[dict] = []
    for j, m in enumerate(self.modalities):
      rows, inputs = [], []
      for r, item in enumerate(items):
        try:
          x = self._load(m, item)
        except EncodeError as e:
          self._bad(policy, fallbacks, e.item_id, e.field, e.reason)
          continue
        if x is not None:
          rows.append(r)
          inputs.append(x)
      if not rows:
        continue
      enc = self.encoders[m]
      row_ids = [items[r].item_id for r in rows]
      if m == "audio":
        emb = enc.encode(inputs, 16000, item_ids=row_ids)
      else:
        emb = enc.encode(inputs, item_ids=row_ids)
      finite = np.isfinite(emb).all(axis=1)
      for r, ok in zip(rows, finite):
        if not ok:
          self._bad(policy, fallbacks, items[r].item_id, _FIELDS[m], f"{m} encoder output has NaN/inf values")
      keep = np.flatnonzero(finite)
      emb = l2_normalize(emb[keep])
      if m in self.projections:
        emb = self.projections[m](emb).numpy()
      lo, hi = self.offsets[m]
      sel = np.asarray(rows)[keep]
      out[sel, lo:hi] = emb
      mask[sel, j] = 1.0
    # Keep the order of fallbacks independent of modality loop order: by item position, then field.
    pos = {i: k for k, i in enumerate(ids)}
    fallbacks.sort(key=lambda f: (pos.get(f["item_id"], -1), MODALITY_ORDER.index(
        next(k for k, v in _FIELDS.items() if v == f["field"]))))
    return EncodedBatch(ids, out, mask, fallbacks)

  def encode_dataset(self, dataset) -> EncodedBatch:
    """Encodes every item of a ``RecDataset`` in memory (use ``encode_corpus`` for a resumable store)."""
    return self.encode(item_contents(dataset))


def build_encoder(config: Optional[EncoderConfig] = None) -> MultimodalEncoder:
  """Builds the ``MultimodalEncoder`` for ``config`` (default: MovieLens text-only MiniLM)."""
  return MultimodalEncoder(config or EncoderConfig())
