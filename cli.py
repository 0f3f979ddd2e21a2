"""The `semrec` command line. Flags are parsed here only: each command builds a config and calls library code.

Every stage command works on a run directory (``--run-dir``, default ``runs/<dataset>``) and resumes
finished stages; ``semrec run`` chains all of them and writes the report.
"""
from __future__ import annotations

import os
import sys

import click

from semrec.cli_common import (_build_config, _Cli, _configure_output, _default_run_dir, _open_run,  # noqa: F401
                               _run_options, _show_warnings, _UserErrors, _verbose_option)


def _stage_command(name: str, stage: str, help_text: str):
  @_run_options
  def cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
          no_exclude_history, force):
    from semrec.pipeline import STAGES, run_stages
    with _UserErrors():
      run = _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                      split, no_exclude_history, stages=STAGES.dependencies(stage) + [stage])
      run_stages(run, STAGES.dependencies(stage), STAGES.registry)
      run_stages(run, [stage], STAGES.registry, force=force)
    click.echo(f"{stage} finished: {run.path(stage)}")
  cmd.__doc__ = help_text
  return click.command(name=name, help=help_text)(cmd)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semrec")
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow / absl logs and Python warnings (hidden by default).")
@click.option("--debug", is_flag=True, help="On an error, print the full traceback before the `Error:` line.")
def main(verbose, debug):
  """semrec: content-derived item IDs (cluster IDs, Semantic IDs) for TFRS retrieval and ranking."""
  _configure_output(verbose)
  _show_warnings()


@main.command("run")
@_run_options
def run_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
            no_exclude_history, force):
  """The whole job: encode -> SIDs -> retrieval comparison -> index -> two-stage ranking -> export -> verify."""
  from semrec.pipeline import STAGE_ORDER, run_all
  with _UserErrors():
    run = _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                    split, no_exclude_history, stages=STAGE_ORDER)
    summary = run_all(run, force=force)
  click.echo(summary)


main.add_command(_stage_command("encode", "encode", "Encode item content into the embedding store."))
main.add_command(_stage_command("train-retrieval", "retrieval",
                                "Train the two-tower retriever for every item-tower configuration; warm/cold recall."))
main.add_command(_stage_command("index", "index", "Build the ScaNN / brute-force index over candidate embeddings."))
main.add_command(_stage_command("train-ranker", "ranking",
                                "Two-stage: candidates from every retriever -> the SID ranker; final-list metrics."))
main.add_command(_stage_command("export", "export", "Export every served artefact in TF Serving layout."))


@main.command("evaluate")
@_run_options
def evaluate_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
                 no_exclude_history, force):
  """Collect the metrics of a run's finished stages into metrics.json + report.md and print the table.

  Without --config it uses the config the run was made with (<run-dir>/config.yaml) and leaves it as is.
  """
  from semrec.config import load_yaml
  from semrec.pipeline import STAGE_ORDER, Run, RunConfig, write_report
  with _UserErrors():
    cfg = _build_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
                        no_exclude_history)
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


experiment_group.add_command(_stage_command("ranking", "ranking-sweep",
                                            "The ranking representation sweep on labelled impressions (AUC)."))
experiment_group.add_command(_stage_command("retrieval", "retrieval",
                                            "The retrieval item-tower comparison (with/without quality vector)."))


@main.group("config")
def config_group():
  """The run config (docs/config.md)."""


@config_group.command("show")
@_run_options
def config_show_cmd(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick, split,
                    no_exclude_history, run_dir=None, force=False):
  """Print the effective config of `semrec run` with these options: every field, its value and where the value
  comes from (default, quick, file, or the flag). Checks it as `semrec run` does; runs nothing."""
  from semrec.cli_common import _effective_config
  eff = _effective_config(config_path, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                          split, no_exclude_history)
  for note in eff.notes:
    click.echo(f"Note: {note}", err=True)
  click.echo(eff.table())
  eff.validate()


config_show_cmd.params = [p for p in config_show_cmd.params if p.name not in ("run_dir", "force")]  # no run here


@main.command("verify-export")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--structure-only", is_flag=True,
              help="Only check files against the manifests (no fresh-process load, no saved_model_cli).")
@click.option("--no-saved-model-cli", is_flag=True, help="Skip `saved_model_cli show` on each model.")
@_verbose_option
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


