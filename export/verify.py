"""Verification of an export base directory, each model in a fresh process.

For every model under ``<base>/`` (latest version, or all versions):
1. structure: ``manifest.json`` present and readable; every file the manifest lists present with the
   recorded size and SHA-256 (names truncated / altered / missing files); ``saved_model.pb``,
   ``variables/``, the warm-up file and the expected outputs present.
2. a fresh ``python`` subprocess that imports only ``tensorflow`` (plus ``scann`` for models whose manifest
   says they need ScaNN ops) loads the SavedModel, replays the warm-up requests through the
   ``serving_default`` signature and compares the outputs with those stored at export time. The child
   reports which of ``fresh_process.FORBIDDEN_MODULES`` (semrec, tensorflow_recommenders, tf_keras,
   sentencepiece, scann) it had loaded: any of them (scann aside, when allowed) fails the check.
3. ``saved_model_cli show --dir <version> --all`` must succeed and list the signature.
ScaNN searcher artefacts (kind ``scann_searcher``) are loaded with ``scann`` alone and re-run their stored
queries. A served cascade (kind ``cascade``, ``semrec.export.export_cascade``) is loaded by
``semrec.export.CascadeServer`` in a fresh process (it needs semrec: the chain around its SavedModels is Python),
which replays the recorded requests and compares their top-k ids and scores with the in-memory cascade's.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from semrec.export import serving_layout as sl
from semrec.export.fresh_process import CHILD_SCRIPT, FORBIDDEN_MODULES, RESULT_MARKER, child_env
from semrec.export.models_config import read_models_config

@dataclasses.dataclass
class ModelCheck:
  """The verification result of one model version.

  Attributes:
    name: model name. version: integer version (None if the model has no version directory).
    path: version directory. kind: "saved_model" / "scann_searcher" / "unknown".
    artefact: artefact type from the manifest. needs_scann_ops: from the manifest.
    errors: what is wrong, each message naming the model, version and file. warnings: problems that do not
    stop the model from serving (a leftover staging directory, an unlisted file...): `semrec verify-export`
    prints them and exits 1. notes: information only (structure-only pass, saved_model_cli skipped).
    num_requests: warm-up requests replayed. max_abs_diff: largest float deviation from the stored outputs.
    load_seconds: SavedModel / searcher load time in the child (after imports). import_seconds: the child's
    ``import tensorflow`` (+ scann) time. child_modules: semrec/TFRS/tf_keras/scann modules the
    child had imported. saved_model_cli_ok: None when not run. signature_text: the signature block
    ``saved_model_cli show --all`` printed.
  """
  name: str
  version: Optional[int]
  path: str
  kind: str = "unknown"
  artefact: str = ""
  needs_scann_ops: bool = False
  errors: list = dataclasses.field(default_factory=list)
  warnings: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)
  num_requests: int = 0
  max_abs_diff: Optional[float] = None
  load_seconds: Optional[float] = None
  import_seconds: Optional[float] = None
  child_modules: list = dataclasses.field(default_factory=list)
  saved_model_cli_ok: Optional[bool] = None
  signature_text: str = ""
  seconds: float = 0.0

  @property
  def ok(self) -> bool:
    return not self.errors

  def error(self, msg: str) -> None:
    self.errors.append(f"{self.name} v{self.version}: {msg}")


@dataclasses.dataclass
class VerifyReport:
  """All model checks of one base directory (plus models.config problems)."""
  base_dir: str
  models: list
  errors: list = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.errors and all(m.ok for m in self.models)

  @property
  def all_errors(self) -> list[str]:
    return list(self.errors) + [e for m in self.models for e in m.errors]

  @property
  def all_warnings(self) -> list[str]:
    return [w for m in self.models for w in m.warnings]

  @property
  def clean(self) -> bool:
    """No error and no warning-level problem (what `semrec verify-export` exits 0 on)."""
    return self.ok and not self.all_warnings

  def to_dict(self) -> dict[str, Any]:
    return {"base_dir": self.base_dir, "ok": self.ok, "errors": self.errors,
            "models": [{**dataclasses.asdict(m), "ok": m.ok} for m in self.models]}

  def to_markdown(self) -> str:
    return report_markdown_table(self)


def report_markdown_table(report: VerifyReport) -> str:
  """A Markdown table, one row per model version, then the list of errors."""
  lines = ["| model | version | artefact | ScaNN ops | requests | max abs diff | load s | saved_model_cli | status |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for m in report.models:
    diff = "-" if m.max_abs_diff is None else f"{m.max_abs_diff:.2g}"
    load = "-" if m.load_seconds is None else f"{m.load_seconds:.1f}"
    cli = {None: "-", True: "ok", False: "FAIL"}[m.saved_model_cli_ok]
    lines.append(f"| {m.name} | {m.version if m.version is not None else '-'} | {m.artefact or m.kind} | "
                 f"{'yes' if m.needs_scann_ops else 'no'} | {m.num_requests} | {diff} | {load} | {cli} | "
                 f"{'ok' if m.ok else 'FAIL'} |")
  errs = report.all_errors
  if errs:
    lines += ["", "Errors:"] + [f"- {e}" for e in errs]
  warns = report.all_warnings
  if warns:
    lines += ["", "Warnings:"] + [f"- {w}" for w in warns]
  return "\n".join(lines) + "\n"


# The name the CLI uses.
verification_table = report_markdown_table


def _saved_model_cli() -> Optional[str]:
  candidate = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
    return candidate
  return shutil.which("saved_model_cli")


def _check_structure(check: ModelCheck, manifest: Optional[dict]) -> None:
  vdir = check.path
  if manifest is not None:
    files = manifest.get("files") or {}
    if not files:
      check.error(f"{sl.MANIFEST_FILE} lists no files")
    for rel, info in files.items():
      full = os.path.join(vdir, rel)
      if not os.path.isfile(full):
        check.error(f"missing file {rel} (listed in {sl.MANIFEST_FILE})")
        continue
      size = os.path.getsize(full)
      if size != info.get("size"):
        what = "truncated" if size < info.get("size", 0) else "changed size"
        check.error(f"{what} file {rel}: {size} bytes, {sl.MANIFEST_FILE} records {info.get('size')}")
      elif info.get("sha256") and sl.sha256_file(full) != info["sha256"]:
        check.error(f"corrupted file {rel}: SHA-256 differs from the one recorded in {sl.MANIFEST_FILE}")
    listed = set(files)
    for root, _, fnames in os.walk(vdir):
      for fname in fnames:
        rel = os.path.relpath(os.path.join(root, fname), vdir).replace(os.sep, "/")
        if rel != sl.MANIFEST_FILE and rel not in listed:
          check.warnings.append(f"{check.name} v{check.version}: file {rel} is not listed in {sl.MANIFEST_FILE}")
  if check.kind == "saved_model":
    required = ["saved_model.pb", "variables/variables.index", sl.WARMUP_FILE, sl.EXPECTED_OUTPUTS_FILE]
    for rel in required:
      if not os.path.isfile(os.path.join(vdir, rel)) and not any(rel in e for e in check.errors):
        check.error(f"missing file {rel}")
    var_dir = os.path.join(vdir, "variables")
    if os.path.isdir(var_dir) and not any(f.startswith("variables.data-") for f in os.listdir(var_dir)):
      check.error("missing file variables/variables.data-*: the variables directory holds no data shard")
    _check_serving_files(check, manifest)
  elif check.kind == "cascade":
    from semrec.export.cascade import DATA_FILE, REQUESTS_FILE, RETRIEVER_FILE
    for rel in (DATA_FILE, RETRIEVER_FILE, REQUESTS_FILE):
      if not os.path.isfile(os.path.join(vdir, rel)) and not any(rel in e for e in check.errors):
        check.error(f"missing file {rel}")
  elif check.kind == "scann_searcher":
    for rel in ("searcher/scann_assets.pbtxt", "item_ids.txt", sl.EXPECTED_OUTPUTS_FILE):
      if not os.path.isfile(os.path.join(vdir, rel)) and not any(rel in e for e in check.errors):
        check.error(f"missing file {rel}")


def _child_result(check: ModelCheck, script: str, args: dict, timeout: float) -> Optional[dict]:
  """Runs ``script`` in a fresh Python process with ``args`` (JSON) and returns the dict it printed after
  ``RESULT_MARKER``; None after recording on ``check`` why there is none (time-out, exit without a result)."""
  try:
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=tempfile.gettempdir())
  except subprocess.TimeoutExpired:
    check.error(f"loading in a fresh process timed out after {timeout:.0f}s")
    return None
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
  if not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    check.error(f"the fresh process loading {check.path} exited with code {proc.returncode} without a result: "
                + " | ".join(tail))
    return None
  return json.loads(lines[-1][len(RESULT_MARKER):])


def _run_cascade_child(check: ModelCheck, timeout: float) -> None:
  """Replays a cascade export's recorded requests in a fresh process (``semrec.export.cascade``)."""
  from semrec.export.cascade import CHILD_SCRIPT as CASCADE_CHILD
  args = {"dir": check.path, "marker": RESULT_MARKER, "watch_modules": list(FORBIDDEN_MODULES)}
  res = _child_result(check, CASCADE_CHILD, args, timeout)
  if res is None:
    return
  for e in res["errors"]:
    check.error(f"fresh-process replay of {check.path}: {e}")
  check.num_requests, check.max_abs_diff = res["num_requests"], res["max_abs_diff"]
  check.load_seconds, check.child_modules = res["load_seconds"], res["modules"]
  check.notes.append(f"{check.name} v{check.version}: a cascade is served by semrec.export.CascadeServer (semrec, "
                     f"numpy, pandas around its SavedModels); mean request {res.get('mean_request_ms')} ms")


