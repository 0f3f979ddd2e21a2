"""The verify stage: every export loaded and replayed in a fresh process; the models.config it covers."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from semrec.atomic import write_text as atomic_write_text
from semrec.pipeline.artefacts import export_dir

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_verify(run: Run) -> dict:
  """Writes models.config, then loads every export in a fresh process, replays its warm-up requests and runs
  saved_model_cli. Every model a stage of this run exported must be there (a deleted folder is an error)."""
  from semrec.export import verify_export, write_serving_configs
  write_serving_configs(export_dir(run), run.config.export.base_path_prefix or None)
  report = verify_export(export_dir(run), run_saved_model_cli=run.config.export.verify_saved_model_cli)
  table = report.to_markdown()
  atomic_write_text(run.path("export", "verify.md"), table)
  print(table)
  errors = _missing_exports(run) + report.all_errors
  if errors:
    raise RuntimeError("export verification failed: " + "; ".join(errors))
  return {"ok": report.ok, "models": [{"name": m.name, "version": m.version, "ok": m.ok,
                                       "needs_scann_ops": m.needs_scann_ops, "max_abs_diff": m.max_abs_diff}
                                      for m in report.models]}


def _stage_exports(run: Run) -> dict:
  """{"<name>/<version>": stage} of every model the finished stages of this run exported."""
  out = {}
  for stage, get in (("retrieval", lambda r: list(r["production"]["exports"].values())),
                     ("ranking", lambda r: [r["production"]["export"]] + ([r["production"]["cascade_export"]]
                                                                          if "cascade_export" in r["production"] else [])),
                     # a skipped sweep (implicit feedback: no labelled impressions) exports nothing
                     ("ranking-sweep", lambda r: [r["production"]["export"]] if "production" in r else []),
                     ("index", lambda r: [r["searcher_export"]]),
                     ("export", lambda r: [r["sid_assigner"]])):
    if run.is_done(stage):
      for path in get(run.stage_result(stage)):
        out[os.path.join(*os.path.normpath(path).split(os.sep)[-2:])] = stage
  return out


def _missing_exports(run: Run) -> list:
  return [f"{rel} (exported by the {stage} stage) is missing from {export_dir(run)}: rerun that stage with --force"
          for rel, stage in sorted(_stage_exports(run).items()) if not os.path.isdir(os.path.join(export_dir(run), rel))]


def verify_changes(run: Run) -> Optional[str]:
  """Why a finished verification no longer describes the export folder (a model it reported is missing,
  altered or superseded by a new version, or a model a stage exported is missing), or None."""
  from semrec.export import verify_export
  then = {(m["name"], m["version"]) for m in run.stage_result("verify").get("models", [])}
  report = verify_export(export_dir(run), load=False, run_saved_model_cli=False, progress=False)
  now = {(m.name, m.version) for m in report.models if m.ok}
  if then != now or _missing_exports(run):
    gone = sorted(then - now)
    return ("the exports changed since they were verified" +
            (f" ({', '.join(f'{n} v{v}' for n, v in gone)} missing or altered)" if gone else ""))
  return None
