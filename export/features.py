"""Serving signatures over raw features: input specs from examples, nested <-> flat feature dicts, casting.

A Keras tower may be called on a nested dict (the query tower's ``{"user_id", "history": {"item_id", "sid"}}``);
a TF Serving signature takes flat named tensors. ``flatten_features`` names them ``history_item_id``,
``history_sid``, ...; ``unflatten_features`` rebuilds the nested dict inside the serving function.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from semrec.export import serving_layout as sl

Features = Mapping[str, Any]
ExampleInputs = Union[Features, Sequence[Features]]


def _tf_dtype_for(arr: np.ndarray) -> tf.DType:
  kind = arr.dtype.kind
  if kind in ("U", "S", "O"):
    return tf.string
  if kind == "f":
    return tf.float32 if arr.dtype != np.float16 else tf.float16
  if kind == "b":
    return tf.bool
  if kind in ("i", "u"):
    return tf.as_dtype(arr.dtype)
  raise sl.ExportError(f"unsupported input dtype {arr.dtype}")


def input_specs_from_examples(example: Features, dtypes: Optional[Mapping[str, tf.DType]] = None,
                              dynamic_axes: Optional[Mapping[str, Sequence[int]]] = None) -> dict[str, tf.TensorSpec]:
  """Serving input specs ``{name: TensorSpec([None, ...], dtype, name)}`` from one example batch.

  The batch dimension becomes ``None``; inner dimensions stay fixed (so a server rejects, e.g., a
  content embedding of the wrong width). str/bytes/object arrays become ``tf.string``, float64 becomes
  float32 (Keras' default); ``dtypes`` overrides per input; ``dynamic_axes`` ``{name: [axis, ...]}`` leaves
  more axes free (e.g. a history length H that may vary per request).
  """
  if not example:
    raise sl.ExportError("example inputs are empty: need at least one named input")
  specs = {}
  for key, value in example.items():
    arr = np.asarray(value)
    if arr.ndim == 0:
      raise sl.ExportError(f"example input {key!r} is a scalar: every input needs a leading batch dimension")
    dtype = (dtypes or {}).get(key) or _tf_dtype_for(arr)
    shape = [None] + list(arr.shape[1:])
    for axis in (dynamic_axes or {}).get(key, ()):
      if not 0 < axis < len(shape):
        raise sl.ExportError(f"dynamic axis {axis} of input {key!r} is out of range for shape {list(arr.shape)}")
      shape[axis] = None
    specs[key] = tf.TensorSpec(shape, tf.as_dtype(dtype), name=key)
  return specs


def spec_to_json(spec: tf.TensorSpec) -> dict[str, Any]:
  shape = None if spec.shape.rank is None else [d for d in spec.shape.as_list()]
  return {"dtype": spec.dtype.name, "shape": shape}


def flatten_features(features: Features, sep: str = "_") -> tuple[dict[str, Any], dict[str, tuple[str, ...]]]:
  """Flattens nested feature dicts for a serving signature, whose inputs must be flat named tensors.

  ``{"user_id": u, "history": {"item_id": h, "sid": s}}`` -> ``{"user_id": u, "history_item_id": h,
  "history_sid": s}`` plus the paths ``{"history_item_id": ("history", "item_id"), ...}`` that
  `unflatten_features` uses to rebuild the nesting inside the graph (names are never split on ``sep``).
  """
  flat: dict[str, Any] = {}
  paths: dict[str, tuple[str, ...]] = {}

  def visit(prefix: tuple[str, ...], value):
    if isinstance(value, Mapping):
      for k, v in value.items():
        visit(prefix + (str(k),), v)
      return
    key = sep.join(prefix)
    if key in flat:
      raise sl.ExportError(f"flattened feature name {key!r} is produced by both {paths[key]} and {prefix}; "
                           "rename one of the features")
    flat[key] = value
    paths[key] = prefix

  visit((), features)
  return flat, paths


def unflatten_features(flat: Mapping[str, Any], paths: Mapping[str, Sequence[str]]) -> dict[str, Any]:
  """Inverse of `flatten_features` given its ``paths``."""
  out: dict[str, Any] = {}
  for key, value in flat.items():
    path = tuple(paths.get(key, (key,)))
    node = out
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return out


def is_nested(features: Features) -> bool:
  return any(isinstance(v, Mapping) for v in features.values())


def cast_features(features: Features, specs: Mapping[str, tf.TensorSpec], where: str = "input") -> dict[str, np.ndarray]:
  """Checks ``features`` against ``specs`` and returns numpy arrays of the spec dtypes.

  Raises ExportError naming the feature for a missing/unexpected key, a wrong rank or inner dimension,
  or values that cannot be converted.
  """
  missing = sorted(set(specs) - set(features))
  extra = sorted(set(features) - set(specs))
  if missing or extra:
    raise sl.ExportError(f"{where}: features {sorted(features)} do not match the signature inputs "
                         f"{sorted(specs)} (missing {missing}, unexpected {extra})")
  out = {}
  for key, spec in specs.items():
    value = features[key]
    try:
      if spec.dtype == tf.string:
        arr = np.asarray(value, dtype=object)
        arr = np.vectorize(lambda v: v.encode("utf-8") if isinstance(v, str) else bytes(v), otypes=[object])(arr) \
            if arr.size else arr
      else:
        arr = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError) as e:
      raise sl.ExportError(f"{where}: feature {key!r} cannot be converted to {spec.dtype.name} ({e})") from e
    if not spec.shape.is_compatible_with(arr.shape):
      raise sl.ExportError(f"{where}: feature {key!r} has shape {list(arr.shape)}, the signature expects "
                           f"{spec.shape.as_list()} (None = any)")
    out[key] = arr
  return out


def flat_requests(example_inputs: ExampleInputs, name: str) -> tuple[list[dict], Optional[dict]]:
  """Example inputs (one dict or a list of dicts, maybe nested) -> (flat request dicts, feature paths).

  ``paths`` is ``{flat name: (key, sub_key, ...)}`` for nested inputs (see `flatten_features`), else None.
  """
  requests = [example_inputs] if isinstance(example_inputs, Mapping) else list(example_inputs)
  if not requests:
    raise sl.ExportError(f"model {name!r}: no example inputs given")
  if not is_nested(requests[0]):
    return requests, None
  flat = [flatten_features(r) for r in requests]
  return [f for f, _ in flat], flat[0][1]
