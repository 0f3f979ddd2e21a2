"""The `semrec` command line. Flags are parsed here only: each command builds a config and calls library code.

Every stage command works on a run directory (``--run-dir``, default ``runs/<dataset>``) and resumes
finished stages; ``semrec run`` chains all of them and writes the report.
"""
from __future__ import annotations

import os

import click


def _user_error_types() -> tuple:
  """Errors that describe bad input (their message names the file, row, field or artefact at fault)."""
  from semrec.atomic import CorruptArtefactError
  from semrec.config import ConfigError
  from semrec.data import DataError
  from semrec.encoders import EncodeError
  from semrec.export import ExportError
  return (DataError, ConfigError, CorruptArtefactError, EncodeError, ExportError, FileNotFoundError, ValueError)


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
  """Python warnings (e.g. data.DataWarning: duplicates dropped) as one `Warning: ...` line each on stderr."""
  import warnings
  warnings.showwarning = lambda message, category, *args, **kwargs: click.echo(f"Warning: {message}", err=True)


def _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick, split=None,
                  no_exclude_history=False):
  """The RunConfig of a command: defaults < --quick presets < the config file < flags, validated whole.

  ``--quick`` shrinks sizes and epochs, but a value set in the config file wins over its preset (so
  ``--quick`` with ``sid.model.codebook_size: 64`` in the file keeps 64); each such value is reported.
  """
  from semrec.config import from_dict, load_yaml, merge_dicts, read_yaml, to_dict, validate
  from semrec.pipeline import RunConfig

  def flags(cfg):
    if dataset:
      cfg.data.type = dataset
    if interactions:
      cfg.data.interactions = interactions
    if items:
      cfg.data.items = items
    if text_columns:
      cfg.data.text_columns = tuple(c.strip() for c in text_columns.split(",") if c.strip())
    if quality_columns:
      cfg.data.quality_columns = tuple(c.strip() for c in quality_columns.split(",") if c.strip())
    if seed is not None:
      cfg.seed = seed
    if split:
      cfg.data.split = split
    if no_exclude_history:
      cfg.data.exclude_history = False
    return cfg

  cfg = flags(load_yaml(RunConfig, config_path) if config_path else RunConfig())
  if cfg.data.type == "generic" and not (cfg.data.interactions and cfg.data.items):
    raise click.UsageError("--dataset generic needs --interactions and --items")
  if quick:
    raw = read_yaml(config_path) if config_path else {}
    preset = to_dict(cfg.quick())
    kept = _overridden(preset, raw)
    cfg = flags(from_dict(RunConfig, merge_dicts(preset, raw)))
    for path, value in kept:
      click.echo(f"Note: --quick keeps {path}={value!r} from {config_path} (the file wins over the preset)", err=True)
  validate(cfg)
  cfg.validate()
  return cfg


def _overridden(preset: dict, raw: dict, prefix: str = "") -> list:
  """[(dotted key, file value)] where the config file sets a value the --quick preset changes."""
  out = []
  for k, v in raw.items():
    if isinstance(v, dict) and isinstance(preset.get(k), dict):
      out += _overridden(preset[k], v, f"{prefix}{k}.")
    elif k in preset and preset[k] != v and not isinstance(v, dict):
      out.append((f"{prefix}{k}", v))
  return out


def _run_options(f):
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
      click.option("--text-columns", default=None, help="Generic format: comma-separated item text columns."),
      click.option("--quality-columns", default=None, help="Generic format: comma-separated numeric quality columns."),
      click.option("--seed", type=int, default=None, help="Global seed."),
      click.option("--split", type=click.Choice(["temporal", "leave_one_out", "cold_items"]), default=None,
                   help="Retrieval evaluation protocol (docs/protocols.md); default temporal."),
      click.option("--no-exclude-history", is_flag=True,
                   help="Keep each user's earlier items in the retrieval ranking (excluded by default)."),
      click.option("--quick", is_flag=True, help="Tiny sizes and epochs (smoke test of the whole job); values set "
                   "in --config win over these presets."),
      click.option("--force", is_flag=True, help="Recompute the stage(s) even if finished."),
  ]
  for o in reversed(opts):
    f = o(f)
  return f


def _open_run(run_dir, stages, **options):
  """The run directory, after the config and the data were checked against each other (before any stage).

  ``options`` are the config flags of ``_run_options`` (see ``_build_config``).
  """
  from semrec.pipeline import Run, preflight, write_config
  cfg = _build_config(**options)
  run = Run(cfg, run_dir or _default_run_dir(cfg, options["quick"]))
  preflight(run, stages)
  write_config(run)
  return run


def _default_run_dir(cfg, quick: bool) -> str:
  return os.path.join("runs", cfg.data.type + ("-quick" if quick else ""))


