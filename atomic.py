"""Atomic artefact writes: a reader sees the old artefact or the new one, never a half-written one.

The one place semrec writes files that must be atomic. Files are written to a temporary name in the same
folder (``<path>.tmp<pid>-<hex>[suffix]``) and ``os.replace``d; directories are built in a temporary sibling
and swapped into place (the previous version is removed only after the swap).

- :func:`atomic_path`: a temporary path for writers that take a file name (``np.savez``, ``DataFrame.to_csv``,
  ``tf.io.TFRecordWriter``, ``fig.savefig``); every helper below goes through it.
- :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`save_npz`, :func:`save_npy`,
  :func:`save_figure` (PNG), :func:`atomic_directory`.

Reads of artefacts (:func:`read_json`, :func:`read_npz`) turn a truncated or corrupt file (e.g. damaged
by a disk or a copy outside semrec) into a :class:`CorruptArtefactError` naming the file and what to do.
A write that fails for lack of space or on an I/O error (ENOSPC, EDQUOT, EFBIG, EIO, EROFS) is an
:class:`ArtefactWriteError` naming the file; the temporary file is removed and the previous artefact, if
any, is left as it was (nothing half-written).
JSON is written strictly (:func:`write_json`): NaN and infinities become ``null``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator, Optional


# Write failures of the disk rather than of the program: reported as one clear error naming the file.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


class ArtefactWriteError(OSError):
  """An artefact could not be written (disk full, quota, I/O error, read-only file system). The message names
  the file; nothing was half-written (the previous file, if any, is unchanged)."""


def _write_error(path: str, e: OSError) -> ArtefactWriteError:
  reason = e.strerror or os.strerror(e.errno)
  err = ArtefactWriteError(e.errno, f"{path}: cannot write ({errno.errorcode.get(e.errno, e.errno)}: {reason}); "
                                    "nothing was written (the previous version, if any, is unchanged): free disk "
                                    "space or fix the device, then rerun the command (finished steps resume)")
  err.filename = path
  return err


def _is_disk_error(e: BaseException) -> bool:
  return isinstance(e, OSError) and not isinstance(e, ArtefactWriteError) and e.errno in _DISK_ERRNOS


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside ``path``; when the body succeeds the file there replaces ``path``.

  Args:
    path: The final file path (its folder is created).
    suffix: Ending of the temporary name, for writers that pick or append a format by extension
      (``".npz"`` for ``np.savez``, ``".png"`` for ``savefig``).

  On an exception the temporary file is removed and ``path`` is left as it was; a disk error (no space, I/O
  error) becomes an :class:`ArtefactWriteError` naming ``path``.
  """
  directory = os.path.dirname(os.path.abspath(path))
  tmp = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
  try:
    os.makedirs(directory, exist_ok=True)
    yield tmp
    os.replace(tmp, path)
  except OSError as e:
    if _is_disk_error(e):
      raise _write_error(path, e) from e
    raise
  finally:
    with contextlib.suppress(OSError):
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


class CorruptArtefactError(ValueError):
  """An artefact file exists but cannot be read (truncated, corrupt). The message names it and the fix."""


def write_json(path: str, obj, **kwargs):
  """Writes ``obj`` as indented, strict JSON atomically.

  numpy scalars and arrays become numbers and lists; NaN and +-inf (undefined metrics) become ``null``,
  so every standard JSON parser reads the file. ``kwargs`` go to ``json.dumps`` (``indent`` defaults to
  2; e.g. ``sort_keys=True``).
  """
  kwargs.setdefault("indent", 2)
  write_text(path, json.dumps(json_safe(obj), allow_nan=False, **kwargs) + "\n")


def json_safe(obj):
  """``obj`` with numpy values converted and non-finite floats replaced by ``None`` (recursively)."""
  import math
  if isinstance(obj, dict):
    return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_safe(v) for v in obj]
  if isinstance(obj, (str, bool, int)) or obj is None:
    return obj
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  converted = _json_default(obj)
  return converted if isinstance(converted, str) else json_safe(converted)


def read_json(path: str, what: str, fix: str = "delete it and re-run the step that writes it"):
  """Loads a JSON artefact; a truncated or invalid file is a CorruptArtefactError naming it and ``fix``."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CorruptArtefactError(f"{path}: damaged {what} (not valid JSON: {e}); {fix}") from e


def read_npz(path: str, what: str, fix: str = "delete it and re-run the step that writes it") -> dict:
  """Every array of an ``.npz`` artefact, loaded eagerly; a damaged file is a CorruptArtefactError."""
  import zipfile
  import numpy as np
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
    raise CorruptArtefactError(f"{path}: damaged {what} ({type(e).__name__}: {e}); {fix}") from e


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

  On an exception the temporary directory is deleted and ``directory`` is left as it was; a disk error (no
  space, I/O error) becomes an :class:`ArtefactWriteError` naming ``directory``.
  """
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
  except OSError as e:
    if _is_disk_error(e):
      raise _write_error(directory, e) from e
    raise
  try:
    yield tmp
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if _is_disk_error(e):
      raise _write_error(directory, e) from e
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
  manifest = read_json(path, f"{what} manifest", f"re-create the {what}")
  if kind is not None and manifest.get("kind") != kind:
    raise ValueError(f"{path}: not a semrec {what} manifest (kind {manifest.get('kind')!r}, expected {kind!r})")
  return manifest
