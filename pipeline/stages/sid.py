"""The SID stage: k-means cluster IDs and the Semantic-ID model, with its health report."""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import numpy as np

from semrec.atomic import save_npy
from semrec.pipeline.artefacts import load_embeddings
from semrec.pipeline.report import plot_prefix_similarity

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_sid(run: Run) -> dict:
  """Fits k-means cluster IDs and the SID model; writes the SID table, health table and plots."""
  import shutil
  from semrec.sid import fit_cluster_granularities, format_health_table, train_sid_model, write_health_report
  cfg = run.config.sid
  ids, x = load_embeddings(run)
  model_cfg = dataclasses.replace(cfg.model, seed=run.config.seed)
  t0 = time.time()
  sid_model = train_sid_model(x, model_cfg, item_ids=ids)
  train_seconds = time.time() - t0
  sid_model.save(run.path("sid", "model"))
  ks = tuple(dict.fromkeys(min(int(k), len(ids)) for k in cfg.cluster_ks))
  cluster_layers = fit_cluster_granularities(x, ks=ks, seed=run.config.seed)
  cluster_ids = {name: layer(x).numpy().astype("int32") for name, layer in cluster_layers.items()}
  for name, layer in cluster_layers.items():
    save_npy(run.path("sid", f"centroids_{name}.npy"), layer.get_weights()[0])
  table = sid_model.table(x, ids, suffix=cfg.unique_suffix, cluster_ids=cluster_ids)
  table.save(run.path("sid", "table"))
  health = write_health_report(sid_model, x, run.path("sid"), item_ids=ids, seed=run.config.seed,
                               title=f"{run.dataset.name}: items per code, {model_cfg.mode}")
  shutil.copyfile(run.path("sid", "code_usage.png"), run.path("plots", "sid_code_usage.png"))
  plot_prefix_similarity(health, run.path("plots", "sid_prefix_similarity.png"), run.dataset.name)
  print(format_health_table(health))
  return {
      "mode": model_cfg.mode, "num_levels": sid_model.num_levels, "codebook_size": sid_model.codebook_size,
      "train_seconds": round(train_seconds, 1),
      "utilisation": [lv["utilisation"] for lv in health["levels"]],
      "unique_ratio": health["unique_ratio"],
      "prefix_cosine": [r["mean_cosine"] for r in health["prefix_table"]],
      "prefix_cosine_strictly_rising": health["prefix_cosine_strictly_rising"],
      "reconstruction_cosine": (health.get("reconstruction") or {}).get("cosine"),
      "cluster_granularities": list(cluster_ids),
      "example_sids": {str(ids[i]): table.token_string(i) for i in range(min(3, len(ids)))},
  }
