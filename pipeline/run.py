"""The run directory of `semrec run`: lazily loaded data, finished-stage records, resuming.

A run directory holds ``config.yaml``, one sub-directory per stage (each finished stage writes
``<stage>/_DONE.json`` atomically, with its metrics), ``metrics.json``, ``report.md`` and ``plots/``.
Re-running the same command on the same directory skips finished stages, so an interrupted job
resumes where it stopped. Each ``_DONE.json`` also records a key of the config a stage ran with (its own
sections, its prerequisites' sections and the seed): a finished stage whose config has changed since is
stale, and is recomputed (its directory cleared first) together with every later stage that depends on it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Optional

from semrec.atomic import CorruptArtefactError, read_json
from semrec.atomic import write_json as atomic_write_json
from semrec.config import ConfigError, save_yaml, to_dict
from semrec.data import EvalSplit, RecDataset, TemporalSplit, make_split, temporal_split
from semrec.pipeline.config import SPLIT_FIELDS, load_dataset
from semrec.pipeline.report import write_report
from semrec.pipeline.stages import STAGE_ORDER, STAGES


class Run:
  """A run directory plus the lazily loaded dataset and split; stages read and write through it."""

  def __init__(self, config, run_dir: str):
    self.config = config
    self.run_dir = os.path.abspath(run_dir)
    os.makedirs(self.run_dir, exist_ok=True)
    os.makedirs(self.path("plots"), exist_ok=True)
    self._dataset = None
    self._split = None
    self._fingerprint = None

  def path(self, *parts) -> str:
    return os.path.join(self.run_dir, *parts)

  def stage_dir(self, stage: str) -> str:
    d = self.path(stage)
    os.makedirs(d, exist_ok=True)
    return d

  @property
  def dataset(self) -> RecDataset:
    if self._dataset is None:
      self._dataset = load_dataset(self.config.data)
    return self._dataset

  @property
  def data_fingerprint(self) -> str:
    """``dataset.fingerprint()``, hashed once per run (stage keys and every export manifest use it)."""
    if self._fingerprint is None:
      self._fingerprint = self.dataset.fingerprint()
    return self._fingerprint

  @property
  def split(self) -> EvalSplit:
    """The retrieval evaluation protocol of ``config.data`` (``semrec.data.make_split``; seeded by the run seed)."""
    if self._split is None:
      d = self.config.data
      self._split = make_split(self.dataset, d.split, train_fraction=d.train_fraction, val_fraction=d.val_fraction,
                               cold_fraction=d.cold_fraction, seed=self.config.seed)
    return self._split

  @property
  def temporal_split(self) -> TemporalSplit:
    """The row-level train/test split at the ``data.train_fraction`` time quantile."""
    if getattr(self, "_temporal_split", None) is None:
      self._temporal_split = temporal_split(self.dataset, self.config.data.train_fraction)
    return self._temporal_split

  def is_done(self, stage: str) -> bool:
    """True when ``stage`` finished in this directory (whatever config it ran with; see ``stale_sections``)."""
    return os.path.exists(self.path(stage, "_DONE.json"))

  def _done_record(self, stage: str) -> dict:
    """The stage's ``_DONE.json``; CorruptArtefactError (naming it, and ``--force``) when it is damaged."""
    return read_json(self.path(stage, "_DONE.json"), "stage record",
                     f"rerun with --force to recompute the {stage} stage (or delete the file)")

  def stage_result(self, stage: str) -> dict:
    """The metrics dict a finished stage recorded (without the bookkeeping ``_config`` entry)."""
    result = self._done_record(stage)
    result.pop("_config", None)
    return result

  def config_sections(self, stage: str) -> Optional[dict]:
    """{config section: 16-hex hash} of the config ``stage`` and its prerequisites read, plus the seed.

    None for stages outside ``STAGES``.
    """
    names = STAGES.sections_read(stage)
    if names is None:
      return None
    cfg = self.config
    values = {"seed": cfg.seed}
    for n in names:
      if n == "split":
        values[n] = {f: getattr(cfg.data, f) for f in SPLIT_FIELDS}
      elif n == "data":
        values[n] = {k: v for k, v in to_dict(cfg.data).items() if k not in SPLIT_FIELDS}
      else:
        values[n] = to_dict(cfg.encoder_config() if n == "encoder" else getattr(cfg, n))
    if "data" in names and cfg.data.type == "generic":  # the files can change under the same paths
      values["data_files"] = self.data_fingerprint
    digest = lambda v: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa: E731
    return {n: digest(v) for n, v in values.items()}

  def stale_sections(self, stage: str) -> list:
    """Config sections that changed since the finished ``stage`` ran ([] when unchanged or unknown)."""
    if not self.is_done(stage):
      return []
    now, then = self.config_sections(stage), self._done_record(stage).get("_config")
    if now is None or then is None:  # a stage outside STAGES, or recorded before config keys were: trust it
      return []
    return sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))

  def mark_done(self, stage: str, result: dict):
    record = dict(result)
    sections = self.config_sections(stage)
    if sections is not None:
      record["_config"] = sections
    atomic_write_json(os.path.join(self.stage_dir(stage), "_DONE.json"), record)