# ----------------------------------------------------------------------------------------------------
# Scale-out (docs/scale.md): Beam batch jobs with --runner, tf.distribute training, the local launcher.
# ----------------------------------------------------------------------------------------------------
def _runner_options(f):
  from semrec.beam.options import RUNNERS
  opts = [
      click.option("--runner", type=click.Choice(RUNNERS), default="inprocess", show_default=True,
                   help="inprocess (no Beam) | direct (local FnApiRunner) | dataflow | flink | spark."),
      click.option("--num-workers", type=int, default=1, show_default=True,
                   help="direct runner: worker processes (> 1 = multi_processing)."),
      click.option("--beam-option", "beam_options", multiple=True, metavar="KEY=VALUE",
                   help="Repeatable; passed to Beam PipelineOptions (project=..., setup_file=..., flink_master=...)."),
  ]
  for o in reversed(opts):
    f = o(f)
  return f


@main.group("batch")
def batch_group():
  """Batch jobs over item shards, in-process or as Apache Beam pipelines (--runner)."""


@batch_group.command("encode")
@_run_options
@_runner_options
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Store directory (default <run-dir>/encode/store, where the encode stage looks).")
@click.option("--shard-size", type=int, default=1024, show_default=True, help="Items per shard (one Beam task).")
def batch_encode_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                     split, no_exclude_history, force, runner, num_workers, beam_options, store, shard_size):
  """Encode item content into the sharded embedding store (resumable; same files on every runner; --force
  re-encodes every shard from the items)."""
  from semrec.encoders import build_encoder, encode_corpus
  with _UserErrors():
    run = _open_run(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed, quick,
                    split, no_exclude_history, stages=("encode",))
    cfg = run.config.encoder_config()
    store = store or run.path("encode", "store")
    if runner == "inprocess":
      encode_corpus(run.dataset, build_encoder(cfg), store, shard_size=shard_size, overwrite=force)
    else:
      from semrec.beam import encode_pipeline
      encode_pipeline(run.dataset, cfg, store, shard_size=shard_size, overwrite=force, runner=runner,
                      num_workers=num_workers, beam_options=beam_options)
  click.echo(f"embedding store: {store}")


@batch_group.command("assign")
@click.option("--store", type=click.Path(exists=True, file_okay=False), required=True, help="Embedding store.")
@click.option("--sid-model", type=click.Path(exists=True, file_okay=False), required=True, help="Saved SID model.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output dir (codes shards + table/).")
@click.option("--centroids", multiple=True, metavar="NAME=FILE.npy",
              help="Repeatable: cluster-ID centroids to assign too (e.g. k100=<run>/sid/centroids_k100.npy).")
@click.option("--suffix/--no-suffix", default=True, show_default=True, help="TIGER uniqueness suffix.")
@click.option("--shard-size", type=int, default=65536, show_default=True)
@_runner_options
def batch_assign_cmd(store, sid_model, out, centroids, suffix, shard_size, runner, num_workers, beam_options):
  """Assign SIDs (and cluster IDs) to every item of a store with the frozen SID model."""
  import numpy as np
  cents = {}
  for c in centroids:
    if "=" not in c:
      raise click.UsageError(f"--centroids {c!r}: expected NAME=FILE.npy")
    name, path = c.split("=", 1)
    cents[name] = np.load(path)
  with _UserErrors():
    if runner == "inprocess":
      from semrec.beam.inprocess import cluster_layers
      from semrec.encoders import EmbeddingStore
      from semrec.sid import SidModel, assign_sids
      table = assign_sids(EmbeddingStore(store), SidModel.load(sid_model).assigner, out, shard_size=shard_size,
                          suffix=suffix, cluster_layers=cluster_layers(cents))
    else:
      from semrec.beam import assign_pipeline
      table = assign_pipeline(store, sid_model, out, shard_size=shard_size, suffix=suffix, cluster_centroids=cents,
                              runner=runner, num_workers=num_workers, beam_options=beam_options)
  click.echo(f"SID table ({len(table)} items, unique before suffix {table.unique_ratio():.3f}): {out}/table")