def _check_serving_files(check: ModelCheck, manifest: Optional[dict]) -> None:
  """Files the model's clients need (``manifest["serving_files"]``, e.g. the lexical encoder that turns a new
  item's text into the ``lexical`` feature) must be present and readable, each error naming the file."""
  for key, rel in ((manifest or {}).get("serving_files") or {}).items():
    if any(rel in e for e in check.errors):
      continue  # already reported (missing / truncated / corrupted) by the inventory check
    full = os.path.join(check.path, rel)
    if not os.path.isfile(full):
      check.error(f"missing file {rel} (the {key} this model's clients need)")
      continue
    problem = sl.npz_problem(full) if rel.endswith(".npz") else None
    if problem:
      check.error(f"unreadable file {rel} (the {key} this model's clients need): {problem}")


def _run_child(check: ModelCheck, manifest: dict, timeout: float) -> None:
  vdir = check.path
  args = {"dir": vdir, "kind": check.kind, "import_scann": check.kind == "scann_searcher" or check.needs_scann_ops,
          "signature_name": manifest.get("signature_name", sl.SIGNATURE_NAME),
          "warmup": os.path.join(vdir, sl.WARMUP_FILE), "expected": os.path.join(vdir, sl.EXPECTED_OUTPUTS_FILE),
          "output_names": sorted(manifest.get("outputs") or {}),
          "rtol": float((manifest.get("expected_outputs") or {}).get("rtol", 1e-4)),
          "atol": float((manifest.get("expected_outputs") or {}).get("atol", 1e-5)),
          "k": int((manifest.get("extra") or {}).get("k", 0)),
          "num_items": int((manifest.get("extra") or {}).get("num_items", 0)),
          "watch_modules": list(FORBIDDEN_MODULES)}
  res = _child_result(check, CHILD_SCRIPT, args, timeout)
  if res is None:
    return
  for e in res["errors"]:
    check.error(f"fresh-process check of {vdir}: {e}")
  check.num_requests = res["num_requests"]
  check.max_abs_diff = res["max_abs_diff"]
  check.load_seconds = res["load_seconds"]
  check.import_seconds = res.get("import_seconds")
  check.child_modules = res["modules"]
  allowed = {"scann"} if args["import_scann"] else set()
  leaked = sorted(set(res["modules"]) - allowed)
  if leaked:
    check.error(f"the fresh process had to import {leaked}: the export is not self-contained")


