"""The whole two-stage recommender on a split: every trained retriever and the non-learned sources as candidate
sources, the ranker trained on their candidates, and the final list measured next to each retriever alone.

This is the one function the pipeline's ranking stage and ``benchmarks/bench_cascade.py`` call
(``run_two_stage``). Inputs are a finished retrieval comparison (``semrec.towers.run_retrieval_comparison``,
with its ``output_dir`` so each variant's trained model is resumed, not retrained).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import numpy as np

from semrec.ranking.cascade import (Cascade, CascadeConfig, build_sources, candidate_stage, choose_fresh_scorer,
                                    evaluate_cascade, resolved_horizon, retriever_score_fn, train_cascade)
from semrec.ranking.candidates import catalogue_index, history_list_source


def trained_retrievers(comparison: dict, comparison_config, split, output_dir: str,
                       variants: Optional[Sequence[str]] = None) -> dict:
  """{variant: (model, inputs)} of the comparison's trained variants, resumed from ``output_dir``."""
  from semrec.towers.comparison import run_variant
  names = list(variants) if variants is not None else list(comparison["results"])
  out = {}
  for v in names:
    model, inputs, _ = run_variant(v, comparison_config, split, comparison["item_side"], None, output_dir)
    out[v] = (model, inputs)
  return out


def best_single_retriever(comparison: dict, metric: str = "ndcg@10", stage: str = "test") -> str:
  """The trained variant with the best ``metric`` on ``stage`` (overall): the bar the final list must clear."""
  res = comparison["results"]
  return max(res, key=lambda v: res[v][stage]["overall"].get(metric, float("-inf")))


def run_two_stage(split, comparison: dict, comparison_config, output_dir: str, config: Optional[CascadeConfig] = None,
                  compare_modes: Sequence[str] = (), knn_decay: Optional[float] = None,
                  extra_sources: Sequence = (), progress: bool = True) -> dict:
  """Candidate sources -> merge -> ranker on ``split``, measured on its test queries.

  Args:
    split: The ``EvalSplit`` the comparison ran on.
    comparison: ``run_retrieval_comparison``'s result (with ``item_side``).
    comparison_config: Its ``ComparisonConfig`` (to resume each variant).
    output_dir: The comparison's ``output_dir`` (per-variant checkpoints).
    config: ``CascadeConfig`` (its ``mode`` is the served ranker's representation).
    compare_modes: Further ranker representations trained on the same candidates (e.g. ("random_hash",) for
      the SPM-vs-hash comparison); their final lists are reported as ``final[<mode>]``.
    knn_decay: The content-kNN recency decay (default the comparison's validation choice).
    extra_sources: Further candidate sources placed after the retrievers, for training and serving alike: a
      ``ScoreSource`` / ``ListSource``, or a duck-typed history source (``name``, ``retrieve(histories, k)``, e.g.
      ``semrec.generative.GenerativeSource``), wrapped by ``history_list_source``.

  Returns:
    {"cascade": the trained ``Cascade``, "final": {mode: metrics}, "sources": {name: metrics of its own list},
     "candidate_recall": {"merged" | source: {slice: recall}}, "retrievers": {variant: test metrics},
     "baselines": {name: test metrics}, "best_retriever": variant, "history": per-epoch record,
     "blend": {mode: {"source", "weight"}: the validation-chosen blend of the final list},
     "seconds": {"sources": s, "train": s, "evaluate": s}, "config": dict, "test_stage": CascadeStage,
     "retrievers_trained": {variant: (model, inputs)}, "serve_sources": the serving ``ScoreSource`` list,
     "knn_decay": the content-kNN decay used, "fresh_scorer": what orders the fresh items,
     "fresh_scorer_recall": {scorer: its validation new-item recall among the fresh items} (empty when not
     chosen on validation)} ("retrievers_trained" to "fresh_scorer" are what ``semrec.export.export_cascade``
     needs).
  """
  cfg = config or CascadeConfig()
  side = comparison["item_side"]
  feats = side.features
  if "sid" not in feats.arrays:
    raise ValueError("the cascade ranker needs SIDs: the comparison's item side has no 'sid' array (include a SID "
                     "variant, e.g. sid_spm_hashed, or pass the SID stage's codes)")
  ids = feats.item_ids
  index = catalogue_index(ids)
  content = feats.arrays.get("content")
  decay = knn_decay if knn_decay is not None else comparison.get("content_knn", {}).get("decay", 0.5)
  t0 = time.time()
  retrievers = trained_retrievers(comparison, comparison_config, split, output_dir)
  extra = [s if hasattr(s, "score_fn") or hasattr(s, "list_fn") else history_list_source(s, index, cfg.history_length)
           for s in extra_sources]
  fns = {v: retriever_score_fn(m, i) for v, (m, i) in retrievers.items()}
  fresh, fresh_recall = _fresh_scorer(cfg, split, ids, content, fns, decay)
  serve = build_sources(split, ids, content, fns, cfg.fresh_window, decay, seed=cfg.seed, fresh_scorer=fresh)
  train_sources = build_sources(split, ids, content, fns, cfg.fresh_window, decay, training=True, seed=cfg.seed,
                                fresh_scorer=fresh, catalogue_horizon=resolved_horizon(cfg, split))
  serve = serve[:len(retrievers)] + extra + serve[len(retrievers):]
  train_sources = train_sources[:len(retrievers)] + extra + train_sources[len(retrievers):]
  valid_stage = candidate_stage(serve, split.queries("valid"), index, cfg)
  test_stage = candidate_stage(serve, split.queries("test"), index, cfg)
  t1 = time.time()
  finals, cascades = {}, {}
  for mode in (cfg.mode, *[m for m in compare_modes if m != cfg.mode]):
    mcfg = dataclasses.replace(cfg, mode=mode)
    cascades[mode] = train_cascade(split, feats, side.sid_codebook_size, train_sources, valid_stage, mcfg,
                                   progress=progress, blend_sources=None)
  t2 = time.time()
  evals = {m: evaluate_cascade(c, test_stage, ids) for m, c in cascades.items()}
  main = evals[cfg.mode]
  return {"cascade": cascades[cfg.mode], "cascades": cascades,
          "final": {m: e["final"] for m, e in evals.items()},
          "sources": main["sources"], "candidate_recall": main["candidate_recall"],
          "retrievers": {v: r["test"] for v, r in comparison["results"].items()},
          "baselines": {n: m["test"] for n, m in comparison["baselines"].items()},
          "best_retriever": best_single_retriever(comparison),
          "history": {m: c.history for m, c in cascades.items()},
          "blend": {m: {"source": c.blend_source, "weight": c.blend_weight} for m, c in cascades.items()},
          "train_examples": {m: c.train_examples for m, c in cascades.items()},
          "seconds": {"sources": round(t1 - t0, 1), "train": round(t2 - t1, 1), "evaluate": round(time.time() - t2, 1)},
          "config": dataclasses.asdict(cfg), "test_stage": test_stage,
          "retrievers_trained": retrievers, "serve_sources": serve, "knn_decay": decay,
          "fresh_scorer": fresh, "fresh_scorer_recall": fresh_recall}


