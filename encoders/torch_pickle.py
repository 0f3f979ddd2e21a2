"""Reads a PyTorch state dict saved in torch's legacy (pre-1.6, non-zip) format with pickle + NumPy, no torch.

The legacy file is a sequence of pickles followed by raw storage bytes:
  1. magic number (int), 2. protocol version (int), 3. system info (dict: little_endian, type_sizes),
  4. the object (here an ``OrderedDict`` name -> tensor). Each tensor is pickled as a call
     ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks)``;
     ``storage`` is a persistent id ``("storage", torch.FloatStorage, key, location, numel, view)``,
  5. the list of storage keys in the order their data follows,
  6. per key: an int64 element count, then ``count * element_size`` raw little-endian bytes.
Only the handful of globals a state dict needs are resolved; any other global is refused, so a crafted
file cannot run code through this reader (unlike a plain ``pickle.load``).
"""
from __future__ import annotations

import collections
import pickle
import struct
from typing import BinaryIO, Dict

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

# torch storage class name -> NumPy dtype (little-endian).
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class _StorageType:
  """Stands for ``torch.<X>Storage`` in the pickle: only its dtype matters."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage named by its key; its data is filled in after the object pickle."""

  def __init__(self, key: str, storage_type: _StorageType, numel: int):
    self.key, self.dtype, self.numel, self.data = key, storage_type.dtype, int(numel), None


class _TensorRef:
  """A tensor view (storage, offset, size, stride) to materialise once the storages are read."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

  def to_numpy(self) -> np.ndarray:
    data = self.storage.data
    n_needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1 if self.size else 1
    if 0 not in self.size and n_needed > data.size:
      raise ValueError(f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) runs past "
                       f"storage {self.storage.key} of {data.size} elements")
    item = data.itemsize
    view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                           strides=[s * item for s in self.stride])
    return np.array(view, order="C")  # a C-contiguous copy that owns its data


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *args):
  return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Resolves torch's storage classes and tensor rebuild function; refuses every other global."""

  def __init__(self, f, storages: Dict[str, _Storage]):
    super().__init__(f)
    self.storages = storages

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise pickle.UnpicklingError(f"refusing global {module}.{name} (only a tensor state dict can be read)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel, view_metadata = pid
    if view_metadata is not None:
      raise pickle.UnpicklingError(f"storage views are not supported (storage {key})")
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type, numel)
    return self.storages[key]


def _read_storage(f: BinaryIO, storage: _Storage):
  header = f.read(8)
  if len(header) != 8:
    raise ValueError(f"file ends before storage {storage.key}")
  (count,) = struct.unpack("<q", header)
  if count != storage.numel:
    raise ValueError(f"storage {storage.key}: {count} elements on disk, {storage.numel} in its pickle")
  nbytes = count * storage.dtype.itemsize
  raw = f.read(nbytes)
  if len(raw) != nbytes:
    raise ValueError(f"file ends inside storage {storage.key} ({len(raw)} of {nbytes} bytes)")
  storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
  """A legacy-format ``.pth`` state dict -> ``OrderedDict`` name -> NumPy array (dtype of its storage).

  Raises:
    ValueError: not a legacy torch file (e.g. the zip format of torch >= 1.6), a big-endian file, or
      truncated / inconsistent storage data.
  """
  with open(path, "rb") as f:
    if f.read(2) == b"PK":
      raise ValueError(f"{path}: a zip-format torch file; only the legacy (pre-1.6) format is supported")
    f.seek(0)
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
      raise ValueError(f"{path}: not a legacy torch file (magic number {magic!r})")
    pickle.load(f)  # protocol version
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", False):
      raise ValueError(f"{path}: saved on a big-endian machine, not supported")
    storages: Dict[str, _Storage] = {}
    obj = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
      _read_storage(f, storages[key])
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  return collections.OrderedDict((k, v.to_numpy() if isinstance(v, _TensorRef) else v) for k, v in obj.items())
