"""Reading item media files: images (PIL; multi-frame files and frame directories are videos) and WAV audio."""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from semrec.encoders.common import EncodeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _sample_indices(n: int, k: int) -> np.ndarray:
  """k evenly spaced indices in [0, n) (all of them if n <= k)."""
  if n <= k:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def read_image(path: str, item_id: str = "", max_frames: int = 16) -> np.ndarray:
  """An image or a video -> [F, H, W, 3] uint8 RGB frames (F = 1 for a still image).

  A video is either a multi-frame image file (animated GIF/WebP, multi-page TIFF) or a directory of
  frame images (sorted by name). At most ``max_frames`` evenly spaced frames are kept.

  Raises:
    EncodeError: missing, unreadable or empty file/directory (naming the item and ``image_path``).
  """
  from PIL import Image, ImageSequence

  field = "image_path"
  if os.path.isdir(path):
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise EncodeError(item_id, field, f"frame directory {path!r} holds no images")
    frames = [read_image(os.path.join(path, names[i]), item_id, 1)[0]
              for i in _sample_indices(len(names), max_frames)]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
      raise EncodeError(item_id, field, f"frames in {path!r} differ in size: {sorted(shapes)}")
    return np.stack(frames)
  if not os.path.isfile(path):
    raise EncodeError(item_id, field, f"image file not found: {path!r}")
  try:
    with Image.open(path) as img:
      n = getattr(img, "n_frames", 1)
      keep = set(_sample_indices(n, max_frames).tolist())
      frames = [np.asarray(f.convert("RGB"), dtype=np.uint8)
                for i, f in enumerate(ImageSequence.Iterator(img)) if i in keep]
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... on bad files
    raise EncodeError(item_id, field, f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
  if not frames or frames[0].size == 0:
    raise EncodeError(item_id, field, f"image {path!r} has no pixels")
  return np.stack(frames)


def read_wav(path: str, item_id: str = "") -> Tuple[np.ndarray, int]:
  """A WAV file -> (samples [S] or [S, channels] as stored (int PCM or float), sample_rate).

  Raises:
    EncodeError: missing or unreadable file (naming the item and ``audio_path``).
  """
  from scipy.io import wavfile

  field = "audio_path"
  if not os.path.isfile(path):
    raise EncodeError(item_id, field, f"audio file not found: {path!r}")
  try:
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # scipy warns on unknown chunks; the data is still read
      rate, data = wavfile.read(path)
  except Exception as e:
    raise EncodeError(item_id, field, f"cannot read WAV {path!r}: {type(e).__name__}: {e}") from e
  return np.asarray(data), int(rate)
