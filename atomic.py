"""Atomic artefact writes: a reader sees the old artefact or the new one, never a half-written one.

The one place semrec writes files that must be atomic. Files are written to a temporary name in the same
folder (``<path>.tmp<pid>-<hex>[suffix]``) and ``os.replace``d; directories are built in a temporary sibling
and swapped into place (the previous version is removed only after the swap).

- :func:`atomic_path`: a temporary path for writers that take a file name (``np.savez``, ``DataFrame.to_csv``,
  ``tf.io.TFRecordWriter``, ``fig.savefig``); every helper below goes through it.
- :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`save_npz`, :func:`save_npy`,
  :func:`save_figure` (PNG), :func:`atomic_directory`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Optional


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside ``path``; when the body succeeds the file there replaces ``path``.

  Args:
    path: The final file path (its folder is created).
    suffix: Ending of the temporary name, for writers that pick or append a format by extension
      (``".npz"`` for ``np.savez``, ``".png"`` for ``savefig``).

  On an exception the temporary file is removed and ``path`` is left as it was.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes, fsync: bool = True):
  """Writes ``data`` to ``path`` atomically (flushed to disk first unless ``fsync=False``)."""
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)
      if fsync:
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str, text: str):
  """Writes ``text`` to ``path`` atomically (UTF-8)."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj, **kwargs):
  """Writes ``obj`` as indented JSON atomically (numpy scalars and arrays become numbers and lists).

  ``kwargs`` go to ``json.dumps`` (``indent`` defaults to 2; e.g. ``sort_keys=True``).
  """
  kwargs.setdefault("indent", 2)
  write_text(path, json.dumps(obj, default=_json_default, **kwargs) + "\n")


def _json_default(o):
  import numpy as np
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, bytes):
    return o.decode("utf-8", "replace")
  return str(o)


def save_npz(path: str, **arrays):
  """``np.savez(path, **arrays)`` atomically (uncompressed; ``path`` should end in ``.npz``)."""
  import numpy as np
  with atomic_path(path, suffix=".npz") as tmp:
    np.savez(tmp, **arrays)


def save_npy(path: str, array):
  """``np.save(path, array)`` atomically (``path`` should end in ``.npy``)."""
  import numpy as np
  with atomic_path(path, suffix=".npy") as tmp:
    np.save(tmp, array)


def save_figure(fig, path: str, dpi: int = 110):
  """Lays out a matplotlib figure, writes it as a PNG atomically and closes it; returns ``path``."""
  import matplotlib.pyplot as plt
  try:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
      fig.savefig(tmp, format="png", dpi=dpi)
  finally:
    plt.close(fig)
  return path


@contextlib.contextmanager
def atomic_directory(directory: str) -> Iterator[str]:
  """Yields an empty temporary directory beside ``directory``; on success it replaces ``directory``.

  On an exception the temporary directory is deleted and ``directory`` is left as it was.
  """
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(directory):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
    os.rmdir(old)
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, directory)


def read_manifest(directory: str, what: str, kind: Optional[str] = None) -> dict:
  """The ``manifest.json`` of an artefact directory written with :func:`atomic_directory`.

  Raises:
    FileNotFoundError: no manifest ("no <what> at <directory> (missing manifest.json)").
    ValueError: the manifest's ``kind`` is not ``kind``.
  """
  path = os.path.join(directory, "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {what} at {directory!r} (missing manifest.json)")
  with open(path) as f:
    manifest = json.load(f)
  if kind is not None and manifest.get("kind") != kind:
    raise ValueError(f"{path}: not a semrec {what} manifest (kind {manifest.get('kind')!r}, expected {kind!r})")
  return manifest