class RunLockedError(RuntimeError):
  """Another live process holds the run directory's lock (the message names its pid)."""


LOCK_FILE = ".semrec.lock"


class RunLock:
  """An exclusive lock on a run directory: one ``semrec`` process writes a run directory at a time.

  ``<run_dir>/.semrec.lock`` holds the holder's pid and is locked with ``fcntl.flock``. The kernel releases
  the flock when its process ends in any way (normal exit, exception, SIGKILL), so a lock left behind by a
  dead process is taken over by the next run; :meth:`release` also releases it on a normal exit.

  Usage: ``with RunLock(run_dir): ...`` or ``lock = RunLock(run_dir).acquire()`` ... ``lock.release()``.

  Raises (``acquire``):
    RunLockedError: a live process holds the lock, naming its pid and the lock file.
  """

  def __init__(self, run_dir: str):
    self.path = os.path.join(os.path.abspath(run_dir), LOCK_FILE)
    self._fd = None

  def acquire(self) -> "RunLock":
    import fcntl
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
      os.close(fd)
      raise RunLockedError(f"run directory {os.path.dirname(self.path)} is in use by another semrec process "
                           f"(pid {holder}, lock {self.path}): wait for it to finish or use another --run-dir")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def release(self):
    if self._fd is None:
      return
    import fcntl
    with contextlib.suppress(OSError):  # the file may have been removed with the run directory
      os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


def run_stages(run: Run, stages, registry: dict[str, Callable], log: Callable[[str], None] = print,
               force: bool = False) -> dict:
  """Runs ``stages`` in order, skipping finished ones; returns {stage: result}.

  A finished stage is reused unless ``force``, its config changed since it ran (``Run.stale_sections``) or
  the files it reported changed since (``STAGES.recheck``, e.g. a deleted export folder under verify). A stale
  or forced stage's directory is cleared before it is recomputed (so ``force`` recomputes from the source and
  never re-validates an existing file), except what a server may be using: ``export/models``
  is never cleared, so every exported version survives (recomputed models are added as new versions). A
  damaged ``_DONE.json`` is an error naming it, unless ``force``.
  """
  unknown = [s for s in stages if s not in registry]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; known: {list(registry)}")
  results = {}
  for stage in stages:
    try:
      stale = run.stale_sections(stage)
      done = run.is_done(stage)
    except CorruptArtefactError:
      if not force:
        raise
      log(f"[semrec] {stage}: damaged {run.path(stage, '_DONE.json')}; recomputing (--force)")
      stale, done = [], False
    changed = STAGES.recheck(run, stage) if done and not force and not stale else None
    if done and not force and not stale and not changed:
      log(f"[semrec] {stage}: already done in {run.path(stage)} (resuming)")
      results[stage] = run.stage_result(stage)
      continue
    if changed:
      log(f"[semrec] {stage}: {changed}; recomputing")
    keeping = " (keeping the exported models)" if stage in STAGES.keep else ""
    if stale:
      log(f"[semrec] {stage}: config changed since it ran ({', '.join(stale)}); clearing {run.path(stage)}" + keeping)
      _clear_stage_dir(run.path(stage), STAGES.keep.get(stage, ()))
    elif force and os.path.isdir(run.path(stage)):
      # --force recomputes from the source: nothing of the stage's earlier files (store shards, sweep
      # checkpoints) is reused or re-blessed; only what a server may be using is kept.
      log(f"[semrec] {stage}: --force; clearing {run.path(stage)}" + keeping)
      _clear_stage_dir(run.path(stage), STAGES.keep.get(stage, ()))
    log(f"[semrec] {stage}: running")
    t0 = time.time()
    result = registry[stage](run) or {}
    result = {"seconds": round(time.time() - t0, 1), **result}
    run.mark_done(stage, result)
    log(f"[semrec] {stage}: done in {result['seconds']:.0f}s")
    results[stage] = result
  return results


def _clear_stage_dir(directory: str, keep=()):
  """Deletes ``directory`` except the entries named in ``keep`` (e.g. the served ``models`` tree)."""
  if not keep:
    shutil.rmtree(directory)
    return
  for name in os.listdir(directory):
    if name not in keep:
      path = os.path.join(directory, name)
      shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def write_config(run: Run):
  save_yaml(run.config, run.path("config.yaml"))


