"""Shared pieces of the `semrec` command line (semrec.cli): output filtering, the common run options, config
building from flags, the run directory, and turning bad-input errors into a clean ``Error:`` exit."""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

import click

from semrec.data.split import SPLITS  # the split kinds' one source (no TensorFlow import)


def _configure_output(verbose: bool):
  """Quiet by default: TensorFlow's C++ logs (CUDA probing, oneDNN notices), absl / TF Python logging and
  Python warnings are filtered; ``--verbose`` shows them all. Progress bars and results are unaffected.

  Runs before the first TensorFlow import (commands import the library lazily), which is when
  ``TF_CPP_MIN_LOG_LEVEL`` is read.
  """
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
  _NativeLogFilter.set(not verbose)
  level = logging.INFO if verbose else logging.ERROR
  for name in ("tensorflow", "absl", "h5py", "transformers"):
    logging.getLogger(name).setLevel(level)
  if verbose:
    warnings.resetwarnings()
  else:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _NativeLogFilter:
  """Drops absl-format INFO/WARNING lines that native code writes to file descriptor 2.

  ``TF_CPP_MIN_LOG_LEVEL`` quiets TensorFlow's own C++ logging, but ScaNN logs through absl directly
  (``I0000 00:00:... partitioner_factory_base.cc:58] ...``), dozens of lines per index build. While the filter
  is on, fd 2 is a pipe read by a thread that forwards every other line (errors included) to the real
  stderr; Python's ``sys.stderr`` (progress bars, ``Error:`` lines) writes to the real stderr directly.
  """
  PATTERN = re.compile(rb"^(?:[IW]\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] |"
                       rb"WARNING: All log messages before absl::InitializeLog\(\) is called)")
  _active = None

  def __init__(self):
    sys.stderr.flush()
    self.saved = os.dup(2)
    self.python_stderr = sys.stderr
    sys.stderr = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    self.thread = threading.Thread(target=self._forward, args=(read_fd,), daemon=True)
    self.thread.start()

  def _forward(self, read_fd: int):
    with open(read_fd, "rb", buffering=0) as pipe:
      for line in iter(pipe.readline, b""):
        if not self.PATTERN.match(line):
          os.write(self.saved, line)

  def close(self):
    sys.stderr.flush()
    os.dup2(self.saved, 2)  # closes the pipe's last write end: the thread reads EOF and ends
    self.thread.join(timeout=2)
    sys.stderr.close()
    sys.stderr = self.python_stderr

  @classmethod
  def set(cls, on: bool):
    """Turns the filter on (idempotent) or off; it is also removed at interpreter exit. Only installed when
    Python's stderr is file descriptor 2 itself."""
    if on and cls._active is None:
      try:
        real = sys.stderr.fileno() == 2
      except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        real = False
      if not real:  # stderr already redirected (click's CliRunner, pytest capture): leave it alone
        return
      cls._active = cls()
      atexit.register(cls.set, False)
    elif not on and cls._active is not None:
      cls._active.close()
      cls._active = None


def _verbose_option(f):
  """``--verbose`` accepted after any command too (``semrec run --verbose``), same as ``semrec --verbose run``."""
  def callback(ctx, param, value):
    if value:
      _configure_output(True)
  return click.option("--verbose", "-v", is_flag=True, expose_value=False, is_eager=True, callback=callback,
                      help="Show TensorFlow / absl logs and Python warnings (hidden by default).")(f)


def _user_error_types() -> tuple:
  """Errors that describe bad input (their message names the file, row, field or artefact at fault)."""
  from semrec.atomic import ArtefactWriteError, CorruptArtefactError
  from semrec.config import ConfigError
  from semrec.data import DataError
  from semrec.encoders import EncodeError
  from semrec.export import ExportError
  from semrec.pipeline.run import RunLockedError
  return (DataError, ConfigError, CorruptArtefactError, EncodeError, ExportError, FileNotFoundError, ValueError,
          ArtefactWriteError, RunLockedError)


class _Cli(click.Group):
  """The `semrec` group: any error a command raises becomes one `Error: ...` line and exit code 1
  (`--debug` prints the traceback first). Bad-input errors print their message as is; anything else
  is prefixed with its type and a hint to rerun with `--debug`."""

  def invoke(self, ctx):
    try:
      return super().invoke(ctx)
    except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
      raise
    except Exception as e:  # noqa: BLE001 -- the CLI's single exit point for errors
      if ctx.params.get("debug"):
        import traceback
        traceback.print_exc()
      message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
      if not isinstance(e, _user_error_types()):
        message = f"{type(e).__name__}: {message} (rerun with --debug for the traceback)"
      raise click.ClickException(message) from e


def _show_warnings():
  """Python warnings as one `Warning: ...` line each on stderr. Data conversions (``semrec.data.DataWarning``:
  duplicates dropped, fractional timestamps floored) and the pipeline's warnings about the data (preflight) are
  always shown, even when other warnings are quiet."""
  warnings.filterwarnings("always", category=UserWarning, module=r"semrec\.(data|pipeline)\.")
  warnings.showwarning = lambda message, category, *args, **kwargs: click.echo(f"Warning: {message}", err=True)


class _UserErrors:
  """Turns bad-input errors (which name the file, row, item and field) into a clean `Error: ...` exit 1."""

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc is None:
      return False
    from semrec.data import DataError
    from semrec.encoders import EncodeError
    from semrec.export import ExportError
    if isinstance(exc, (DataError, EncodeError, ExportError, FileNotFoundError)):
      raise click.ClickException(str(exc)) from exc
    return False