@batch_group.command("kmeans")
@click.option("--store", type=click.Path(exists=True, file_okay=False), required=True, help="Embedding store.")
@click.option("-k", "k", type=int, required=True, help="Clusters.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Centroids .npy.")
@click.option("--sample-size", type=int, default=None, help="Fit k-means on this many sampled items.")
@click.option("--refine-steps", type=int, default=0, show_default=True, help="Full-data Lloyd passes after the fit.")
@click.option("--seed", type=int, default=0)
@_runner_options
def batch_kmeans_cmd(store, k, out, sample_size, refine_steps, seed, runner, num_workers, beam_options):
  """k-means centroids of a store: fit on a sample, then optional full-data Lloyd refinement."""
  import numpy as np
  with _UserErrors():
    if runner == "inprocess":
      from semrec.encoders import EmbeddingStore
      from semrec.sid import fit_kmeans, refine_kmeans
      x = EmbeddingStore(store).load().embeddings
      cents = refine_kmeans(x, fit_kmeans(x, k, seed=seed, sample_size=sample_size), refine_steps)
    else:
      from semrec.beam import fit_kmeans_pipeline
      cents = fit_kmeans_pipeline(store, k, seed=seed, sample_size=sample_size, refine_steps=refine_steps,
                                  runner=runner, num_workers=num_workers, beam_options=beam_options)
  from semrec.atomic import save_npy
  save_npy(out, cents)
  click.echo(f"centroids [{cents.shape[0]}, {cents.shape[1]}]: {out}")


