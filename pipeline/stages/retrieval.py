"""The retrieval stage: the item-tower comparison, then the production retriever (trained, saved, exported)."""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.atomic import save_npz
from semrec.atomic import write_text as atomic_write_text
from semrec.pipeline.artefacts import export_dir, item_features
from semrec.pipeline.report import comparison_markdown

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_retrieval(run: Run) -> dict:
  """Item-tower comparison, then the production retriever: trained, evaluated, saved and exported.

  Exports (TF Serving layout under ``export/models``): ``candidate_tower``, ``query_tower``,
  ``retrieval_brute_force`` (standard ops only) and ``retrieval_scann`` (needs ScaNN's custom ops).
  """
  import shutil
  import tensorflow as tf
  from semrec.export import (export_brute_force_retrieval, export_candidate_tower, export_query_tower,
                             export_scann_retrieval)
  from semrec.sid import train_sid_spm
  from semrec.towers import (QualityVector, RetrievalInputs, build_index, build_variant_retriever, embed_candidates,
                             embed_queries, fit_retriever, item_frequencies, rank_of_targets,
                             run_retrieval_comparison, save_retriever, sliced_metrics)

  rcfg = run.config.retrieval
  cmp = dataclasses.replace(rcfg.comparison, seed=run.config.seed, train_fraction=run.config.data.train_fraction)
  feats, table = item_features(run)
  ids = feats.item_ids
  K, L = table.codebook_size, table.codes.shape[1]
  out_dir = run.stage_dir("retrieval")
  res = run_retrieval_comparison(run.dataset, ids, feats.arrays["content"], cmp, sid_codes=table.codes,
                                 sid_codebook_size=K, output_dir=out_dir)
  atomic_write_text(os.path.join(out_dir, "comparison.md"), comparison_markdown(res["table"], cmp.ks))
  if res.get("plot"):
    shutil.copyfile(res["plot"], run.path("plots", "retrieval_recall.png"))
  print(comparison_markdown(res["table"], cmp.ks))

  # --- The production retriever.
  variant = rcfg.production_variant
  split = run.temporal_split
  pos = lambda d: d[d["label"] > 0]  # noqa: E731
  train_pos = pos(split.train)
  arrays = dict(feats.arrays)
  if table.cluster_ids:
    finest = max(table.cluster_ids, key=lambda n: int(table.cluster_ids[n].max()))
    arrays["cluster_id"] = table.cluster_ids[finest]
    cmp = dataclasses.replace(cmp, num_clusters=int(arrays["cluster_id"].max()) + 1)
  from semrec.data import ItemFeatures
  features = ItemFeatures(ids, arrays)
  spm = None
  if variant in ("sid_spm", "sid_spm_hashed"):
    weights = train_pos["item_id"].astype(str).value_counts().reindex(ids).fillna(0).to_numpy()
    spm = train_sid_spm(table.codes, weights=weights, vocab_size=cmp.spm_vocab_size, codebook_size=K, item_ids=ids)
  qv = QualityVector.fit(split.train, run.dataset.items, reference_time=split.cutoff,
                         quality_columns=run.dataset.quality_columns)
  quality_mode = "tuned" if rcfg.production_quality == "tuned" else "none"
  t = split.train["timestamp"]
  tf.keras.utils.set_random_seed(run.config.seed)
  model = build_variant_retriever(variant, cmp, quality_dim=qv.dim, quality_mode=quality_mode, spm=spm, num_levels=L,
                                  codebook_size=K, hash_bins=cmp.hash_bins or 2 * len(ids),
                                  time_mean=float(t.mean()), time_scale=float(max(t.std(), 1.0)))
  inputs = RetrievalInputs(features, model.item_encoder.required_features(), cmp.max_history,
                           quality=qv.features() if quality_mode != "none" else None,
                           unknown_quality=qv.new_item_features() if quality_mode != "none" else None)
  train_ds = inputs.dataset(inputs.encode(train_pos, item_probs=item_frequencies(train_pos)), cmp.batch_size,
                            shuffle=True, seed=run.config.seed)
  hist = fit_retriever(model, train_ds, cmp.epochs)
  if quality_mode == "tuned":
    w = res["quality_weights"].get(f"{variant}/tuned", {}).get("w")
    if w is None:
      raise ValueError(f"production_quality='tuned' needs 'tuned' in retrieval.comparison.quality_modes and "
                       f"{variant!r} in its variants")
    model.set_quality_weights([w[n] for n in qv.feature_names])

  all_inter = run.dataset.interactions
  enc_test = inputs.encode(pos(split.test), context=all_inter)
  q = embed_queries(model, inputs, enc_test)
  c = embed_candidates(model, inputs)
  is_cold = split.is_cold(enc_test["item_id"])
  ranks = rank_of_targets(q, c, inputs.rows_of(enc_test["item_id"]), inputs.exclusions(enc_test, all_inter),
                          max_k=max(cmp.ks))
  metrics = sliced_metrics(ranks, {"overall": np.ones(len(is_cold), bool), "warm": ~is_cold, "cold": is_cold}, cmp.ks)
  save_retriever(model, os.path.join(out_dir, "model"))
  rng = np.random.default_rng(run.config.seed)
  sample = np.sort(rng.choice(len(q), size=min(1000, len(q)), replace=False))
  save_npz(os.path.join(out_dir, "embeddings.npz"), item_ids=np.asarray(ids, dtype=str), candidates=c,
           queries=q[sample])

  # --- Exports.
  item_ex = {k: v.numpy() for k, v in next(iter(inputs.catalogue_dataset(8))).items()}
  q_batch = next(iter(inputs.dataset({k: v[:8] for k, v in enc_test.items()}, 8)))
  query_ex = {"user_id": q_batch["user_id"].numpy(), "timestamp": q_batch["timestamp"].numpy(),
              "history": {k: v.numpy() for k, v in q_batch["history"].items()}}
  fp = run.data_fingerprint
  summary = {s: {k: float(v) for k, v in m.items()} for s, m in metrics.items()}
  base = export_dir(run)
  k = min(rcfg.top_k, len(ids))
  exported = {
      "candidate_tower": export_candidate_tower(base, model.candidate_embedding, item_ex, data_fingerprint=fp).path,
      "query_tower": export_query_tower(base, model.query_embedding, query_ex, data_fingerprint=fp,
                                        metrics=summary).path,
      "retrieval_brute_force": export_brute_force_retrieval(
          base, model.query_embedding, query_ex, k=k, candidate_embeddings=c, item_ids=ids, data_fingerprint=fp,
          metrics=summary).path,
      "retrieval_scann": export_scann_retrieval(
          base, model.query_embedding, query_ex, k=k, index=build_index(c, ids, kind="scann", k=k),
          data_fingerprint=fp, metrics=summary).path,
  }
  recall = lambda v, q_, s: float(res["table"].query(  # noqa: E731
      "variant == @v and quality == @q_ and slice == @s")["recall@100"].iloc[0])
  headline = [{"variant": v, "quality": qm, "all": recall(v, qm, "overall"), "warm": recall(v, qm, "warm"),
               "cold": recall(v, qm, "cold")}
              for v in cmp.variants for qm in cmp.quality_modes
              if len(res["table"].query("variant == @v and quality == @qm"))]
  return {
      "comparison_seconds": round(res["seconds"], 1),
      "acceptance": res["acceptance"],
      "headline": headline,
      "quality_weights": res["quality_weights"],
      "production": {"variant": variant, "quality": quality_mode, "metrics": summary,
                     "final_loss": float(hist.history["loss"][-1]), "exports": exported},
  }
