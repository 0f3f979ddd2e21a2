"""The verify stage: every export loaded and replayed in a fresh process."""
from __future__ import annotations

from typing import TYPE_CHECKING

from semrec.atomic import write_text as atomic_write_text
from semrec.pipeline.artefacts import export_dir

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_verify(run: Run) -> dict:
  """Loads every export in a fresh process, replays its warm-up requests, runs saved_model_cli."""
  from semrec.export import verify_export
  report = verify_export(export_dir(run), run_saved_model_cli=run.config.export.verify_saved_model_cli)
  table = report.to_markdown()
  atomic_write_text(run.path("export", "verify.md"), table)
  print(table)
  if not report.ok:
    raise RuntimeError("export verification failed:\n" + "\n".join(report.all_errors))
  return {"ok": report.ok, "models": [{"name": m.name, "version": m.version, "ok": m.ok,
                                       "needs_scann_ops": m.needs_scann_ops, "max_abs_diff": m.max_abs_diff}
                                      for m in report.models]}
