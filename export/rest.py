"""TF Serving REST ``:predict`` JSON <-> signature call, for tests, tooling and thin HTTP front-ends.

TF Serving's REST API (``POST /v1/models/<name>[/versions/<v>]:predict``) accepts two request forms:

* row ("instances"): ``{"signature_name": ..., "instances": [{"user_id": "u1", "history": [...]}, ...]}``;
  with a single-input signature, ``"instances": [value, value, ...]``. The response is
  ``{"predictions": [...]}``: one value per instance for a single-output signature, else one dict per instance.
* columnar ("inputs"): ``{"inputs": {"user_id": ["u1", "u2"], "history": [[...], [...]]}}`` (or a bare
  value for a single input). The response is ``{"outputs": {...}}`` (a bare value for a single output).

Binary strings travel as ``{"b64": "<base64>"}``; string outputs are returned as UTF-8 text, or as
``{"b64": ...}`` when their name ends in ``_bytes`` or they are not valid UTF-8 (TF Serving's rule).
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import tensorflow as tf

from semrec.export.serving_layout import SIGNATURE_NAME


class PredictRequestError(ValueError):
  """A malformed ``:predict`` request; the message names the instance and/or input at fault."""


@dataclasses.dataclass
class ParsedPredictRequest:
  """A ``:predict`` request converted to signature inputs.

  Attributes:
    inputs: ``{input_name: np.ndarray [B, ...]}`` in the signature's dtypes (strings as bytes objects).
    form: "row" (``instances``) or "columnar" (``inputs``); the response uses the matching form.
    signature_name: the requested signature (default "serving_default").
  """
  inputs: dict
  form: str
  signature_name: str = SIGNATURE_NAME


def _decode_value(v: Any, where: str) -> Any:
  """Replaces ``{"b64": ...}`` objects by bytes, recursively."""
  if isinstance(v, dict):
    if set(v) == {"b64"}:
      try:
        return base64.b64decode(v["b64"], validate=True)
      except (ValueError, TypeError) as e:
        raise PredictRequestError(f"{where}: invalid base64 value ({e})") from e
    raise PredictRequestError(f"{where}: unexpected object {sorted(v)} (only {{\"b64\": ...}} is allowed here)")
  if isinstance(v, list):
    return [_decode_value(x, where) for x in v]
  return v


def _to_array(value: Any, spec: Optional[tf.TensorSpec], where: str) -> np.ndarray:
  if spec is not None and spec.dtype == tf.string:
    arr = np.array(value, dtype=object)
    if arr.dtype == object and arr.size and any(isinstance(x, list) for x in arr.ravel()):
      raise PredictRequestError(f"{where}: ragged nested lists (all rows must have the same length)")
    flat = []
    for x in arr.ravel():
      if isinstance(x, str):
        flat.append(x.encode("utf-8"))
      elif isinstance(x, bytes):
        flat.append(x)
      else:
        raise PredictRequestError(f"{where}: expected strings, got {type(x).__name__} {x!r}")
    return np.array(flat, dtype=object).reshape(arr.shape)
  try:
    dtype = spec.dtype.as_numpy_dtype if spec is not None else None
    arr = np.array(value, dtype=dtype)
  except (TypeError, ValueError) as e:
    expected = spec.dtype.name if spec is not None else "a number"
    raise PredictRequestError(f"{where}: cannot convert to {expected} ({e}); rows of nested lists must all "
                              "have the same length") from e
  if arr.dtype == object:
    raise PredictRequestError(f"{where}: ragged nested lists (all rows must have the same length)")
  return arr


def _check_shape(arr: np.ndarray, spec: Optional[tf.TensorSpec], where: str) -> None:
  if spec is not None and not spec.shape.is_compatible_with(arr.shape):
    raise PredictRequestError(f"{where}: shape {list(arr.shape)} does not match the signature's "
                              f"{spec.shape.as_list()} (None = any)")


def predict_request_to_inputs(request: Union[str, bytes, Mapping[str, Any]],
                              input_specs: Optional[Mapping[str, tf.TensorSpec]] = None) -> ParsedPredictRequest:
  """Converts a TF Serving REST ``:predict`` body (row or columnar form) to signature inputs.

  Args:
    request: the JSON body (text or already-parsed dict).
    input_specs: the signature's ``{name: TensorSpec}`` (see `signature_input_specs`); used for dtypes,
      shape checks and single-input requests. Without it dtypes are inferred by numpy.

  Raises:
    PredictRequestError naming the instance / input for malformed bodies, unknown or missing inputs,
    ragged lists and inconsistent batch sizes.
  """
  if isinstance(request, (str, bytes)):
    try:
      request = json.loads(request)
    except ValueError as e:
      raise PredictRequestError(f"request body is not valid JSON ({e})") from e
  if not isinstance(request, Mapping):
    raise PredictRequestError(f"request body must be a JSON object, got {type(request).__name__}")
  has_rows, has_cols = "instances" in request, "inputs" in request
  if has_rows == has_cols:
    raise PredictRequestError("request must contain exactly one of 'instances' (row form) or 'inputs' "
                              f"(columnar form); got keys {sorted(request)}")
  signature_name = request.get("signature_name") or SIGNATURE_NAME
  specs = dict(input_specs) if input_specs is not None else None
  if has_rows:
    inputs = _rows_to_inputs(request["instances"], specs)
    form = "row"
  else:
    inputs = _columns_to_inputs(request["inputs"], specs)
    form = "columnar"
  if specs is not None:
    missing = sorted(set(specs) - set(inputs))
    unknown = sorted(set(inputs) - set(specs))
    if missing or unknown:
      raise PredictRequestError(f"inputs {sorted(inputs)} do not match the signature inputs {sorted(specs)} "
                                f"(missing {missing}, unknown {unknown})")
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in inputs.items()}
  if len(set(sizes.values())) > 1:
    raise PredictRequestError(f"inputs have different batch sizes: {sizes}")
  return ParsedPredictRequest(inputs=inputs, form=form, signature_name=signature_name)


def _single_input_name(specs: Optional[Mapping[str, tf.TensorSpec]], form: str) -> str:
  if specs is None or len(specs) != 1:
    n = "unknown" if specs is None else len(specs)
    raise PredictRequestError(f"{form} form without input names needs a single-input signature "
                              f"(this one has {n} inputs: use named inputs)")
  return next(iter(specs))


def _rows_to_inputs(instances: Any, specs) -> dict[str, np.ndarray]:
  if not isinstance(instances, list) or not instances:
    raise PredictRequestError("'instances' must be a non-empty list")
  named = isinstance(instances[0], dict) and not (set(instances[0]) == {"b64"})
  if named:
    keys = list(instances[0])
    columns: dict[str, list] = {k: [] for k in keys}
    for i, inst in enumerate(instances):
      if not isinstance(inst, dict) or set(inst) == {"b64"}:
        raise PredictRequestError(f"instance {i}: expected an object of named inputs like instance 0")
      if set(inst) != set(keys):
        raise PredictRequestError(f"instance {i}: inputs {sorted(inst)} differ from instance 0's {sorted(keys)}")
      for k in keys:
        columns[k].append(_decode_value(inst[k], f"instance {i}, input {k!r}"))
  else:
    name = _single_input_name(specs, "row")
    columns = {name: [_decode_value(v, f"instance {i}") for i, v in enumerate(instances)]}
  out = {}
  for k, vals in columns.items():
    spec = (specs or {}).get(k)
    if specs is not None and spec is None:
      raise PredictRequestError(f"input {k!r} is not in the signature (inputs: {sorted(specs)})")
    if spec is not None and spec.shape.rank is not None:
      inner = spec.shape[1:]
      for i, v in enumerate(vals):
        shape = np.shape(v) if not isinstance(v, (str, bytes)) else ()
        if not inner.is_compatible_with(shape):
          raise PredictRequestError(f"instance {i}, input {k!r}: shape {list(shape)} does not match the "
                                    f"signature's per-instance shape {inner.as_list()} (None = any)")
    arr = _to_array(vals, spec, f"input {k!r}")
    _check_shape(arr, spec, f"input {k!r}")
    out[k] = arr
  return out


def _columns_to_inputs(inputs: Any, specs) -> dict[str, np.ndarray]:
  if not isinstance(inputs, dict) or set(inputs) == {"b64"}:
    name = _single_input_name(specs, "columnar")
    inputs = {name: inputs}
  out = {}
  for k, v in inputs.items():
    spec = (specs or {}).get(k)
    if specs is not None and spec is None:
      raise PredictRequestError(f"input {k!r} is not in the signature (inputs: {sorted(specs)})")
    arr = _to_array(_decode_value(v, f"input {k!r}"), spec, f"input {k!r}")
    _check_shape(arr, spec, f"input {k!r}")
    out[k] = arr
  return out


def _jsonable(name: str, arr: np.ndarray) -> Any:
  arr = np.asarray(arr)
  if arr.dtype.kind in ("O", "S"):
    def enc(b):
      b = b if isinstance(b, bytes) else str(b).encode("utf-8")
      if name.endswith("_bytes"):
        return {"b64": base64.b64encode(b).decode("ascii")}
      try:
        return b.decode("utf-8")
      except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode("ascii")}
    if arr.ndim == 0:
      return enc(arr.item())
    return np.vectorize(enc, otypes=[object])(arr).tolist()
  if arr.dtype.kind == "f":
    if not np.all(np.isfinite(arr)):
      # JSON has no NaN/Infinity; TF Serving emits them as NaN/Infinity literals, which strict parsers reject.
      return np.where(np.isfinite(arr), arr, None).tolist() if arr.ndim else None
  return arr.tolist()


def outputs_to_predict_response(outputs: Mapping[str, Any], form: str) -> dict[str, Any]:
  """Signature outputs ``{name: array [B, ...]}`` -> ``{"predictions": ...}`` (row) or ``{"outputs": ...}``.

  Row form needs every output to have the same batch size (as in TF Serving). Non-finite floats become null.
  """
  arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in outputs.items()}
  if form == "columnar":
    if len(arrays) == 1:
      (k, v), = arrays.items()
      return {"outputs": _jsonable(k, v)}
    return {"outputs": {k: _jsonable(k, v) for k, v in arrays.items()}}
  if form != "row":
    raise ValueError(f"form must be 'row' or 'columnar', got {form!r}")
  sizes = {k: (v.shape[0] if v.ndim else None) for k, v in arrays.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise PredictRequestError(f"row-form responses need outputs with one common batch size, got {sizes}")
  cols = {k: _jsonable(k, v) for k, v in arrays.items()}
  n = next(iter(sizes.values()))
  if len(cols) == 1:
    return {"predictions": next(iter(cols.values()))}
  return {"predictions": [{k: cols[k][i] for k in cols} for i in range(n)]}


def signature_input_specs(fn: Any) -> dict[str, tf.TensorSpec]:
  """``{name: TensorSpec}`` of a loaded signature (ConcreteFunction) or of a serving module's ``serve``."""
  if hasattr(fn, "serve"):
    fn = fn.serve
  sig = getattr(fn, "input_signature", None)
  if sig and len(sig) == 1 and isinstance(sig[0], Mapping):
    return dict(sig[0])
  structured = getattr(fn, "structured_input_signature", None)
  if structured is not None:
    args, kwargs = structured
    if kwargs:
      return dict(kwargs)
    if len(args) == 1 and isinstance(args[0], Mapping):
      return dict(args[0])
  raise TypeError(f"cannot read named input specs from {type(fn).__name__}")