def _stage_command(name: str, stage: str, help_text: str):
  @_run_options
  def cmd(run_dir, force, **options):
    from semrec.pipeline import STAGES, run_stages
    run = _open_run(run_dir, STAGES.dependencies(stage) + [stage], **options)
    run_stages(run, STAGES.dependencies(stage), STAGES.registry)
    run_stages(run, [stage], STAGES.registry, force=force)
    click.echo(f"{stage} finished: {run.path(stage)}")
  cmd.__doc__ = help_text
  return click.command(name=name, help=help_text)(cmd)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semrec")
@click.option("--debug", is_flag=True, help="On an error, print the full traceback before the `Error:` line.")
def main(debug):
  """semrec: content-derived item IDs (cluster IDs, Semantic IDs) for TFRS retrieval and ranking."""
  _show_warnings()


@main.command("run")
@_run_options
def run_cmd(run_dir, force, **options):
  """The whole job: encode -> SIDs -> retrieval comparison -> index -> ranker comparison -> export -> verify."""
  from semrec.pipeline import STAGE_ORDER, run_all
  run = _open_run(run_dir, STAGE_ORDER, **options)
  summary = run_all(run, force=force)
  click.echo(summary)


main.add_command(_stage_command("encode", "encode", "Encode item content into the embedding store."))
main.add_command(_stage_command("train-retrieval", "retrieval",
                                "Train the two-tower retriever for every item-tower configuration; warm/cold recall."))
main.add_command(_stage_command("index", "index", "Build the ScaNN / brute-force index over candidate embeddings."))
main.add_command(_stage_command("train-ranker", "ranking",
                                "Train the SID ranker for every representation mode (sequential training, AUC)."))
main.add_command(_stage_command("export", "export", "Export every served artefact in TF Serving layout."))


@main.command("evaluate")
@_run_options
def evaluate_cmd(run_dir, force, **options):
  """Collect the metrics of a run's finished stages into metrics.json + report.md and print the table.

  Without --config it uses the config the run was made with (<run-dir>/config.yaml) and leaves it as is.
  """
  from semrec.config import load_yaml
  from semrec.pipeline import STAGE_ORDER, Run, RunConfig, write_report
  cfg = _build_config(**options)
  run_dir = run_dir or _default_run_dir(cfg, options["quick"])
  saved = os.path.join(run_dir, "config.yaml")
  if not options["config_path"] and os.path.isfile(saved):
    cfg = load_yaml(RunConfig, saved)
  run = Run(cfg, run_dir)
  results = {s: run.stage_result(s) for s in STAGE_ORDER if run.is_done(s)}
  if not results:
    raise click.ClickException(f"no finished stage in {run.run_dir}: run `semrec run` first")
  for s in results:
    stale = run.stale_sections(s)
    if stale:
      click.echo(f"Warning: stage {s!r} ran with a different config ({', '.join(stale)}); "
                 "`semrec run` with this config recomputes it", err=True)
  click.echo(write_report(run, results))
  click.echo(f"report: {run.path('report.md')}")


@main.group("sid")
def sid_group():
  """Cluster IDs and Semantic IDs."""


sid_group.add_command(_stage_command("train", "sid", "Fit k-means cluster IDs and the RQ-VAE; print SID health."))
sid_group.add_command(_stage_command("assign", "sid-assign",
                                     "Assign SIDs to every item of the embedding store with the frozen model."))


@main.group("experiment")
def experiment_group():
  """Comparison experiments."""


experiment_group.add_command(_stage_command("ranking", "ranking",
                                            "The ranking representation sweep (modes x table budgets x history)."))
experiment_group.add_command(_stage_command("retrieval", "retrieval",
                                            "The retrieval item-tower comparison (with/without quality vector)."))


@main.command("verify-export")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--structure-only", is_flag=True,
              help="Only check files against the manifests (no fresh-process load, no saved_model_cli).")
@click.option("--no-saved-model-cli", is_flag=True, help="Skip `saved_model_cli show` on each model.")
def verify_export_cmd(export_dir, structure_only, no_saved_model_cli):
  """Load every SavedModel under EXPORT_DIR in a fresh process, replay its warm-up requests against the
  outputs stored at export time, and run saved_model_cli on it. Exits 1 on any problem."""
  from semrec.export import verify_export, verification_table
  report = verify_export(export_dir, load=not structure_only,
                         run_saved_model_cli=not (structure_only or no_saved_model_cli))
  click.echo(verification_table(report))
  if not report.clean:
    problems = report.all_errors + report.all_warnings
    raise click.ClickException(f"verify-export: {len(report.all_errors)} error(s), {len(report.all_warnings)} "
                               f"warning(s) in {report.base_dir}: {problems[0]}")


if __name__ == "__main__":
  main()
