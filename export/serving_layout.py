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

from semrec import atomic

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


def npz_problem(path: str) -> Optional[str]:
  """Why ``path`` is not a readable ``.npz`` archive (e.g. "not a valid .npz archive (BadZipFile: ...)"), or None.
  Every array is read, so a truncated member is found too."""
  import zipfile
  try:
    with np.load(path, allow_pickle=False) as f:
      for key in f.files:
        f[key]
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
    return f"not a valid .npz archive ({type(e).__name__}: {e})"
  return None


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


def publish_with_manifest(staging: str, base_dir: str, name: str, version: int, manifest: dict) -> tuple[int, str]:
  """Writes ``manifest.json`` into a complete staging directory and publishes it (`publish_staging_dir`).

  If a concurrent exporter took ``version`` meanwhile, the manifest of the published directory is
  rewritten with the version it really got (``manifest["version"]`` is updated in place).
  Returns ``(version, path)``.
  """
  atomic.write_json(os.path.join(staging, MANIFEST_FILE), manifest, sort_keys=True)
  published, path = publish_staging_dir(staging, base_dir, name, version)
  if published != version:
    manifest["version"] = published
    atomic.write_json(os.path.join(path, MANIFEST_FILE), manifest, sort_keys=True)
  return published, path


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
  with atomic.atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
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
  atomic.save_npz(path, **arrays)
  return path


def read_expected_outputs(export_dir: str, num_requests: int, output_names: Sequence[str]
                          ) -> list[dict[str, np.ndarray]]:
  path = os.path.join(export_dir, EXPECTED_OUTPUTS_FILE)
  with np.load(path, allow_pickle=False) as data:
    return [{k: data[_expected_key(i, k)] for k in output_names} for i in range(num_requests)]
