"""TF Serving directory layout: integer versions, atomic publication, manifests, warm-up records.

Layout written by every exporter (TF Serving watches ``<base>/<name>/`` and serves the highest integer
version it finds; directories whose name is not an integer are ignored):

```
<base>/
  models.config                      # model_config_list text proto (write_models_config)
  <name>/
    <version>/                       # 1, 2, 3, ...: a re-export adds a version, never rewrites one
      saved_model.pb
      variables/variables.{index,data-*}
      assets/ ...
      assets.extra/tf_serving_warmup_requests    # TFRecord of PredictionLog protos
      assets.extra/semrec_expected_outputs.npz   # outputs of the warm-up requests at export time
      manifest.json                              # signature, versions, data fingerprint, metrics, file hashes
    .staging-<uuid>/                 # work in progress; renamed to <version> when complete
```

A version directory appears in one ``os.rename`` of a complete staging directory, so a model server
watching the base path never sees a half-written version.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import uuid
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

MANIFEST_FILE = "manifest.json"
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = os.path.join(ASSETS_EXTRA, "tf_serving_warmup_requests")
EXPECTED_OUTPUTS_FILE = os.path.join(ASSETS_EXTRA, "semrec_expected_outputs.npz")
MODELS_CONFIG_FILE = "models.config"
SIGNATURE_NAME = "serving_default"
STAGING_PREFIX = ".staging-"
MANIFEST_FORMAT = 1
# TF Serving reads at most this many warm-up records per model.
MAX_WARMUP_RECORDS = 1000

_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(ValueError):
  """A bad export request or a bad export directory; the message names the model, version and file."""


def check_model_name(name: str) -> str:
  """Returns ``name`` if it is usable as a TF Serving model name and directory, else raises ExportError."""
  if not isinstance(name, str) or not _MODEL_NAME_RE.match(name):
    raise ExportError(f"model name {name!r} is not valid: use letters, digits, '_', '-', '.' "
                      "(it becomes a directory and the TF Serving model name)")
  return name


def list_versions(base_dir: str, name: str) -> list[int]:
  """Sorted integer versions present under ``<base_dir>/<name>/`` (staging dirs are ignored)."""
  model_dir = os.path.join(base_dir, name)
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(d) for d in os.listdir(model_dir)
                if d.isdigit() and os.path.isdir(os.path.join(model_dir, d)))


def latest_version(base_dir: str, name: str) -> Optional[int]:
  """The highest version of ``name`` (what TF Serving serves by default), or None."""
  versions = list_versions(base_dir, name)
  return versions[-1] if versions else None


def next_version_dir(base_dir: str, name: str) -> tuple[int, str]:
  """The next free version of ``name``: ``(version, <base_dir>/<name>/<version>)``; versions start at 1.

  The directory is not created: exporters write into a staging directory and publish it with
  `publish_staging_dir`, which re-checks for a version taken in the meantime.
  """
  check_model_name(name)
  version = (latest_version(base_dir, name) or 0) + 1
  return version, os.path.join(base_dir, name, str(version))


@contextlib.contextmanager
def staging_dir(base_dir: str, name: str) -> Iterator[str]:
  """Yields a fresh ``<base>/<name>/.staging-<uuid>`` directory; removes it if the body raises."""
  check_model_name(name)
  model_dir = os.path.join(base_dir, name)
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
  os.makedirs(path)
  try:
    yield path
  finally:
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)


def publish_staging_dir(staging: str, base_dir: str, name: str, version: Optional[int] = None) -> tuple[int, str]:
  """Renames a complete staging directory to the next free integer version, atomically.

  Existing versions are never touched: if ``version`` (or the computed next version) is already taken
  the next free number is used. Returns ``(version, path)``.
  """
  for _ in range(100):
    if version is None or os.path.exists(os.path.join(base_dir, name, str(version))):
      version, _ = next_version_dir(base_dir, name)
    final = os.path.join(base_dir, name, str(version))
    if os.path.exists(final):  # taken by a concurrent exporter between the two calls.
      version = None
      continue
    try:
      os.rename(staging, final)
    except OSError:
      if os.path.exists(final):
        version = None
        continue
      raise
    _fsync_dir(os.path.join(base_dir, name))
    return version, final
  raise ExportError(f"could not find a free version directory for model {name!r} under {base_dir}")


def _fsync_dir(path: str) -> None:
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(path: str, obj: Any) -> None:
  write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, bytes):
    return o.decode("utf-8", "replace")
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------------
# Versions and file inventory.


def library_versions() -> dict[str, Optional[str]]:
  """Versions of the libraries an export depends on (None when a library is not installed)."""
  from importlib import metadata

  out: dict[str, Optional[str]] = {"python": platform.python_version()}
  for key, dist in (("semrec", "semrec"), ("tensorflow", "tensorflow"), ("tf_keras", "tf-keras"),
                    ("tensorflow_recommenders", "tensorflow-recommenders"), ("scann", "scann"),
                    ("tensorflow_serving_api", "tensorflow-serving-api")):
    try:
      out[key] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      out[key] = None
  if out["semrec"] is None:
    from semrec.version import __version__
    out["semrec"] = __version__
  return out


def file_inventory(directory: str, exclude: Sequence[str] = (MANIFEST_FILE,)) -> dict[str, dict[str, Any]]:
  """``{relative_path: {"size": bytes, "sha256": hex}}`` for every file under ``directory``.

  Stored in the manifest so verification can name a truncated or altered file.
  """
  out = {}
  for root, _, files in os.walk(directory):
    for fname in sorted(files):
      full = os.path.join(root, fname)
      rel = os.path.relpath(full, directory).replace(os.sep, "/")
      if rel in exclude:
        continue
      out[rel] = {"size": os.path.getsize(full), "sha256": sha256_file(full)}
  return dict(sorted(out.items()))


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(*, name: str, version: int, kind: str, artefact: str, inputs: Mapping[str, Any],
                   outputs: Mapping[str, Any], files: Mapping[str, Any], signature_name: str = SIGNATURE_NAME,
                   needs_scann_ops: bool = False, data_fingerprint: Optional[str] = None,
                   metrics: Optional[Mapping[str, Any]] = None, description: str = "",
                   warmup: Optional[Mapping[str, Any]] = None, expected_outputs: Optional[Mapping[str, Any]] = None,
                   extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The manifest of one exported version (see the module docstring for where it lives).

  Args:
    name: TF Serving model name. version: integer version. kind: "saved_model" or "scann_searcher".
    artefact: what the export is ("sid_assigner", "candidate_tower", "ranker", ...).
    inputs / outputs: ``{name: {"dtype": str, "shape": [int | None, ...]}}`` of the serving signature.
    files: `file_inventory` of the version directory.
    needs_scann_ops: True when loading needs ScaNN's custom TF ops (``import scann`` / a ScaNN-enabled
      model server); stock TF Serving cannot load such a model.
    data_fingerprint: fingerprint of the training data (``RecDataset.fingerprint()``).
    metrics: evaluation metrics at export time (JSON-serialisable scalars).
  """
  serving_note = ("needs ScaNN custom ops: load after `import scann`, serve with a ScaNN-enabled "
                  "model server (stock tensorflow/serving lacks the Scann>* ops)" if needs_scann_ops
                  else "standard TensorFlow ops only: stock TF Serving loads it")
  return {
      "semrec_manifest_format": MANIFEST_FORMAT,
      "name": name,
      "version": int(version),
      "kind": kind,
      "artefact": artefact,
      "description": description,
      "created_utc": utc_now(),
      "signature_name": signature_name,
      "inputs": dict(inputs),
      "outputs": dict(outputs),
      "needs_scann_ops": bool(needs_scann_ops),
      "serving_note": serving_note,
      "versions": library_versions(),
      "training_data_fingerprint": data_fingerprint,
      "metrics": dict(metrics or {}),
      "warmup": dict(warmup or {}),
      "expected_outputs": dict(expected_outputs or {}),
      "extra": dict(extra or {}),
      "files": dict(files),
  }