def _fresh_scorer(cfg: CascadeConfig, split, ids, content, fns: dict, decay: float) -> tuple:
  """(``cfg.fresh_scorer`` resolved, validation recalls): "auto" -> ``choose_fresh_scorer`` over content kNN
  (with content) and every trained retriever."""
  if cfg.fresh_scorer != "auto":
    return cfg.fresh_scorer, {}
  scorers = dict(fns)
  if content is not None:
    from semrec.towers.baselines import ContentKnnBaseline
    scorers = {"content_knn": ContentKnnBaseline(decay=decay).fit(split, ids, content).scores, **fns}
  if not scorers:
    return "content_knn", {}
  return choose_fresh_scorer(split, ids, scorers, cfg.fresh_window, cfg.per_source)


def two_stage_table(result: dict, metrics: Sequence[str] = ("recall@10", "ndcg@10", "recall@100"),
                    slices: Sequence[str] = ("overall", "warm", "cold")) -> list:
  """Rows {"model", "kind", "<slice> <metric>": value}: the final list(s), every trained retriever, the
  baselines, and the merged candidate recall, for one table."""
  rows = []

  def row(name, kind, m):
    out = {"model": name, "kind": kind}
    for s in slices:
      for k in metrics:
        out[f"{s} {k}"] = m.get(s, {}).get(k, float("nan"))
    return out

  for mode, m in result["final"].items():
    rows.append(row(f"final list ({mode})", "two-stage", m))
  best = result["best_retriever"]
  for v, m in result["retrievers"].items():
    rows.append(row(v + (" (best single)" if v == best else ""), "retriever", m))
  for n, m in result["baselines"].items():
    rows.append(row(n, "baseline", m))
  rec = result["candidate_recall"]["merged"]
  rows.append({"model": f"candidates (merged {result['config']['candidates']})", "kind": "ceiling",
               **{f"{s} recall@100": rec.get(s, float("nan")) for s in slices}})
  return rows


__all__ = ["best_single_retriever", "run_two_stage", "trained_retrievers", "two_stage_table"]