def _start_saved_model_cli(check: ModelCheck) -> Optional[subprocess.Popen]:
  """Starts ``saved_model_cli show --dir <version> --all`` (runs alongside the fresh-process replay)."""
  cli = _saved_model_cli()
  if cli is None:
    check.notes.append(f"{check.name} v{check.version}: saved_model_cli not found next to {sys.executable} "
                          "or on PATH; skipped")
    return None
  return subprocess.Popen([cli, "show", "--dir", check.path, "--all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=child_env(), cwd=tempfile.gettempdir())


def _finish_saved_model_cli(check: ModelCheck, proc: Optional[subprocess.Popen], signature_name: str,
                            timeout: float) -> None:
  if proc is None:
    return
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.communicate()
    check.saved_model_cli_ok = False
    check.error(f"saved_model_cli show timed out after {timeout:.0f}s")
    return
  check.saved_model_cli_ok = proc.returncode == 0 and f"signature_def['{signature_name}']" in stdout
  if check.saved_model_cli_ok:
    block = stdout[stdout.index(f"signature_def['{signature_name}']"):]
    end = block.find("Method name is:")
    check.signature_text = block[:block.find("\n", end) if end >= 0 else len(block)].rstrip()
  if not check.saved_model_cli_ok:
    tail = (stderr or stdout).strip().splitlines()[-2:]
    check.error(f"`saved_model_cli show --dir {check.path} --all` failed (exit {proc.returncode}) or does not "
                f"list signature {signature_name!r}: " + " | ".join(tail))


def _manifest_from_files(vdir: str) -> dict:
  """What verification needs when manifest.json is missing: outputs from the stored expected outputs,
  ScaNN needs from the graph bytes (the proto may be truncated, so no parsing)."""
  import numpy as np

  outputs = {}
  try:
    with np.load(os.path.join(vdir, sl.EXPECTED_OUTPUTS_FILE), allow_pickle=False) as data:
      outputs = {k.split("__", 1)[1]: {} for k in data.files if "__" in k}
  except (OSError, ValueError):
    pass
  with open(os.path.join(vdir, "saved_model.pb"), "rb") as f:
    needs_scann = b"Scann>" in f.read()
  return {"kind": "saved_model", "signature_name": sl.SIGNATURE_NAME, "outputs": outputs,
          "needs_scann_ops": needs_scann, "expected_outputs": {}, "extra": {}}


def verify_model_version(base_dir: str, name: str, version: int, run_saved_model_cli: bool = True,
                         timeout: float = 300.0, load: bool = True) -> ModelCheck:
  """Verifies ``<base_dir>/<name>/<version>/`` (structure, fresh-process replay, saved_model_cli).

  With ``load=False`` only the structure is checked (no subprocess).
  """
  t0 = time.time()
  base_dir = os.path.abspath(base_dir)  # the child processes run in another working directory
  vdir = os.path.join(base_dir, name, str(version))
  check = ModelCheck(name=name, version=version, path=vdir)
  manifest = None
  try:
    manifest = sl.read_manifest(vdir)
  except sl.ExportError as e:
    if not os.path.isfile(os.path.join(vdir, sl.MANIFEST_FILE)):
      check.error(f"missing file {sl.MANIFEST_FILE} (an incomplete export: file sizes, expected outputs and "
                  "ScaNN needs cannot be checked)")
    else:
      check.error(f"unreadable file {sl.MANIFEST_FILE}: {str(e).split(': ', 1)[-1]}")
  if manifest is not None:
    check.kind = manifest.get("kind", "unknown")
    check.artefact = manifest.get("artefact", "")
    check.needs_scann_ops = bool(manifest.get("needs_scann_ops"))
    if manifest.get("version") not in (None, version):
      check.warnings.append(f"{name} v{version}: manifest records version {manifest.get('version')}")
  else:
    check.kind = "saved_model" if os.path.exists(os.path.join(vdir, "saved_model.pb")) or \
        os.path.isdir(os.path.join(vdir, "variables")) else "unknown"
  if check.kind not in ("saved_model", "scann_searcher", "cascade"):
    if manifest is not None:
      check.error(f"unknown export kind {check.kind!r} in {sl.MANIFEST_FILE}")
    else:
      check.error("missing file saved_model.pb (no SavedModel or ScaNN searcher found)")
  n_before = len(check.errors)
  _check_structure(check, manifest)
  if len(check.errors) > n_before or check.kind not in ("saved_model", "scann_searcher", "cascade") or (
      manifest is None and check.kind != "saved_model"):
    check.warnings.append(f"{name} v{version}: not loaded, because of the errors above")
  elif not load:
    check.notes.append(f"{name} v{version}: structure checked only (load=False)")
  else:
    if manifest is None:
      # Still load and replay what is there: a truncated saved_model.pb is only visible to the loader.
      manifest = _manifest_from_files(vdir)
      check.needs_scann_ops = manifest["needs_scann_ops"]
    cli = _start_saved_model_cli(check) if run_saved_model_cli and check.kind == "saved_model" else None
    try:
      if check.kind == "cascade":
        _run_cascade_child(check, timeout)
      else:
        _run_child(check, manifest, timeout)
    finally:
      _finish_saved_model_cli(check, cli, manifest.get("signature_name", sl.SIGNATURE_NAME), timeout)
  check.seconds = time.time() - t0
  return check


def verify_export(base_dir: str, names: Optional[Sequence[str]] = None, all_versions: bool = False,
                  run_saved_model_cli: bool = True, timeout: float = 300.0, max_workers: int = 1,
                  load: bool = True, progress: bool = True) -> VerifyReport:
  """Verifies every model under an export base directory; returns a `VerifyReport` (never raises for a bad
  export: problems are in ``report.errors`` / each ``ModelCheck.errors``, naming model, version and file).

  Args:
    base_dir: the directory holding ``<name>/<version>/`` (and optionally ``models.config``).
    names: models to check (default: every directory under ``base_dir``).
    all_versions: check every version, not only the latest (the one TF Serving serves).
    run_saved_model_cli: also run ``saved_model_cli show --all`` on each SavedModel.
    timeout: seconds per subprocess.
    max_workers: models verified concurrently (each in its own process).
    load: False checks only the directory structure and file inventory (fast, no subprocess).
    progress: show a tqdm bar (one step per model version).
  """
  base_dir = os.path.abspath(base_dir)  # the child processes run in another working directory
  report = VerifyReport(base_dir=base_dir, models=[])
  if not os.path.isdir(base_dir):
    report.errors.append(f"{base_dir}: export directory does not exist")
    return report
  if os.path.isfile(os.path.join(base_dir, "saved_model.pb")):
    report.errors.append(f"{base_dir} is a SavedModel version directory; pass the base directory that holds "
                         "<name>/<version>/")
    return report
  if names is None:
    names = sorted(d for d in os.listdir(base_dir)
                   if os.path.isdir(os.path.join(base_dir, d)) and not d.startswith("."))
    if not names:
      report.errors.append(f"{base_dir}: no model directory (<name>/<version>/) to verify: nothing was exported "
                           "here")
  jobs = []
  for name in names:
    model_dir = os.path.join(base_dir, name)
    if not os.path.isdir(model_dir):
      report.models.append(ModelCheck(name=name, version=None, path=model_dir,
                                      errors=[f"{name}: model directory {model_dir} does not exist"]))
      continue
    versions = sl.list_versions(base_dir, name)
    if not versions:
      report.models.append(ModelCheck(name=name, version=None, path=model_dir,
                                      errors=[f"{name}: no integer version directory under {model_dir}"]))
      continue
    for v in (versions if all_versions else versions[-1:]):
      jobs.append((name, v))
  from tqdm.auto import tqdm

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool, \
      tqdm(total=len(jobs), desc="verify-export", unit="model", disable=not progress or not jobs) as bar:
    futures = [pool.submit(verify_model_version, base_dir, n, v, run_saved_model_cli, timeout, load) for n, v in jobs]
    checks = []
    for f in concurrent.futures.as_completed(futures):
      checks.append(f.result())
      bar.set_postfix_str(f"{checks[-1].name} v{checks[-1].version}: {'ok' if checks[-1].ok else 'FAIL'}")
      bar.update(1)
  staged = {n: [d for d in os.listdir(os.path.join(base_dir, n)) if d.startswith(sl.STAGING_PREFIX)]
            for n in names if os.path.isdir(os.path.join(base_dir, n))}
  for check in checks:
    for d in staged.get(check.name, []):
      check.warnings.append(f"{check.name}: leftover {d}/ from an interrupted export (not served; safe to delete)")
  report.models.extend(checks)
  report.models.sort(key=lambda m: (m.name, m.version or 0))
  _check_models_config(report)
  return report


def _check_models_config(report: VerifyReport) -> None:
  path = os.path.join(report.base_dir, sl.MODELS_CONFIG_FILE)
  if not os.path.isfile(path):
    return
  try:
    configs = read_models_config(path)
  except sl.ExportError as e:
    report.errors.append(str(e))
    return
  for c in configs:
    local = os.path.join(report.base_dir, c["name"])
    if not os.path.isdir(local):
      report.errors.append(f"{path}: model {c['name']!r} is configured but {local} does not exist")