def _config_flags(dataset, interactions, items, text_columns, quality_columns, seed, split=None,
                  no_exclude_history=False) -> dict:
  """{dotted RunConfig key: (value, flag name)} of the flags given on the command line."""
  columns = lambda text: tuple(c.strip() for c in text.split(",") if c.strip())  # noqa: E731
  given = {"data.type": (dataset, "--dataset"), "data.interactions": (interactions, "--interactions"),
           "data.items": (items, "--items"),
           "data.text_columns": (columns(text_columns) if text_columns else None, "--text-columns"),
           "data.quality_columns": (columns(quality_columns) if quality_columns else None, "--quality-columns"),
           "seed": (seed, "--seed"), "data.split": (split, "--split"),
           "data.exclude_history": (False if no_exclude_history else None, "--no-exclude-history")}
  return {k: (v, name) for k, (v, name) in given.items() if v is not None and v != ""}


def _effective_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                      split=None, no_exclude_history=False):
  """``semrec.pipeline.config.build_run_config`` of the command's file and flags (not yet validated)."""
  from semrec.pipeline.config import build_run_config
  flags = _config_flags(dataset, interactions, items, text_columns, quality_columns, seed, split, no_exclude_history)
  return build_run_config(config_path, flags, quick)


def _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick, split=None,
                  no_exclude_history=False):
  """The RunConfig of a command: defaults < --quick presets < the config file < flags, validated whole.

  ``--quick`` shrinks sizes and epochs, but a value the config file changes from its default wins over the
  preset (so ``--quick`` with ``sid.codebook_size: 64`` in the file keeps 64); each such value is reported.
  """
  eff = _effective_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                          split, no_exclude_history)
  cfg = eff.config
  if cfg.data.type == "generic" and not (cfg.data.interactions and cfg.data.items):
    raise click.UsageError("--dataset generic needs --interactions and --items")
  for note in eff.notes:
    click.echo(f"Note: {note}", err=True)
  return eff.validate()


RUN_OPTION_NAMES = ("config_path", "run_dir", "dataset", "interactions", "items", "text_columns", "quality_columns",
                    "seed", "split", "no_exclude_history", "quick", "force")


def _run_options(f):
  """Adds the shared run options (and ``--verbose``) to a command function.

  The function must take every one of them (``RUN_OPTION_NAMES``) or ``**kwargs``: checked here, when the
  command is declared, so a command that forgets one fails at import (and in every test) instead of on every
  call (issue 26: ``semrec batch encode`` did not take ``split``).
  """
  import inspect
  params = inspect.signature(f).parameters
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    missing = [n for n in RUN_OPTION_NAMES if n not in params]
    if missing:
      raise TypeError(f"command function {f.__name__}() does not take the shared run options {missing}")
  opts = [
      click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                   help="YAML RunConfig (see docs/config.md); flags below override it."),
      click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                   help="Run directory (default runs/<dataset>). Finished stages in it are reused."),
      click.option("--dataset", type=click.Choice(["movielens", "synthetic", "generic"]), default=None,
                   help="Bundled MovieLens (default), the synthetic multimodal world, or your own files."),
      click.option("--interactions", type=click.Path(exists=True, dir_okay=False), default=None,
                   help="Generic format: interactions CSV/Parquet (user_id,item_id,timestamp[,rating|label])."),
      click.option("--items", type=click.Path(exists=True, dir_okay=False), default=None,
                   help="Generic format: items CSV/Parquet (item_id, text columns, media paths, quality)."),
      click.option("--text-columns", default=None, help="Generic format: comma-separated item text columns (default: title, name, text, description, ... whichever the items table has)."),
      click.option("--quality-columns", default=None, help="Generic format: comma-separated numeric quality columns."),
      click.option("--seed", type=int, default=None, help="Global seed."),
      click.option("--split", type=click.Choice(SPLITS), default=None,
                   help="Retrieval evaluation protocol (docs/protocols.md); default temporal."),
      click.option("--no-exclude-history", is_flag=True,
                   help="Keep each user's earlier items in the retrieval ranking (excluded by default)."),
      click.option("--quick", is_flag=True, help="Tiny sizes and epochs (smoke test of the whole job); values set "
                   "in --config win over these presets."),
      click.option("--force", is_flag=True, help="Recompute the stage(s) even if finished."),
  ]
  for o in reversed(opts):
    f = o(f)
  return _verbose_option(f)


def _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, split=None,
              no_exclude_history=False, stages=()):
  """The run directory, locked for this command (``semrec.pipeline.run.RunLock``: a second process on the
  same directory is refused, naming the holder's pid; released when the command ends, or by the kernel when
  the process dies), after the config and the data were checked against each other for ``stages``
  (``semrec.pipeline.preflight``), before any stage runs."""
  from semrec.pipeline import Run, preflight, write_config
  from semrec.pipeline.run import RunLock
  cfg = _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
                      no_exclude_history)
  run = Run(cfg, run_dir or _default_run_dir(cfg, quick))
  lock = RunLock(run.run_dir).acquire()
  ctx = click.get_current_context(silent=True)
  if ctx is not None:
    ctx.call_on_close(lock.release)
  else:  # called outside a click command: released at exit (or by the kernel when the process dies)
    atexit.register(lock.release)
  preflight(run, stages)
  write_config(run)
  return run


def _default_run_dir(cfg, quick: bool) -> str:
  return os.path.join("runs", cfg.data.type + ("-quick" if quick else ""))
