"""The retrieval stage: the retriever comparison (learned variants + baselines on the run's split), the served
variant chosen by validation, its embeddings and its exports. Wiring only: the logic is
``semrec.towers.run_retrieval_comparison`` / ``served_retriever`` (the functions the benchmarks call)."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.atomic import save_npz
from semrec.atomic import write_text as atomic_write_text
from semrec.pipeline.artefacts import export_dir, item_features

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_retrieval(run: Run) -> dict:
  """Comparison, served variant (best validation selection score unless ``production_variant`` names one),
  embeddings for the index stage, and exports (TF Serving layout under ``export/models``):
  ``candidate_tower``, ``query_tower``, ``retrieval_brute_force`` (standard ops only) and ``retrieval_scann``
  (needs ScaNN's custom ops)."""
  from semrec.export import (export_brute_force_retrieval, export_candidate_tower, export_query_tower,
                             export_scann_retrieval)
  from semrec.towers import (build_index, comparison_markdown, embed_candidates, plot_comparison, query_embeddings,
                             query_features, run_retrieval_comparison, served_retriever)
  rcfg = run.config.retrieval
  cmp = dataclasses.replace(rcfg.comparison, seed=run.config.seed)
  feats, table = item_features(run)
  ids = feats.item_ids
  split = run.split
  out_dir = run.stage_dir("retrieval")
  # Cluster ids: the SID stage's (fitted once per run), finest granularity.
  clusters = max(table.cluster_ids.values(), key=lambda c: int(c.max())) if table.cluster_ids else None
  from semrec.pipeline.stages.encode import LEXICAL_ENCODER, load_lexical_encoder
  res = run_retrieval_comparison(run.dataset, split, ids, feats.arrays["content"], cmp, sid_codes=table.codes,
                                 sid_codebook_size=table.codebook_size, cluster_ids=clusters,
                                 spm=sid_spm(cmp, split, table, ids), output_dir=out_dir,
                                 lexical=load_lexical_encoder(run))
  markdown = comparison_markdown(res["table"])
  atomic_write_text(os.path.join(out_dir, "comparison.md"), markdown)
  os.makedirs(run.path("plots"), exist_ok=True)
  plot_comparison(res["table"], run.path("plots", "retrieval_recall.png"))
  print(markdown)
  variant = None if rcfg.production_variant == "auto" else rcfg.production_variant
  model, inputs, served = served_retriever(res, cmp, split, out_dir, variant)
  name = variant or res["served"]["variant"]
  print(f"served retriever: {name} (validation selection score {served['selection_score']:.4f}; "
        f"all variants: {res['served']['scores']})")

  test = split.queries("test")
  c = embed_candidates(model, inputs)
  sample = np.sort(np.random.default_rng(run.config.seed).choice(len(test), size=min(1000, len(test)),
                                                                  replace=False))
  q = query_embeddings(model, inputs, test.subset(sample))
  save_npz(os.path.join(out_dir, "embeddings.npz"), item_ids=np.asarray(ids, dtype=str), candidates=c, queries=q)

  item_ex = {k: v.numpy() for k, v in next(iter(inputs.catalogue_dataset(8))).items()}
  query_ex = {k: (v.numpy() if k != "history" else {hk: hv.numpy() for hk, hv in v.items()})
              for k, v in query_features(inputs, test, np.arange(min(8, len(test))), model.config.max_history).items()}
  summary = served["test"]
  fp, base, k = run.data_fingerprint, export_dir(run), min(rcfg.top_k, len(ids))
  # The served model's ``lexical`` feature of new items comes from the encode stage's lexical encoder: it is
  # shipped inside every export that reads it (assets.extra/, versioned and verified with the model).
  files = {"lexical_encoder": run.path(LEXICAL_ENCODER)} if "lexical" in model.required_features() else None
  exported = {
      "candidate_tower": export_candidate_tower(base, model.candidate_embedding, item_ex, data_fingerprint=fp,
                                                serving_files=files).path,
      "query_tower": export_query_tower(base, model.query_embedding, query_ex, data_fingerprint=fp,
                                        metrics=summary, serving_files=files).path,
      "retrieval_brute_force": export_brute_force_retrieval(
          base, model.query_embedding, query_ex, k=k, candidate_embeddings=c, item_ids=ids, data_fingerprint=fp,
          metrics=summary, serving_files=files).path,
      "retrieval_scann": export_scann_retrieval(
          base, model.query_embedding, query_ex, k=k,  # leaves to search calibrated as the index stage does
          index=build_index(c, ids, kind="scann", k=k, calibration_queries=q[0::2]),
          data_fingerprint=fp, metrics=summary, serving_files=files).path,
  }
  # ``semrec.encoders.LexicalEncoder.load(<run>/<path>)``: the candidate tower's copy, relative to the run.
  lexical = (os.path.relpath(os.path.join(exported["candidate_tower"], "assets.extra", "lexical_encoder.npz"),
                             run.run_dir) if files else None)
  r100 = lambda m, s: m.get(s, {}).get("recall@100", float("nan"))  # noqa: E731
  headline = [{"variant": n, "quality": "baseline" if kind == "baseline" else "none",
               "all": r100(m, "overall"), "warm": r100(m, "warm"), "cold": r100(m, "cold")}
              for kind, rows in (("baseline", res["baselines"]), ("learned", res["results"]))
              for n, m in ((n, r["test"]) for n, r in rows.items())]
  return {"comparison_seconds": round(res["seconds"], 1), "split": res["split"], "headline": headline,
          "baselines": {n: m["test"] for n, m in res["baselines"].items()},
          "variants": {v: r["test"] for v, r in res["results"].items()},
          "selection": res["served"],
          "production": {"variant": name, "why": "best validation selection score" if variant is None else
                         "named by retrieval.production_variant", "metrics": summary, "exports": exported,
                         "item_features": model.required_features(),
                         "score_settings": model.score_blocks.settings(), "lexical_encoder": lexical}}


def sid_spm(cmp, split, table, ids):
  """The SID-piece SentencePiece model of the comparison's SPM variants (None without one), over the SID
  stage's codes weighted by train interactions. It needs the split's train log, which the SID stage does not
  read, so it is trained here."""
  from semrec.sid.retrieval_inputs import interaction_spm
  if "spm" not in cmp.sid_needs():
    return None
  return interaction_spm(table.codes, ids, split.train["item_id"], cmp.spm_vocab_size, table.codebook_size)
