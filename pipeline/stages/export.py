"""The export stage: the SID assigner and models.config for every export of the run."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from semrec.pipeline.artefacts import export_dir, load_embeddings

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_export(run: Run) -> dict:
  """Exports the SID assigner (content -> cluster ID + SID) and writes models.config for every export.

  The retrieval, index and ranking stages export their own models as soon as they are trained (so a
  resumed run never needs to retrain to export); this stage adds the SID assigner and the TF Serving
  config covering all of them.
  """
  from semrec.export import export_sid_assigner, write_serving_configs
  from semrec.sid import ClusterIdLayer, SidModel
  ids, x = load_embeddings(run)
  sid_model = SidModel.load(run.path("sid", "model"))
  names = sorted(f[len("centroids_"):-4] for f in os.listdir(run.path("sid")) if f.startswith("centroids_"))
  cluster = None
  if names:
    finest = max(names, key=lambda n: int(n.lstrip("k")) if n.lstrip("k").isdigit() else 0)
    cluster = ClusterIdLayer(np.load(run.path("sid", f"centroids_{finest}.npy")), name=f"cluster_id_{finest}")
  sid = run.stage_result("sid") if run.is_done("sid") else {}
  res = export_sid_assigner(export_dir(run), sid_model.assigner, x[:8], cluster_layer=cluster,
                            data_fingerprint=run.data_fingerprint,
                            metrics={k: sid.get(k) for k in ("utilisation", "unique_ratio")})
  configs = write_serving_configs(export_dir(run), run.config.export.base_path_prefix or None)
  return {"sid_assigner": res.path, "serving_configs": configs,
          "models": sorted(d for d in os.listdir(export_dir(run)) if os.path.isdir(os.path.join(export_dir(run), d)))}
