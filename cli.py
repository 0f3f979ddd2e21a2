"""The `semrec` command line. Flags are parsed here only: each command builds a config and calls library code.

Every stage command works on a run directory (``--run-dir``, default ``runs/<dataset>``) and resumes
finished stages; ``semrec run`` chains all of them and writes the report.
"""
from __future__ import annotations

import os
import sys

import click


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


def _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick):
  from semrec.config import load_yaml
  from semrec.pipeline import RunConfig
  cfg = load_yaml(RunConfig, config_path) if config_path else RunConfig()
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
  if cfg.data.type == "generic" and not (cfg.data.interactions and cfg.data.items):
    raise click.UsageError("--dataset generic needs --interactions and --items")
  if seed is not None:
    cfg.seed = seed
  if quick:
    cfg = cfg.quick()
  cfg.validate()
  return cfg


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
      click.option("--quick", is_flag=True, help="Tiny sizes and epochs (smoke test of the whole job)."),
      click.option("--force", is_flag=True, help="Recompute the stage(s) even if finished."),
  ]
  for o in reversed(opts):
    f = o(f)
  return f


def _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick):
  from semrec.pipeline import Run, write_config
  cfg = _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick)
  run = Run(cfg, run_dir or _default_run_dir(cfg, quick))
  write_config(run)
  return run


def _default_run_dir(cfg, quick: bool) -> str:
  return os.path.join("runs", cfg.data.type + ("-quick" if quick else ""))


def _stage_command(name: str, stage: str, help_text: str):
  @_run_options
  def cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, force):
    from semrec.pipeline import STAGES, run_stages
    with _UserErrors():
      run = _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick)
      run_stages(run, STAGES.dependencies(stage), STAGES.registry)
      run_stages(run, [stage], STAGES.registry, force=force)
    click.echo(f"{stage} finished: {run.path(stage)}")
  cmd.__doc__ = help_text
  return click.command(name=name, help=help_text)(cmd)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semrec")
def main():
  """semrec: content-derived item IDs (cluster IDs, Semantic IDs) for TFRS retrieval and ranking."""


@main.command("run")
@_run_options
def run_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, force):
  """The whole job: encode -> SIDs -> retrieval comparison -> index -> ranker comparison -> export -> verify."""
  from semrec.pipeline import run_all
  with _UserErrors():
    run = _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick)
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
def evaluate_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, force):
  """Collect the metrics of a run's finished stages into metrics.json + report.md and print the table.

  Without --config it uses the config the run was made with (<run-dir>/config.yaml) and leaves it as is.
  """
  from semrec.config import load_yaml
  from semrec.pipeline import STAGE_ORDER, Run, RunConfig, write_report
  with _UserErrors():
    cfg = _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick)
    run_dir = run_dir or _default_run_dir(cfg, quick)
    saved = os.path.join(run_dir, "config.yaml")
    if not config_path and os.path.isfile(saved):
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
  sys.exit(0 if report.clean else 1)


if __name__ == "__main__":
  main()