def read_manifest(version_dir: str) -> dict[str, Any]:
  """Reads ``<version_dir>/manifest.json``; ExportError naming the file if it is missing or unreadable."""
  path = os.path.join(version_dir, MANIFEST_FILE)
  if not os.path.isfile(path):
    raise ExportError(f"{path}: missing {MANIFEST_FILE}")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f"{path}: unreadable manifest ({e})") from e
  if not isinstance(manifest, dict) or "kind" not in manifest:
    raise ExportError(f"{path}: not a semrec export manifest (no 'kind' field)")
  return manifest


# ---------------------------------------------------------------------------------------------------
# Warm-up requests and expected outputs.


def write_warmup_requests(export_dir: str, signature_name: str, requests: Sequence[Mapping[str, Any]],
                          model_name: str = "") -> str:
  """Writes ``assets.extra/tf_serving_warmup_requests``: one PredictionLog per request dict.

  TF Serving replays these records when it loads the version, so the first real request does not pay
  for graph warm-up. Each request is ``{input_name: array}`` with a leading batch dimension.

  Args:
    export_dir: the SavedModel (version) directory.
    signature_name: signature the requests call (normally "serving_default").
    requests: 1..1000 dicts of arrays (str/bytes arrays become DT_STRING tensors).
    model_name: optional model name stored in each request's ModelSpec.

  Returns:
    The path of the written file.
  """
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

  if not requests:
    raise ExportError(f"{export_dir}: at least one warm-up request is needed")
  if len(requests) > MAX_WARMUP_RECORDS:
    raise ExportError(f"{export_dir}: {len(requests)} warm-up requests, TF Serving reads at most "
                      f"{MAX_WARMUP_RECORDS}")
  path = os.path.join(export_dir, WARMUP_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + f".tmp-{uuid.uuid4().hex}"
  with tf.io.TFRecordWriter(tmp) as writer:
    for i, req in enumerate(requests):
      request = predict_pb2.PredictRequest()
      request.model_spec.signature_name = signature_name
      if model_name:
        request.model_spec.name = model_name
      for key, value in req.items():
        try:
          request.inputs[key].CopyFrom(tf.make_tensor_proto(_as_proto_array(value)))
        except (TypeError, ValueError) as e:
          raise ExportError(f"{export_dir}: warm-up request {i}, input {key!r}: cannot convert to a "
                            f"TensorProto ({e})") from e
      log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())
  os.replace(tmp, path)
  return path


