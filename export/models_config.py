"""TF Serving ``models.config`` files: which models a server loads from an export base directory.

``write_serving_configs`` writes ``models.config`` (every SavedModel) and ``models.stock.config`` (only those
stock TF Serving can load, i.e. without ScaNN ops); ``read_models_config`` parses one with TF Serving's own proto.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from semrec import atomic
from semrec.export import serving_layout as sl


def discover_models(base_dir: str, include_scann: bool = True) -> list[str]:
  """Names under ``base_dir`` whose latest version is a SavedModel export (by its manifest).

  Args:
    include_scann: also list models needing ScaNN ops (set False for a stock TF Serving config).
  """
  names = []
  if not os.path.isdir(base_dir):
    return names
  for name in sorted(os.listdir(base_dir)):
    v = sl.latest_version(base_dir, name)
    if v is None:
      continue
    vdir = os.path.join(base_dir, name, str(v))
    try:
      manifest = sl.read_manifest(vdir)
      is_saved_model = manifest.get("kind") == "saved_model"
      needs_scann = bool(manifest.get("needs_scann_ops"))
    except sl.ExportError:
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
    raise sl.ExportError(f"{base_dir}: no models to put in {sl.MODELS_CONFIG_FILE}")
  prefix = base_path_prefix if base_path_prefix is not None else os.path.abspath(base_dir)
  lines = ["# TF Serving model config written by semrec. Serve with:",
           "#   tensorflow_model_server --model_config_file=<this file> --rest_api_port=8501 --port=8500",
           "model_config_list {"]
  for name in names:
    sl.check_model_name(name)
    if sl.latest_version(base_dir, name) is None:
      raise sl.ExportError(f"{base_dir}: model {name!r} has no version directory to serve")
    v = sl.latest_version(base_dir, name)
    try:
      needs_scann = bool(sl.read_manifest(os.path.join(base_dir, name, str(v))).get("needs_scann_ops"))
    except sl.ExportError:
      needs_scann = False
    if needs_scann:
      lines.append(f"  # {name}: needs ScaNN custom ops (Scann>*); stock tensorflow/serving cannot load it")
    base_path = prefix.rstrip("/") + "/" + name
    lines += ["  config {", f"    name: '{name}'", f"    base_path: '{base_path}'",
              "    model_platform: 'tensorflow'", "  }"]
  lines.append("}")
  out = path or os.path.join(base_dir, sl.MODELS_CONFIG_FILE)
  atomic.write_text(out, "\n".join(lines) + "\n")
  return out


def read_models_config(path: str) -> list[dict[str, str]]:
  """Parses a models.config with TF Serving's own proto (``ModelServerConfig``).

  Returns ``[{"name", "base_path", "model_platform"}]``; sl.ExportError naming the file if it does not parse.
  """
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  with open(path) as f:
    text = f.read()
  config = model_server_config_pb2.ModelServerConfig()
  try:
    text_format.Parse(text, config)
  except text_format.ParseError as e:
    raise sl.ExportError(f"{path}: not a valid TF Serving model config ({e})") from e
  return [{"name": c.name, "base_path": c.base_path, "model_platform": c.model_platform}
          for c in config.model_config_list.config]


def write_serving_configs(base_dir: str, base_path_prefix: Optional[str] = None) -> dict[str, str]:
  """Writes ``models.config`` (every SavedModel) and ``models.stock.config`` (only those stock TF Serving
  can load, i.e. without ScaNN ops). Returns ``{"all": path, "stock": path}`` (``stock`` absent when every
  model needs ScaNN ops)."""
  out = {"all": write_models_config(base_dir, base_path_prefix=base_path_prefix)}
  stock = discover_models(base_dir, include_scann=False)
  if stock:
    out["stock"] = write_models_config(base_dir, stock, base_path_prefix=base_path_prefix,
                                          path=os.path.join(base_dir, "models.stock.config"))
  return out