def preflight(run: "Run", stages=STAGE_ORDER):
  """Checks the data against the config before any stage runs, for the stages that will run (the dataset is
  loaded and validated here). Each check belongs to the stages that need it, on the data kind they see:

  - the temporal protocol and the ranking periods: a train/test cutoff with a positive before it;
  - retrieval: the run's protocol (``data.split``) is built, so a split that leaves no validation or test
    query fails here (``semrec.data.make_split``); ``retrieval.production_variant`` must be one of the
    variants the comparison trains; a cold_items stage with no more candidates than the selection cut-off
    ``k`` is warned about (every model then scores Recall@k = 1: the served variant is a tie);
  - the ranking AUC sweep, on explicit feedback only (some label 0): the interactions must cut into
    ``ranking.num_periods`` time periods. Only that sweep over labelled impressions cuts periods; on implicit
    data (every row a positive, e.g. positional timestamps 0, 1, 2, ... per user) it is skipped, and the
    cascade ranker trains on retrieval candidates without periods;
  - sid / retrieval / ranking: a catalogue of at least 2 items and at least ``sid.model.codebook_size``.

  Raises:
    DataError / ConfigError: naming the field or the data's shortfall.
  """
  import warnings
  from semrec.data import DataError, DataWarning, time_periods
  cfg, ds = run.config, run.dataset
  uses_sids = any(s in stages for s in ("sid", "retrieval", "ranking", "ranking-sweep"))
  if uses_sids and ds.num_items < 2:
    raise DataError(f"dataset {ds.name!r}: the catalogue has {ds.num_items} item; SIDs, cluster IDs and "
                    "retrieval need at least 2 items (a SID codebook has at least 2 codes and every code needs an "
                    "item): add items to the items table")
  explicit = bool((ds.interactions["label"].to_numpy() == 0).any())
  # The AUC sweep's time periods (see above): the "ranking-sweep" stage where the registry has one (the
  # "ranking" stage is then the cascade, trained on retrieval candidates without periods), else "ranking".
  sweep = "ranking-sweep" if "ranking-sweep" in STAGES.registry else "ranking"
  periods = sweep in stages and explicit
  if periods or ("retrieval" in stages and cfg.data.split == "temporal"):
    split = run.temporal_split
    if not (split.train["label"].to_numpy() > 0).any():
      raise DataError(f"dataset {ds.name!r}: no positive interaction before the train/test cutoff "
                      f"{split.cutoff} (data.train_fraction={cfg.data.train_fraction})")
  if "retrieval" in stages:
    rcfg = cfg.retrieval
    variants = tuple(rcfg.comparison.variants)
    if rcfg.production_variant != "auto" and rcfg.production_variant not in variants:
      raise ConfigError(f"retrieval.production_variant: {rcfg.production_variant!r} is not among the variants the "
                        f"comparison trains ({list(variants)}); add it to them or use 'auto'")
    eval_split = run.split  # builds the protocol now, so its errors come before any stage
    k = int(rcfg.comparison.fit.selection_k)
    few = {stage: len(q.candidates) for stage, q in eval_split.stage_queries.items()
           if q.candidates is not None and len(q.candidates) <= k}
    if few:
      warnings.warn(DataWarning(
          f"split {eval_split.kind!r}: the " + " and ".join(f"{s} stage ranks only {n}" for s, n in few.items())
          + f" candidate items, not more than the selection cut-off k={k}: every model scores Recall@{k} = 1.0 "
          "there, so the served retriever is a tie (chosen by variant order, not by quality); use more items or a "
          "larger data.cold_fraction"))
  if periods:
    try:
      time_periods(ds.interactions, cfg.ranking.num_periods)
    except DataError as e:
      raise DataError(f"{e} ({ds.interactions['timestamp'].nunique()} distinct timestamps): lower "
                      f"ranking.num_periods (now {cfg.ranking.num_periods}, at least 2)") from e
  k_field = "sid.codebook_size" if hasattr(cfg.sid, "codebook_size") else "sid.model.codebook_size"
  if uses_sids and ds.num_items < cfg.sid.model.codebook_size:
    raise ConfigError(f"{k_field}={cfg.sid.model.codebook_size} exceeds the catalogue "
                      f"({ds.num_items} items): every code needs an item; set {k_field} between 2 "
                      f"and {ds.num_items} (about N/30 fills every code)")


def run_all(run: Run, force: bool = False, log: Callable[[str], None] = print) -> str:
  """`semrec run`: every stage in order (finished ones reused), then metrics.json + report.md."""
  t0 = time.time()
  results = run_stages(run, STAGE_ORDER, STAGES.registry, log=log, force=force)
  table = write_report(run, results)
  log(f"[semrec] finished in {time.time() - t0:.0f}s; report: {run.path('report.md')}")
  return table