def _as_proto_array(value) -> np.ndarray:
  arr = np.asarray(value)
  if arr.dtype.kind in ("U", "O"):
    arr = np.array([v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in arr.ravel()],
                   dtype=object).reshape(arr.shape)
  return arr


def read_warmup_requests(export_dir: str) -> list[tuple[str, dict[str, np.ndarray]]]:
  """Parses the warm-up file with the tensorflow-serving-api protos: ``[(signature_name, inputs)]``."""
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  path = os.path.join(export_dir, WARMUP_FILE)
  out = []
  for record in tf.data.TFRecordDataset(path):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    req = log.predict_log.request
    out.append((req.model_spec.signature_name, {k: tf.make_ndarray(v) for k, v in req.inputs.items()}))
  return out


def _expected_key(request_index: int, output_name: str) -> str:
  return f"r{request_index}__{output_name}"


def write_expected_outputs(export_dir: str, outputs: Sequence[Mapping[str, np.ndarray]]) -> str:
  """Stores each warm-up request's outputs (``[{output_name: array}]``) as an ``.npz`` (no pickles)."""
  arrays = {}
  for i, out in enumerate(outputs):
    for key, value in out.items():
      arr = np.asarray(value)
      if arr.dtype.kind == "O":  # tf.string outputs come back as object arrays of bytes.
        arr = np.array([bytes(v) for v in arr.ravel()], dtype=bytes).reshape(arr.shape)
      arrays[_expected_key(i, key)] = arr
  path = os.path.join(export_dir, EXPECTED_OUTPUTS_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + f".tmp-{uuid.uuid4().hex}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path


def read_expected_outputs(export_dir: str, num_requests: int, output_names: Sequence[str]
                          ) -> list[dict[str, np.ndarray]]:
  path = os.path.join(export_dir, EXPECTED_OUTPUTS_FILE)
  with np.load(path, allow_pickle=False) as data:
    return [{k: data[_expected_key(i, k)] for k in output_names} for i in range(num_requests)]


# ---------------------------------------------------------------------------------------------------
# models.config


def discover_models(base_dir: str, include_scann: bool = True) -> list[str]:
  """Names under ``base_dir`` whose latest version is a SavedModel export (by its manifest).

  Args:
    include_scann: also list models needing ScaNN ops (set False for a stock TF Serving config).
  """
  names = []
  if not os.path.isdir(base_dir):
    return names
  for name in sorted(os.listdir(base_dir)):
    v = latest_version(base_dir, name)
    if v is None:
      continue
    vdir = os.path.join(base_dir, name, str(v))
    try:
      manifest = read_manifest(vdir)
      is_saved_model = manifest.get("kind") == "saved_model"
      needs_scann = bool(manifest.get("needs_scann_ops"))
    except ExportError:
      is_saved_model = os.path.isfile(os.path.join(vdir, "saved_model.pb"))
      needs_scann = False
    if is_saved_model and (include_scann or not needs_scann):
      names.append(name)
  return names


def write_models_config(base_dir: str, names: Optional[Sequence[str]] = None, base_path_prefix: Optional[str] = None,
                        path: Optional[str] = None, include_scann: bool = True) -> str:
  """Writes a TF Serving ``models.config`` (``model_config_list`` text proto) for ``names``.

  Args:
    base_dir: the export base directory holding ``<name>/<version>/``.
    names: model names to list; default: every SavedModel export found under ``base_dir``.
    base_path_prefix: prefix of ``base_path`` as the *server* sees it (e.g. "/models" when ``base_dir``
      is mounted at /models in the tensorflow/serving container); default: absolute ``base_dir``.
    path: where to write; default ``<base_dir>/models.config``.
    include_scann: when ``names`` is None, also list models that need ScaNN ops.

  Returns:
    The path of the written file. Models that need ScaNN ops get a comment saying so.
  """
  if names is None:
    names = discover_models(base_dir, include_scann=include_scann)
  if not names:
    raise ExportError(f"{base_dir}: no models to put in {MODELS_CONFIG_FILE}")
  prefix = base_path_prefix if base_path_prefix is not None else os.path.abspath(base_dir)
  lines = ["# TF Serving model config written by semrec. Serve with:",
           "#   tensorflow_model_server --model_config_file=<this file> --rest_api_port=8501 --port=8500",
           "model_config_list {"]
  for name in names:
    check_model_name(name)
    if latest_version(base_dir, name) is None:
      raise ExportError(f"{base_dir}: model {name!r} has no version directory to serve")
    v = latest_version(base_dir, name)
    try:
      needs_scann = bool(read_manifest(os.path.join(base_dir, name, str(v))).get("needs_scann_ops"))
    except ExportError:
      needs_scann = False
    if needs_scann:
      lines.append(f"  # {name}: needs ScaNN custom ops (Scann>*); stock tensorflow/serving cannot load it")
    base_path = prefix.rstrip("/") + "/" + name
    lines += ["  config {", f"    name: '{name}'", f"    base_path: '{base_path}'",
              "    model_platform: 'tensorflow'", "  }"]
  lines.append("}")
  out = path or os.path.join(base_dir, MODELS_CONFIG_FILE)
  write_bytes_atomic(out, ("\n".join(lines) + "\n").encode())
  return out


def read_models_config(path: str) -> list[dict[str, str]]:
  """Parses a models.config with TF Serving's own proto (``ModelServerConfig``).

  Returns ``[{"name", "base_path", "model_platform"}]``; ExportError naming the file if it does not parse.
  """
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  with open(path) as f:
    text = f.read()
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise ExportError(f"{path}: not a valid TF Serving model config ({e})") from e
  return [{"name": c.name, "base_path": c.base_path, "model_platform": c.model_platform}
          for c in config.model_config_list.config]
