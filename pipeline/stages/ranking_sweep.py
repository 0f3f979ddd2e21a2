"""The ranking representation sweep (`semrec experiment ranking`): the SID ranker trained on labelled impressions
for every representation mode and table budget (sequential protocol, AUC overall / cold), then that ranker's
production configuration, exported as ``impression_ranker``. Not part of `semrec run`, whose ranking stage is the
cascade (``semrec.pipeline.stages.ranking``)."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.pipeline.artefacts import export_dir, item_features

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_ranking_sweep(run: Run) -> dict:
  """The ranking representation sweep, then the production impression ranker (exported for TF Serving)."""
  from semrec.ranking import prepare_sequential, run_ranking_experiment, train_ranker
  from semrec.ranking.experiment import MODE_COMPONENTS
  from semrec.sid import ItemRepresentationConfig
  cfg = run.config.ranking
  inter = run.dataset.interactions
  if not (inter["label"] == 0).any():
    # Implicit feedback (every row a positive, docs/protocols.md): the ranker learns P(label | impression) and
    # has no negative impressions to learn from, so the stage records why it did not train.
    reason = ("skipped: implicit feedback (every interaction is a positive, no negative impressions); the ranker "
              "needs labelled impressions. Retrieval is trained and evaluated as usual.")
    from semrec.atomic import write_text
    write_text(os.path.join(run.stage_dir("ranking-sweep"), "ranking_experiment.md"), reason + "\n")
    print(f"[semrec] ranking: {reason}")
    return {"skipped": reason}
  feats, table = item_features(run)
  L, K = table.codes.shape[1], table.codebook_size
  tasks = tuple(t for t in cfg.ranker.tasks if t in inter.columns)  # e.g. no "like" column: label only
  base = dataclasses.replace(cfg.ranker, seed=run.config.seed, tasks=tasks)
  data = prepare_sequential(run.dataset.interactions, feats, cfg.num_periods, base.history_length, base.tasks)
  result = run_ranking_experiment(run.dataset, feats, modes=cfg.modes, budgets=cfg.budgets,
                                  seeds=tuple(run.config.seed + s for s in range(cfg.num_seeds)),
                                  use_history=cfg.use_history, codebook_size=K, num_periods=cfg.num_periods,
                                  base_config=base, embedding_dim=cfg.embedding_dim, data=data,
                                  output_dir=run.stage_dir("ranking-sweep"),
                                  checkpoint_dir=os.path.join(run.stage_dir("ranking-sweep"), "checkpoint"))
  if result.files.get("png"):
    import shutil
    shutil.copyfile(result.files["png"], run.path("plots", "ranking_auc_by_mode.png"))
  print(result.markdown())

  # The production ranker: the configured mode at the largest budget, with history.
  rep = ItemRepresentationConfig(modes=MODE_COMPONENTS[cfg.production_mode], combiner="sum",
                                 embedding_dim=cfg.embedding_dim, num_levels=L, codebook_size=K,
                                 table_budget=cfg.production_budget, hash_buckets=cfg.production_budget,
                                 content_dim=feats.arrays["content"].shape[1] if cfg.production_mode == "dense" else 0)
  prod = train_ranker(dataclasses.replace(base, item_representation=rep, use_history=True), feats,
                      run.dataset.interactions, num_periods=cfg.num_periods, data=data, progress=False)
  example = prod.featurizer.features(data.eval_examples.take(np.arange(min(8, len(data.eval_examples)))))
  from semrec.export import export_ranker
  exported = export_ranker(export_dir(run), prod.model, example, name="impression_ranker", metrics=prod.metrics,
                           data_fingerprint=run.data_fingerprint)
  summary = result.summary
  return {
      "summary": summary.to_dict("records"),
      "split": result.split,
      "experiment_seconds": round(result.seconds, 1),
      "production": {"mode": cfg.production_mode, "budget": cfg.production_budget, "metrics": prod.metrics,
                     "export": exported.path},
      "files": {k: str(v) for k, v in result.files.items()},
  }
