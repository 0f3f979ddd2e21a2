"""Explicit serving modules and the generic SavedModel exporter.

Every artefact goes through one path (STYLE.md item 9, as in tensorflow/models ``official/core/export_base.py``):
a ``tf.Module`` whose ``serve`` is a ``tf.function`` with a fixed input signature over *raw* features
(a dict of named tensors, leading batch dimension B), saved with the named signature ``serving_default``
into the next integer version directory, together with warm-up requests, the outputs those requests
gave at export time, and a manifest.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from semrec.export import serving_layout as sl
from semrec.export.features import (ExampleInputs, Features, cast_features, flat_requests,  # noqa: F401
                                     flatten_features, input_specs_from_examples, is_nested, spec_to_json,
                                     unflatten_features)


@dataclasses.dataclass
class ExportResult:
  """What an exporter wrote.

  Attributes:
    name: TF Serving model name (``<base>/<name>/``).
    version: integer version written.
    path: the version directory.
    manifest: the manifest dict written to ``<path>/manifest.json``.
  """
  name: str
  version: int
  path: str
  manifest: dict

  @property
  def needs_scann_ops(self) -> bool:
    return bool(self.manifest.get("needs_scann_ops"))


def _name_outputs(result: Any, output_names: Optional[Sequence[str]]) -> dict[str, tf.Tensor]:
  if isinstance(result, Mapping):
    out = dict(result)
  elif isinstance(result, (tuple, list)):
    names = list(output_names) if output_names else [f"output_{i}" for i in range(len(result))]
    if len(names) != len(result):
      raise sl.ExportError(f"the model returns {len(result)} outputs but output_names has {len(names)}: {names}")
    out = dict(zip(names, result))
  else:
    names = list(output_names) if output_names else ["output_0"]
    if len(names) != 1:
      raise sl.ExportError(f"the model returns one tensor but output_names has {len(names)}: {names}")
    out = {names[0]: result}
  for key in out:
    if not isinstance(key, str) or not key:
      raise sl.ExportError(f"output names must be non-empty strings, got {key!r}")
  return out


# ---------------------------------------------------------------------------------------------------
# Serving modules.


class ServingModule(tf.Module):
  """A ``tf.Module`` with ``serve(features) -> {output_name: tensor}`` over a fixed input signature.

  Every request is checked in the graph before ``fn`` runs (a model server hands the graph whatever the client
  sent), each message naming the input: first the rank of every input; then (under the rank checks, so a short
  tensor never fails inside a check) every fixed dimension of its spec (e.g. the width D of ``content``), the
  batch dimension against the first input's, and each ``shared_axes`` group (e.g. the history length H of every
  ``history_*`` input); then (under the shape checks) that every float input is finite ("content: NaN/inf
  values"). This is the one implementation of the serving input checks: every exporter of this package goes
  through it.

  Args:
    fn: ``fn(features: dict[str, Tensor]) -> Tensor | tuple | dict``; outputs are named by ``output_names``
      (default ``output_0``, ``output_1``, ...) unless ``fn`` returns a dict.
    input_specs: ``{name: tf.TensorSpec}``; the leading dimension is the batch B.
    trackables: the Keras layers / tf.Modules / variables ``fn`` uses, ``{attribute_name: object}``; they are
      attached to the module so their variables and assets are saved with it.
    output_names: names for tensor / tuple outputs.
    shared_axes: ``{axis name: [(input name, axis), ...]}``: free (None) dimensions that must agree across
      inputs, e.g. ``{"H": [("history_item_id", 1), ("history_sid", 1)]}``.
  """

  def __init__(self, fn: Callable[[dict], Any], input_specs: Mapping[str, tf.TensorSpec],
               trackables: Optional[Mapping[str, Any]] = None, output_names: Optional[Sequence[str]] = None,
               name: Optional[str] = None, shared_axes: Optional[Mapping[str, Sequence[tuple]]] = None):
    super().__init__(name=name)
    self._fn = fn
    self._output_names = list(output_names) if output_names else None
    for attr, obj in (trackables or {}).items():
      setattr(self, attr, obj)
    self.input_specs = {k: tf.TensorSpec(s.shape, s.dtype, name=k) for k, s in input_specs.items()}
    self._shared_axes = _checked_shared_axes(shared_axes, self.input_specs)
    self.serve = tf.function(self._serve, input_signature=[dict(self.input_specs)])

  def _serve(self, features):
    features = check_serving_inputs(features, self.input_specs, self._shared_axes)
    return _name_outputs(self._fn(features), self._output_names)


def _checked_shared_axes(shared_axes, specs) -> dict:
  out = {}
  for axis_name, members in (shared_axes or {}).items():
    members = [(str(k), int(a)) for k, a in members]
    for k, a in members:
      if k not in specs:
        raise sl.ExportError(f"shared axis {axis_name!r}: no input {k!r} (inputs: {sorted(specs)})")
      rank = specs[k].shape.rank
      if rank is not None and not 0 < a < rank:
        raise sl.ExportError(f"shared axis {axis_name!r}: axis {a} of input {k!r} is out of range for shape "
                             f"{specs[k].shape.as_list()}")
    if len(members) > 1:
      out[str(axis_name)] = members
  return out


def check_serving_inputs(features: Mapping[str, tf.Tensor], specs: Mapping[str, tf.TensorSpec],
                         shared_axes: Optional[Mapping[str, Sequence[tuple]]] = None) -> dict:
  """``features`` passed through in-graph checks whose messages name the input (see `ServingModule`).

  Args:
    features: ``{name: Tensor}`` of one request.
    specs: ``{name: TensorSpec}``, the signature (leading dimension the batch B).
    shared_axes: ``{axis name: [(input name, axis), ...]}`` free dimensions that must agree.

  Returns:
    ``{name: Tensor}`` that depend on every check (use them instead of ``features``).
  """
  def gate(checks, tensors):
    if not checks:
      return dict(tensors)
    with tf.control_dependencies(checks):
      return {k: tf.identity(v) for k, v in tensors.items()}

  # A dimension check must never fail by itself on a tensor of the wrong rank (e.g. "slice index 1 of
  # dimension 0 out of bounds"): graph optimisations may run it before the rank check. So each reads the shape
  # padded with zeros and holds whenever the rank is wrong; the rank check then reports the problem.
  ranked = [k for k, s in specs.items() if s.shape.rank is not None]
  # tf.rank (and a Rank op, by grappler's constant folding) would be folded to the signature's static rank:
  # count the entries of the request's shape through a data-dependent op instead.
  rank_ok = {k: tf.equal(tf.shape(tf.where(tf.raw_ops.Shape(input=features[k]) >= 0), out_type=tf.int32)[0],
                         specs[k].shape.rank) for k in ranked}

  def dim(k, axis):
    return tf.concat([tf.raw_ops.Shape(input=features[k]), tf.zeros([axis + 1], tf.int32)], 0)[axis]

  def holds(keys, condition, message):
    return tf.debugging.Assert(tf.logical_or(tf.logical_not(tf.reduce_all([rank_ok[k] for k in keys])), condition),
                               [message])

  checks = [tf.debugging.Assert(rank_ok[k], [f"{k}: expected rank {specs[k].shape.rank} {specs[k].shape.as_list()} "
                                             "(None = any)"]) for k in ranked]
  for k in ranked:
    for axis, size in enumerate(specs[k].shape.as_list()):
      if size is not None:
        checks.append(holds([k], tf.equal(dim(k, axis), size),
                            f"{k}: dimension {axis} must be {size} (shape {specs[k].shape.as_list()})"))
  batched = [k for k in ranked if specs[k].shape.rank]
  for k in batched[1:]:
    checks.append(holds([k, batched[0]], tf.equal(dim(k, 0), dim(batched[0], 0)),
                        f"{k}: batch size (dimension 0) must equal that of {batched[0]}"))
  for axis_name, members in (shared_axes or {}).items():
    (first, a0), rest = members[0], members[1:]
    for k, a in rest:
      checks.append(holds([k, first], tf.equal(dim(k, a), dim(first, a0)),
                          f"{k}: dimension {a} ({axis_name}) must equal dimension {a0} of {first}"))
  features = gate(checks, features)
  # Values are checked once the shapes are known to be right (a shape error is reported as such).
  return gate([tf.debugging.assert_all_finite(features[k], message=f"{k}: NaN/inf values")
               for k, s in specs.items() if s.dtype.is_floating], features)


def refused_request_message(error: Exception) -> str:
  """The named message of a request the serving checks refused (e.g. "content: NaN/inf values"), taken from
  the ``tf.errors.InvalidArgumentError`` a signature call raised; its first line when no check message is in it."""
  import re
  text = str(getattr(error, "message", None) or error)
  found = (re.search(r"assertion failed: \[(.+?)\](?=\s*\[Condition|\s*$|\n)", text, re.M)
           or re.search(r"([\w.-]+: NaN/inf values)", text))
  if found:
    return found.group(1)
  return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(error).__name__)


class KerasServingModule(ServingModule):
  """Serves a Keras layer/model called on the dict of raw features (``model(features, training=False)``).

  Args:
    model: a Keras layer or model, or a bound method of one (e.g. ``retriever.query_embedding``), taking the
      feature dict; with ``unpack_single_input`` it is called on the single input tensor instead.
    input_specs: flat serving input specs, e.g. from `input_specs_from_examples`.
    output_names: names for a tensor / tuple output.
    feature_paths: ``{flat_name: path}`` from `flatten_features` when the model takes nested dicts.
    track: extra ``{name: layer/variable}`` to save with the module, for a plain-function ``model`` whose
      variables live in layers it closes over.
    shared_axes: free dimensions that must agree across inputs (see `ServingModule`).
  """

  def __init__(self, model, input_specs: Mapping[str, tf.TensorSpec], output_names: Optional[Sequence[str]] = None,
               unpack_single_input: bool = False, feature_paths: Optional[Mapping[str, Sequence[str]]] = None,
               track: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
               shared_axes: Optional[Mapping[str, Sequence[tuple]]] = None):
    if unpack_single_input and len(input_specs) != 1:
      raise sl.ExportError(f"unpack_single_input needs exactly one input, got {sorted(input_specs)}")
    self._unpack = unpack_single_input
    self._paths = {k: tuple(v) for k, v in (feature_paths or {}).items()}
    owner = getattr(model, "__self__", None)  # bound method: save the object that owns the variables.
    self._model_fn = model
    self._is_keras = isinstance(model, tf.keras.layers.Layer) or isinstance(owner, tf.keras.layers.Layer)
    trackables = {"model": owner if isinstance(owner, tf.Module) else model}
    if not isinstance(trackables["model"], (tf.Module, tf.Variable)):
      trackables = {}
    trackables.update({f"tracked_{k}": v for k, v in (track or {}).items()})
    super().__init__(self._call_model, input_specs, trackables=trackables, output_names=output_names, name=name,
                     shared_axes=shared_axes)

  def _call_model(self, features):
    if self._unpack:
      x = next(iter(features.values()))
    elif self._paths:
      x = unflatten_features(features, self._paths)
    else:
      x = features
    if self._is_keras:
      return self._model_fn(x, training=False)
    return self._model_fn(x)


# ---------------------------------------------------------------------------------------------------
# Export.


def _normalise_requests(example_inputs: ExampleInputs, specs: Mapping[str, tf.TensorSpec]) -> list[dict]:
  requests = [example_inputs] if isinstance(example_inputs, Mapping) else list(example_inputs)
  if not requests:
    raise sl.ExportError("no example inputs given: they become the warm-up requests and are required")
  return [cast_features(r, specs, where=f"example input {i}") for i, r in enumerate(requests)]


def saved_model_ops(export_dir: str) -> set[str]:
  """Op type names used by a SavedModel's graph and function library."""
  from tensorflow.core.protobuf import saved_model_pb2

  sm = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    sm.ParseFromString(f.read())
  ops = set()
  for mg in sm.meta_graphs:
    ops.update(n.op for n in mg.graph_def.node)
    for fn in mg.graph_def.library.function:
      ops.update(n.op for n in fn.node_def)
  return ops


def export_serving_module(module: tf.Module, base_dir: str, name: str, example_inputs: ExampleInputs, *,
                          artefact: str = "generic", signature_name: str = sl.SIGNATURE_NAME,
                          data_fingerprint: Optional[str] = None, metrics: Optional[Mapping[str, Any]] = None,
                          description: str = "", extra: Optional[Mapping[str, Any]] = None,
                          needs_scann_ops: Optional[bool] = None, rtol: float = 1e-4, atol: float = 1e-5,
                          serving_files: Optional[Mapping[str, str]] = None) -> ExportResult:
  """Saves ``module`` as ``<base_dir>/<name>/<next version>/`` with warm-up records and a manifest.

  Args:
    module: a tf.Module whose ``serve`` attribute is a ``tf.function`` with an ``input_signature`` of one
      dict of named TensorSpecs (a `ServingModule`, or e.g. the ranking package's serving module).
    base_dir: export base directory (TF Serving's ``--model_base_path`` parent).
    name: model name.
    example_inputs: one dict of arrays ``{input_name: [B, ...]}`` or a list of such dicts; each becomes a
      warm-up request, and its outputs are stored for `verify_export`.
    artefact: kind of artefact, recorded in the manifest.
    data_fingerprint: training-data fingerprint recorded in the manifest.
    metrics: metrics at export time, recorded in the manifest.
    needs_scann_ops: default: detected from the saved graph (any ``Scann>*`` op).
    rtol, atol: tolerance `verify_export` uses when comparing reloaded outputs with the stored ones.
    serving_files: ``{name: path}`` of files a client of this model needs to build its inputs (e.g.
      ``{"lexical_encoder": ".../lexical_encoder.npz"}``, which turns a new item's text into the ``lexical``
      feature): each is copied into the version as ``assets.extra/<file name>``, listed (size, SHA-256) in the
      manifest and under ``manifest["serving_files"]`` ``{name: relative path}``, so it is versioned with the
      model and checked by `verify_export`. An ``.npz`` must be readable.

  Returns:
    ExportResult. An existing version is never modified; the new version appears atomically.
  """
  serve, specs = _serving_function(module, name)
  requests = _normalise_requests(example_inputs, specs)
  concrete = serve.get_concrete_function()
  outputs = _replay(serve, requests, specs, name)
  outputs_json = {k: {"dtype": v.dtype.name, "shape": None if v.shape.rank is None else v.shape.as_list()}
                  for k, v in concrete.structured_outputs.items()}
  files = _checked_serving_files(serving_files, name)
  with sl.staging_dir(base_dir, name) as tmp:
    _save(module, tmp, {signature_name: concrete}, name)
    custom_ops, uses_scann = _custom_ops(tmp, name, needs_scann_ops)
    for rel, src in files.values():
      os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
      shutil.copyfile(src, os.path.join(tmp, rel))
    sl.write_warmup_requests(tmp, signature_name, requests, model_name=name)
    sl.write_expected_outputs(tmp, outputs)
    version, _ = sl.next_version_dir(base_dir, name)
    manifest = sl.build_manifest(
        name=name, version=version, kind="saved_model", artefact=artefact,
        inputs={k: spec_to_json(s) for k, s in specs.items()}, outputs=outputs_json,
        files=sl.file_inventory(tmp), signature_name=signature_name, needs_scann_ops=uses_scann,
        data_fingerprint=data_fingerprint, metrics=metrics, description=description,
        warmup={"file": sl.WARMUP_FILE, "num_requests": len(requests),
                "batch_sizes": [int(next(iter(r.values())).shape[0]) for r in requests]},
        expected_outputs={"file": sl.EXPECTED_OUTPUTS_FILE, "rtol": rtol, "atol": atol},
        extra={**dict(extra or {}), "custom_ops": custom_ops})
    if files:
      manifest["serving_files"] = {key: rel for key, (rel, _) in files.items()}
    published, path = sl.publish_with_manifest(tmp, base_dir, name, version, manifest)
  return ExportResult(name=name, version=published, path=path, manifest=manifest)


def _checked_serving_files(serving_files: Optional[Mapping[str, str]], name: str) -> dict:
  """``{key: (relative path in the version, source path)}``; ExportError naming a missing or unreadable file."""
  out, taken = {}, {}
  for key, src in (serving_files or {}).items():
    src = os.fspath(src)
    rel = "/".join((sl.ASSETS_EXTRA, os.path.basename(src)))
    if rel in taken:
      raise sl.ExportError(f"model {name!r}: serving files {taken[rel]!r} and {key!r} have the same file name "
                           f"{os.path.basename(src)!r}")
    if not os.path.isfile(src):
      raise sl.ExportError(f"model {name!r}: serving file {key!r} ({src}) does not exist")
    problem = sl.npz_problem(src) if src.endswith(".npz") else None
    if problem:
      raise sl.ExportError(f"model {name!r}: serving file {key!r} ({src}) is unreadable: {problem}")
    taken[rel] = key
    out[str(key)] = (rel, src)
  return out


def _serving_function(module: tf.Module, name: str):
  """(module.serve, {input name: TensorSpec}); ExportError when ``serve`` is not a one-dict tf.function."""
  sl.check_model_name(name)
  serve = getattr(module, "serve", None)
  if serve is None or not hasattr(serve, "get_concrete_function"):
    raise sl.ExportError(f"model {name!r}: the serving module needs a tf.function attribute `serve`")
  signature = getattr(serve, "input_signature", None)
  if not signature or len(signature) != 1 or not isinstance(signature[0], Mapping):
    raise sl.ExportError(f"model {name!r}: `serve` needs input_signature=[{{name: tf.TensorSpec}}] "
                         f"(one dict of named raw features), got {signature!r}")
  return serve, dict(signature[0])


def _replay(serve, requests: Sequence[dict], specs: Mapping[str, tf.TensorSpec], name: str) -> list[dict]:
  """The outputs of each warm-up request at export time (stored for `verify_export`)."""
  outputs = []
  for req in requests:
    result = serve({k: tf.constant(v, dtype=specs[k].dtype) for k, v in req.items()})
    if not isinstance(result, Mapping):
      raise sl.ExportError(f"model {name!r}: `serve` must return a dict of named outputs, got {type(result).__name__}")
    outputs.append({k: v.numpy() for k, v in result.items()})
  return outputs


def _save(module: tf.Module, directory: str, signatures: dict, name: str):
  try:
    tf.saved_model.save(module, directory, signatures=signatures,
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
  except AssertionError as e:
    if "untracked" not in str(e):
      raise
    raise sl.ExportError(f"model {name!r}: the serving function uses variables of an object the module does not "
                         "track (e.g. a lambda or plain function wrapping a layer); pass that layer/model itself, "
                         f"or list it in `track={{'name': layer}}`. TensorFlow said: {str(e).splitlines()[0]}") from e


def _custom_ops(directory: str, name: str, needs_scann_ops: Optional[bool]) -> tuple[list[str], bool]:
  """(custom op names in the saved graph, whether loading needs ScaNN's ops); checks ``needs_scann_ops``."""
  ops = saved_model_ops(directory)
  custom_ops = sorted(op for op in ops if ">" in op)
  detected_scann = any(op.startswith("Scann>") for op in ops)
  if needs_scann_ops is False and detected_scann:
    raise sl.ExportError(f"model {name!r}: needs_scann_ops=False but the graph uses ScaNN ops {custom_ops}")
  return custom_ops, bool(needs_scann_ops) or detected_scann


def export_keras_module(model, base_dir: str, name: str, example_inputs: ExampleInputs, *,
                        output_names: Optional[Sequence[str]] = None,
                        input_specs: Optional[Mapping[str, tf.TensorSpec]] = None,
                        unpack_single_input: bool = False, track: Optional[Mapping[str, Any]] = None,
                        dynamic_axes: Optional[Mapping[str, Sequence[int]]] = None,
                        shared_axes: Optional[Mapping[str, Sequence[tuple]]] = None, **kwargs) -> ExportResult:
  """Exports a Keras layer/model called on a dict of raw features, via a `KerasServingModule`.

  Args:
    model: Keras layer/model (or a bound method of one) ``model(features) -> Tensor | tuple | dict``;
      ``features`` may be nested (e.g. the query tower's ``{"user_id", "history": {...}}``): the signature
      then takes flat inputs named by `flatten_features` (``history_item_id``, ...).
    base_dir, name, example_inputs: see `export_serving_module`.
    output_names: names of tensor/tuple outputs in the signature (default ``output_0``, ...).
    input_specs: serving input specs; default `input_specs_from_examples` of the first example.
    unpack_single_input: call the model on the only input tensor instead of the dict.
    track: layers/variables a plain-function ``model`` closes over (see `KerasServingModule`).
    dynamic_axes: ``{flat input name: [axis, ...]}`` left free in the signature besides the batch axis.
    shared_axes: ``{axis name: [(flat input name, axis), ...]}`` free axes that must agree across inputs
      (checked in the graph, see `ServingModule`).
    **kwargs: forwarded to `export_serving_module` (artefact, metrics, data_fingerprint, ...).
  """
  requests, paths = flat_requests(example_inputs, name)
  if input_specs is None:
    input_specs = input_specs_from_examples(requests[0], dynamic_axes=dynamic_axes)
  module = KerasServingModule(model, input_specs, output_names=output_names,
                              unpack_single_input=unpack_single_input, feature_paths=paths, track=track,
                              shared_axes=shared_axes)
  return export_serving_module(module, base_dir, name, requests, **kwargs)