def rest_predict(model: Any, request: Union[str, bytes, Mapping[str, Any]]) -> dict[str, Any]:
  """Answers a ``:predict`` body with a loaded SavedModel or a serving module, as TF Serving would.

  Args:
    model: a ``tf.saved_model.load`` result (its ``signatures`` are used), a signature ConcreteFunction,
      or a tf.Module with a ``serve`` tf.function over a dict of named inputs.
    request: the JSON body.

  Returns:
    The JSON response dict, ``{"predictions": ...}`` or ``{"outputs": ...}`` matching the request form.
  """
  body = json.loads(request) if isinstance(request, (str, bytes)) else request
  signatures = getattr(model, "signatures", None)
  if signatures is not None and len(signatures):
    name = (body.get("signature_name") if isinstance(body, Mapping) else None) or SIGNATURE_NAME
    if name not in signatures:
      raise PredictRequestError(f"signature {name!r} not found (available: {sorted(signatures)})")
    fn: Callable = signatures[name]
    parsed = predict_request_to_inputs(body, signature_input_specs(fn))
    specs = signature_input_specs(fn)
    outputs = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in parsed.inputs.items()})
  elif hasattr(model, "serve"):
    specs = signature_input_specs(model)
    parsed = predict_request_to_inputs(body, specs)
    outputs = model.serve({k: tf.constant(v, dtype=specs[k].dtype) for k, v in parsed.inputs.items()})
  else:
    specs = signature_input_specs(model)
    parsed = predict_request_to_inputs(body, specs)
    outputs = model(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in parsed.inputs.items()})
  return outputs_to_predict_response(outputs, parsed.form)
