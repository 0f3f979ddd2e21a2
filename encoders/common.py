"""Helpers shared by the modality encoders: errors, weight sources, seeded random init.

Shape letters: N items, F frames, P audio patches, D embedding width.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Mapping, Optional

import numpy as np

RANDOM = "random"  # weights value: explicit seeded random initialisation
PRETRAINED = "pretrained"  # weights value: the weights shipped in a Python package


class EncodeError(ValueError):
  """An item could not be encoded. The message names the item id and the field.

  Attributes:
    item_id: Id of the offending item ("" when not known, e.g. a direct encoder call).
    field: Input field at fault: ``text``, ``image_path``, ``audio_path``, or an output name.
    reason: Short human-readable reason.
  """

  def __init__(self, item_id: str, field: str, reason: str):
    self.item_id = str(item_id)
    self.field = field
    self.reason = reason
    super().__init__(f"item {self.item_id!r}, field {field!r}: {reason}")


class WeightsHashError(ValueError):
  """A weights or tokenizer file does not have its pinned SHA-256 (a different or corrupted copy).

  Attributes:
    path: The file checked.
    expected: Pinned SHA-256 (hex).
    actual: SHA-256 of the file on disk (hex).
  """

  def __init__(self, path: str, expected: str, actual: str):
    self.path, self.expected, self.actual = path, expected, actual
    super().__init__(f"{path}: SHA-256 mismatch, expected {expected}, got {actual}. The file is corrupted or "
                     "is not the pinned release: reinstall the package that ships it, or pass a local model "
                     "directory explicitly")


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
  """Hex SHA-256 of a file, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_bytes), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_sha256(directory: str, expected: Mapping[str, str]):
  """Checks ``{relative file name: hex SHA-256}`` under ``directory``.

  Raises:
    FileNotFoundError: a listed file is missing (naming it).
    WeightsHashError: a file's hash differs (naming the file, the expected and the actual hash).
  """
  for name, want in expected.items():
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: missing (expected SHA-256 {want})")
    got = file_sha256(path)
    if got != want.lower():
      raise WeightsHashError(path, want.lower(), got)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """Row-wise L2 normalisation of a [N, D] array; all-zero rows stay zero."""
  x = np.asarray(x, dtype=np.float32)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return (x / np.maximum(norm, eps)).astype(np.float32)


def is_hub_handle(weights: str) -> bool:
  """True for a TF Hub URL/handle or a local Hub directory (TF2 SavedModel or TF1 Hub module)."""
  if weights.startswith(("http://", "https://", "gs://", "hub://")):
    return True
  return os.path.isdir(weights) and any(os.path.exists(os.path.join(weights, f))
                                        for f in ("saved_model.pb", "tfhub_module.pb"))


def load_hub_model(handle: str):
  """A TF Hub handle or local Hub directory -> a callable, loaded with ``tensorflow_hub.load``.

  ``tensorflow_hub`` resolves remote handles (download + cache under ``TFHUB_CACHE_DIR``) and loads
  local directories as they are. Objects without ``__call__`` are called through their
  ``serving_default`` signature (first output). Outputs are returned as the model gives them (a
  tensor, a tuple such as YAMNet's ``(scores, embeddings, log_mel)``, or a dict).

  Raises:
    ImportError: ``tensorflow_hub`` does not import (0.16 needs ``setuptools<82`` for pkg_resources).
    ValueError: the handle cannot be loaded or is not callable (naming it).
  """
  try:
    with warnings.catch_warnings():  # tensorflow_hub 0.16's own "pkg_resources is deprecated" notice
      warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
      import tensorflow_hub as hub
  except Exception as e:
    raise ImportError(f"loading TF Hub model {handle!r} needs tensorflow_hub, which failed to import ({e}); "
                      "tensorflow-hub 0.16 needs setuptools<82: pip install 'setuptools<82'") from e
  try:
    obj = hub.load(handle)
  except Exception as e:
    raise ValueError(f"cannot load TF Hub model {handle!r}: {type(e).__name__}: {e}") from e
  if callable(obj):
    return obj
  if "serving_default" in getattr(obj, "signatures", {}):
    sig = obj.signatures["serving_default"]
    return lambda x: next(iter(sig(x).values()))
  raise ValueError(f"TF Hub model {handle!r} is neither callable nor has a serving_default signature")


def keras_cache_file(filename: str) -> Optional[str]:
  """Path of ``filename`` in the Keras model cache (``$KERAS_HOME/models`` or ``~/.keras/models``,
  and the ``/tmp/.keras`` fallback Keras uses when home is read-only), or None if not cached."""
  roots = []
  if os.environ.get("KERAS_HOME"):
    roots.append(os.environ["KERAS_HOME"])
  roots += [os.path.join(os.path.expanduser("~"), ".keras"), os.path.join("/tmp", ".keras")]
  for root in roots:
    path = os.path.join(root, "models", filename)
    if os.path.isfile(path):
      return path
  return None


def seeded_reinit(model, seed: int):
  """Re-initialises every weight of a Keras model from a NumPy generator seeded with ``seed``.

  Keras initialisers draw from the global TF seed, so two processes building the same random model
  would disagree; this makes random-init encoders a pure function of ``seed`` (needed for resumable
  encoding, where a resumed process must reproduce the shards it did not finish). Kernels get He-normal
  values (std sqrt(2 / fan_in), suited to the ReLU stacks of ResNet and VGGish); batch-norm gammas and
  moving variances get 1; everything else (biases, betas, moving means) 0.
  """
  rng = np.random.default_rng(seed)
  for w in model.weights:
    name = w.name.split("/")[-1]
    shape = tuple(w.shape)
    if "kernel" in name and len(shape) >= 2:
      fan_in = int(np.prod(shape[:-1]))
      value = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
    elif name.startswith(("gamma", "moving_variance")):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    w.assign(value.astype(w.dtype.as_numpy_dtype))
