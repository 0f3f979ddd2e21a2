"""The ranking stage: the two-stage recommender on the run's split (every trained retriever and the non-learned
sources -> merged candidates -> the SID ranker trained on them), measured as the final list next to each
retriever alone and the baselines; the cascade ranker is exported. Wiring only: the logic is
``semrec.ranking.run_two_stage`` (the function ``benchmarks/bench_cascade.py`` calls)."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.pipeline.artefacts import export_dir

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def retrieval_comparison(run: Run) -> tuple:
  """(comparison result, ComparisonConfig) of the finished retrieval stage, resumed from its checkpoints (no
  variant is retrained)."""
  from semrec.pipeline.artefacts import item_features
  from semrec.pipeline.stages.retrieval import sid_spm
  from semrec.towers import run_retrieval_comparison
  rcfg = run.config.retrieval
  cmp = dataclasses.replace(rcfg.comparison, seed=run.config.seed)
  feats, table = item_features(run)
  clusters = max(table.cluster_ids.values(), key=lambda c: int(c.max())) if table.cluster_ids else None
  res = run_retrieval_comparison(run.dataset, run.split, feats.item_ids, feats.arrays["content"], cmp,
                                 sid_codes=table.codes, sid_codebook_size=table.codebook_size, cluster_ids=clusters,
                                 spm=sid_spm(cmp, run.split, table, feats.item_ids),
                                 output_dir=run.stage_dir("retrieval"), verbose=False)
  return res, cmp


def stage_ranking(run: Run) -> dict:
  """Candidate sources -> merge -> cascade ranker on the run's split; the final-list table and plot; the
  cascade ranker exported (TF Serving layout, ``cascade_ranker``)."""
  from semrec.atomic import write_json, write_text
  from semrec.ranking import run_two_stage, two_stage_table
  from semrec.report import markdown_table
  cfg = run.config.ranking
  res, cmp = retrieval_comparison(run)
  out_dir = run.stage_dir("ranking")
  two = run_two_stage(run.split, res, cmp, run.stage_dir("retrieval"), cfg.cascade(run.config.seed),
                      compare_modes=cfg.compare_modes)
  rows = two_stage_table(two)
  markdown = markdown_table(rows)
  write_text(os.path.join(out_dir, "two_stage.md"), markdown + "\n")
  plot_final_list(two, run.path("plots", "final_list.png"))
  print(markdown)
  cascade = two["cascade"]
  stage = two["test_stage"]
  from semrec.ranking.candidates import MergedCandidates
  m, n = stage.merged, min(2, len(stage.queries))  # the merged candidates of the same first n queries
  ex = cascade.cascade_featurizer.examples(MergedCandidates(m.rows[:n], m.ranks[:n], m.scores[:n], m.sources),
                                           stage.queries.subset(np.arange(n)))
  from semrec.export import export_ranker
  exported = export_ranker(export_dir(run), cascade.model, cascade.featurizer.features(ex.take(np.arange(min(8, len(ex))))),
                           name="cascade_ranker", data_fingerprint=run.data_fingerprint,
                           metrics={"final": two["final"][cascade.config.mode]["overall"]},
                           extra={"cascade_sources": list(cascade.sources),
                                  "context_features": list(_context_names(cascade))})
  # The whole chain (sources -> merge -> ranker -> top-k) for semrec.export.CascadeServer.
  from semrec.export import export_cascade
  cascade_export = export_cascade(export_dir(run), cascade, run.split, res["item_side"].features,
                                  two["retrievers_trained"], two["knn_decay"], fresh_scorer=two["fresh_scorer"],
                                  sources=two["serve_sources"],
                                  data_fingerprint=run.data_fingerprint,
                                  metrics={"final": two["final"][cascade.config.mode]["overall"]})
  write_json(os.path.join(out_dir, "two_stage.json"), {
      k: v for k, v in two.items()
      if k not in ("cascade", "cascades", "test_stage", "retrievers_trained", "serve_sources")})
  main = two["final"][cascade.config.mode]
  best = two["best_retriever"]
  return {"final": two["final"], "best_retriever": best, "best_retriever_metrics": two["retrievers"][best],
          "served_retriever": res["served"]["variant"], "candidate_recall": two["candidate_recall"],
          "sources": list(cascade.sources), "history": two["history"], "seconds_detail": two["seconds"],
          "headline": {"final": main, "best": two["retrievers"][best],
                       "content_knn": two["baselines"].get("content_knn"), "transition": two["baselines"].get("transition")},
          "production": {"mode": cascade.config.mode, "export": exported.path, "best_epoch": cascade.best_epoch,
                         "blend": {"source": cascade.blend_source, "weight": cascade.blend_weight},
                         "cascade_export": cascade_export.path}}


def _context_names(cascade) -> list:
  from semrec.ranking import CONTEXT_COLUMNS
  from semrec.ranking.cascade import cascade_feature_names
  return list(CONTEXT_COLUMNS) + cascade_feature_names(cascade.sources)


def plot_final_list(two: dict, path: str):
  """Bars of Recall@10 / NDCG@10 overall and Recall@10 cold: the final list(s), the best retrievers, the
  baselines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from semrec.atomic import save_figure
  models = {f"final ({m})": v for m, v in two["final"].items()}
  ranked = sorted(two["retrievers"], key=lambda v: -two["retrievers"][v]["overall"]["ndcg@10"])[:3]
  models.update({v: two["retrievers"][v] for v in ranked})
  models.update(two["baselines"])
  metrics = [("overall", "recall@10"), ("overall", "ndcg@10"), ("cold", "recall@10")]
  fig, ax = plt.subplots(figsize=(8, 3.6))
  width = 0.8 / len(models)
  for i, (name, m) in enumerate(models.items()):
    vals = [m.get(s, {}).get(k, np.nan) for s, k in metrics]
    ax.bar(np.arange(len(metrics)) + i * width, vals, width, label=name)
  ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2)
  ax.set_xticklabels([f"{k} ({s})" for s, k in metrics])
  ax.set_title("final list vs retrievers vs baselines (test)")
  ax.legend(fontsize=7, ncol=2)
  ax.grid(axis="y", alpha=0.3)
  save_figure(fig, path)