@batch_group.command("rqkmeans")
@click.option("--store", type=click.Path(exists=True, file_okay=False), required=True, help="Embedding store.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="SID model directory (SidModel.save).")
@click.option("--levels", type=int, default=3, show_default=True, help="L, code levels.")
@click.option("--codebook-size", type=int, default=256, show_default=True, help="K, codes per level.")
@click.option("--sample-size", type=int, default=65536, show_default=True,
              help="Fit each level on this many sampled items (0 = all).")
@click.option("--refine-steps", type=int, default=0, show_default=True,
              help="Full-data Lloyd passes per level after its sample fit.")
@click.option("--normalization", default="whiten", show_default=True, help="center | standardize | whiten | none.")
@click.option("--whiten-dim", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0)
@_runner_options
def batch_rqkmeans_cmd(store, out, levels, codebook_size, sample_size, refine_steps, normalization, whiten_dim, seed,
                       runner, num_workers, beam_options):
  """Fit an RQ-KMeans SID model level by level (then `semrec batch assign --sid-model OUT` gives the codes)."""
  from semrec.sid import RQVAEConfig
  with _UserErrors():
    cfg = RQVAEConfig(mode="rqkmeans", num_levels=levels, codebook_size=codebook_size,
                      kmeans_sample_size=sample_size or None, kmeans_refine_steps=refine_steps,
                      normalization=normalization, whiten_dim=whiten_dim, seed=seed)
    if runner == "inprocess":
      from semrec.encoders import EmbeddingStore
      from semrec.sid import train_sid_model
      contents = EmbeddingStore(store).load()
      model = train_sid_model(contents.embeddings, cfg, item_ids=contents.item_ids, progress=False)
      model.save(out)
    else:
      from semrec.beam import fit_rqkmeans_pipeline
      model = fit_rqkmeans_pipeline(store, cfg, runner=runner, num_workers=num_workers, beam_options=beam_options,
                                    out_dir=out)
  click.echo(f"RQ-KMeans SID model (L={model.num_levels}, K={model.codebook_size}): {out}")


@batch_group.command("embed")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Candidate-tower SavedModel version dir (e.g. <run>/export/models/candidate_tower/1).")
@click.option("--features", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz with item_ids [N] and one [N, ...] array per signature input.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help=".npz with item_ids and embeddings.")
@_runner_options
def batch_embed_cmd(model_dir, features, out, runner, num_workers, beam_options):
  """Candidate embeddings through the exported candidate tower (RunInference on Beam runners)."""
  import numpy as np
  with np.load(features, allow_pickle=False) as f:
    feats = {k: f[k] for k in f.files}
  ids = feats.get("item_ids")
  if ids is None:
    raise click.UsageError(f"{features}: no item_ids array")
  with _UserErrors():
    if runner == "inprocess":
      from semrec.beam.inprocess import embed_in_process
      emb = embed_in_process(model_dir, ids, feats, out)
    else:
      from semrec.beam import embed_pipeline
      emb = embed_pipeline(model_dir, ids, feats, out, runner=runner, num_workers=num_workers,
                           beam_options=beam_options)
  click.echo(f"embeddings [{emb.shape[0]}, {emb.shape[1]}]: {out}")


@main.command("launch-workers", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--num-workers", type=int, default=2, show_default=True, help="Worker processes.")
@click.option("--num-ps", type=int, default=0, show_default=True,
              help="Parameter servers (> 0: a ParameterServerStrategy cluster with a chief).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="Per-task logs (default: inherit).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def launch_workers_cmd(num_workers, num_ps, log_dir, command):
  """Run COMMAND once per task of a localhost tf.distribute cluster (TF_CONFIG set per task, 127.0.0.1 ports).

  Example: semrec launch-workers -n 2 -- semrec train-retrieval --strategy mwms --quick
  """
  from semrec.towers.distributed import launch_workers
  sys.exit(launch_workers(list(command), num_workers=num_workers, num_ps=num_ps, log_dir=log_dir))


def _strategy_run_dir(stage: str, task_id: int, chief: bool, kwargs: dict):
  """The run dir a worker trains in: the run's own for the chief, a scratch ``<run-dir>/.worker-<i>`` for the
  others (their artefacts are discarded), with the finished prerequisite stages linked in. Prerequisites must be
  finished first: they are not recomputed under a strategy."""
  from semrec.pipeline import STAGES
  names = ("config_path", "dataset", "interactions", "items", "text_columns", "quality_columns", "seed", "quick")
  cfg = _build_config(*(kwargs[n] for n in names))
  run_dir = kwargs["run_dir"] or _default_run_dir(cfg, kwargs["quick"])
  from semrec.pipeline import Run
  run = Run(cfg, run_dir)
  # Unfinished or stale prerequisites would be (re)computed by every worker, through the links too.
  missing = [d for d in STAGES.dependencies(stage) if not run.is_done(d) or run.stale_sections(d)]
  if missing:
    raise click.ClickException(f"--strategy trains only the {stage!r} stage: finish (or refresh) {missing} in "
                               f"{run_dir} first "
                               "(e.g. `semrec sid assign` or `semrec run` without --strategy)")
  if chief:
    return run_dir
  scratch = os.path.join(run_dir, f".worker-{task_id}")
  os.makedirs(scratch, exist_ok=True)
  for d in STAGES.dependencies(stage):
    link = os.path.join(scratch, d)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(os.path.join(run_dir, d)), link)
  return scratch


_SCOPES = []


def _with_strategy(cmd: click.Command, stage: str) -> click.Command:
  """Adds --strategy to a training stage command; "none" runs the command exactly as before."""
  inner = cmd.callback

  def callback(strategy, **kwargs):
    if strategy == "none":
      return inner(**kwargs)
    if strategy == "ps":
      raise click.ClickException(
          "--strategy ps: the stage trains with model.fit(dataset), which ParameterServerStrategy does not accept "
          "(it needs a DatasetCreator and steps_per_epoch); train the retriever under PS as "
          "benchmarks/dist_retriever.py does (docs/scale.md, 'ParameterServerStrategy')")
    from semrec.towers.distributed import make_strategy, task_info
    task_type, task_id, chief = task_info()
    kwargs["run_dir"] = _strategy_run_dir(stage, task_id, chief, kwargs)
    s = make_strategy(strategy)  # before any other TF op (MWMS)
    # The scope stays entered until the process ends: leaving it after a whole stage raised
    # "IndexError: pop from empty list" from TF's scope stack (seen with MWMS x2 on the retrieval stage).
    _SCOPES.append(s.scope())  # held: a collected scope object would leave the scope
    _SCOPES[-1].__enter__()
    return inner(**kwargs)

  cmd.params.append(click.Option(["--strategy"], type=click.Choice(["none", "mirrored", "mwms", "ps"]),
                                 default="none", show_default=True,
                                 help="tf.distribute strategy (mwms/ps: start with `semrec launch-workers`); "
                                      "trains this stage only, its prerequisites must be finished."))
  cmd.callback = callback
  return cmd


_with_strategy(main.commands["train-retrieval"], "retrieval")
_with_strategy(main.commands["train-ranker"], "ranking")


if __name__ == "__main__":
  main()
