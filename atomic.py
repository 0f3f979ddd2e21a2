"""Atomic artefact writes: a reader sees the old artefact or the new one, never a half-written one.

Files are written to a temporary name in the same folder and ``os.replace``d; directories are built in a
temporary sibling and swapped into place (the previous version is removed only after the swap).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Iterator, Optional


def write_text(path: str, text: str):
  """Writes ``text`` to ``path`` atomically (UTF-8)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj, **kwargs):
  """Writes ``obj`` as indented JSON atomically (numpy scalars and arrays become numbers and lists)."""
  kwargs.setdefault("indent", 2)
  write_text(path, json.dumps(obj, default=_json_default, **kwargs) + "\n")


def _json_default(o):
  import numpy as np
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


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
