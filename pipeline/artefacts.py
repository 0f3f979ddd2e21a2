"""What earlier stages of a run wrote, read back: embeddings, the SID table, per-item features, exports."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def load_embeddings(run: Run):
  """(item_ids [N] object, embeddings [N, D] float32) of the run's store, in catalogue order."""
  from semrec.encoders import EmbeddingStore
  contents = EmbeddingStore(run.path("encode", "store")).load()
  return contents.item_ids.astype(object), contents.embeddings


def load_sid_table(run: Run):
  """The run's :class:`semrec.sid.SidTable` (codes, cluster IDs, item IDs)."""
  from semrec.sid import SidTable
  return SidTable.load(run.path("sid", "table"))


def item_features(run: Run):
  """The run's per-item feature table, catalogue order, and its SID table.

  Arrays: ``sid`` [N, L] int32, ``content`` [N, D] float32, and ``cluster_<name>`` [N] int32 for every k-means
  granularity the SID stage fitted (``cluster_k100``, ``cluster_k1000`` by default; each k clipped to N).
  Cluster IDs are fitted once per run, by the SID stage: later stages read them here (or with
  :func:`cluster_ids`) instead of fitting k-means again.
  """
  from semrec.data import ItemFeatures
  ids, x = load_embeddings(run)
  table = load_sid_table(run)
  if list(table.item_ids) != list(ids):
    raise ValueError(f"{run.path('sid', 'table')}: SID table items differ from the embedding store's "
                     "(re-run `semrec sid train --force`)")
  arrays = {"sid": table.codes.astype(np.int32), "content": x}
  for name, c in table.cluster_ids.items():
    arrays[f"cluster_{name}"] = c
  return ItemFeatures(ids, arrays), table


def cluster_ids(run: Run) -> dict:
  """{granularity name ("k100", "k1000", ...): [N] int32 cluster IDs} fitted by the SID stage, catalogue order.

  The finest is ``max(ids, key=lambda n: int(n[1:]))``; the centroids are ``<run>/sid/centroids_<name>.npy``.
  """
  return dict(load_sid_table(run).cluster_ids)


def export_dir(run: Run) -> str:
  """Base directory of every SavedModel the run exports (TF Serving layout)."""
  return run.path("export", "models")
