"""Exporters for every served semrec artefact (TF Serving layout, see `semrec.export.serving_layout`).

| name (default)          | signature ``serving_default``                                         | ScaNN ops |
| ----------------------- | --------------------------------------------------------------------- | --------- |
| ``sid_assigner``        | content [B, D] f32 -> sid [B, L] i32 (+ cluster_id [B] i32)            | no        |
| ``candidate_tower``     | item features (flat) -> embedding [B, d] f32                           | no        |
| ``query_tower``         | user features (flat: user_id, history_item_id, ...) -> embedding [B, d] | no        |
| ``retrieval_brute_force`` | user features -> scores [B, k] f32, item_ids [B, k] string           | no        |
| ``retrieval_scann``     | user features -> scores [B, k] f32, item_ids [B, k] string             | **yes**   |
| ``ranker``              | see ``semrec.ranking.serving`` -> task probabilities [B] f32           | no        |
| ``scann_index``         | (not a SavedModel) ScaNN searcher directory + item_ids.txt             | pybind    |

The exporters take Keras layers/models plus example inputs, so they work for any tower or ranker
implementation that is called on a dict of features. Nested feature dicts (``history: {...}``) become
flat signature inputs (``history_item_id``, ``history_sid``, ...); the examples become the warm-up requests.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from semrec import atomic
from semrec.export import serving_layout as sl
from semrec.export.features import (ExampleInputs, flat_requests, flatten_features, input_specs_from_examples,
                                     unflatten_features)
from semrec.export.serving_module import ExportResult, ServingModule, export_keras_module, export_serving_module

_SCANN_HINT = "ScaNN is not importable; install it with `pip install 'scann[tf]==1.4.2'` (built for TF 2.20)."


# ---------------------------------------------------------------------------------------------------
# (1) SID assigner.


def export_sid_assigner(base_dir: str, sid_assigner, example_content, *, cluster_layer=None,
                        name: str = "sid_assigner", **kwargs) -> ExportResult:
  """Exports content embedding -> SID codes (+ cluster ID) for assigning IDs to new items.

  Args:
    base_dir: export base directory.
    sid_assigner: layer [B, D] float32 -> [B, L] int (e.g. ``semrec.sid.SidAssigner``).
    example_content: [B, D] float32 example embeddings (warm-up request; fixes D in the signature).
    cluster_layer: optional layer [B, D] -> [B] int (``semrec.sid.ClusterIdLayer``).
    name: model name.
    **kwargs: forwarded to `export_serving_module` (metrics, data_fingerprint, description, ...).

  Signature: ``content`` float32 [B, D] -> ``sid`` int32 [B, L] (and ``cluster_id`` int32 [B]).
  A request with NaN/inf content fails with "content: NaN/inf values", a wrong width D with "content:
  dimension 1 must be D" (the `ServingModule` input checks).
  """
  content = np.asarray(example_content, dtype=np.float32)
  if content.ndim != 2:
    raise sl.ExportError(f"model {name!r}: example_content must be [B, D], got shape {list(content.shape)}")
  specs = {"content": tf.TensorSpec([None, content.shape[1]], tf.float32, name="content")}

  def fn(features):
    x = features["content"]  # checked (rank, width D, finite) by ServingModule
    out = {"sid": tf.cast(sid_assigner(x), tf.int32)}
    if cluster_layer is not None:
      out["cluster_id"] = tf.cast(cluster_layer(x), tf.int32)
    return out

  trackables = {"sid_assigner": sid_assigner}
  if cluster_layer is not None:
    trackables["cluster_layer"] = cluster_layer
  module = ServingModule(fn, specs, trackables=trackables)
  kwargs.setdefault("description", "content embedding -> SID codes" + (" + cluster ID" if cluster_layer else ""))
  kwargs.setdefault("artefact", "sid_assigner")
  extra = dict(kwargs.pop("extra", None) or {})
  extra.setdefault("content_dim", int(content.shape[1]))
  return export_serving_module(module, base_dir, name, {"content": content}, extra=extra, **kwargs)


# ---------------------------------------------------------------------------------------------------
# (2) / (3) Towers.


def export_candidate_tower(base_dir: str, tower, example_item_features: ExampleInputs, *,
                           name: str = "candidate_tower", output_name: str = "embedding", **kwargs) -> ExportResult:
  """Exports item features -> candidate embedding [B, d], for (re)building the index offline.

  Args:
    tower: a layer/model (or bound method, e.g. ``retriever.candidate_embedding`` for ``[p ; f(p)]``)
      called on the item-feature dict (``{"item_id": [B], "sid": [B, L], "content": [B, D], ...}``).
    example_item_features: one batch (or a list of batches) of item features.
  """
  kwargs.setdefault("artefact", "candidate_tower")
  kwargs.setdefault("description", "item features -> candidate embedding")
  return export_keras_module(tower, base_dir, name, example_item_features, output_names=[output_name], **kwargs)


def export_query_tower(base_dir: str, tower, example_query_features: ExampleInputs, *,
                       name: str = "query_tower", output_name: str = "embedding", **kwargs) -> ExportResult:
  """Exports user/query features -> query embedding [B, d], to query an external ScaNN/ANN service.

  A multi-interest retriever (``TwoTowerRetriever.multi_interest``) exports [B, K, d]: search each of the K
  vectors and keep each item once at its best score (``semrec.towers.multi_query_top_k`` does this in Python).

  Args:
    tower: a layer/model (or bound method, e.g. ``retriever.query_embedding`` for ``[q ; w]``) called on
      the query-feature dict (``{"user_id": [B], "history": {"item_id": [B, H], ...}, ...}``).
    example_query_features: one batch (or a list of batches); nested dicts become flat inputs
      (``history_item_id``, ``history_sid``, ...). The history length H is left free in the signature
      (override with ``dynamic_axes={}``).
  """
  kwargs.setdefault("artefact", "query_tower")
  kwargs.setdefault("description", "user features -> query embedding")
  kwargs.setdefault("dynamic_axes", _history_axes(example_query_features))
  kwargs.setdefault("shared_axes", _history_length_axis(kwargs["dynamic_axes"]))
  return export_keras_module(tower, base_dir, name, example_query_features, output_names=[output_name], **kwargs)


def _history_axes(example_query_features: ExampleInputs) -> dict[str, list[int]]:
  """Flat inputs under ``history`` get a free axis 1 (H): clients may send any history length."""
  first = example_query_features if isinstance(example_query_features, Mapping) else list(example_query_features)[0]
  _, paths = flatten_features(first)
  return {k: [1] for k, p in paths.items() if len(p) > 1 and p[0] == "history"}


def _history_length_axis(dynamic_axes: Mapping[str, Sequence[int]]) -> dict:
  """``{"H": [(input, 1), ...]}``: every ``history_*`` input with a free axis 1 must send the same length H."""
  members = [(k, 1) for k, axes in dynamic_axes.items() if k.startswith("history_") and 1 in axes]
  return {"H": members} if len(members) > 1 else {}


# ---------------------------------------------------------------------------------------------------
# (4) / (5) Retrieval: query features -> top-k item ids.


def _topk_layer(kind: str, k: int, index, candidate_embeddings, item_ids, scann_options: Mapping[str, Any], name: str):
  import tensorflow_recommenders as tfrs

  if index is not None:
    if hasattr(index, "to_keras_layer"):  # semrec.towers.RetrievalIndex
      index_kind = getattr(index, "kind", kind)
      if index_kind != kind:
        raise sl.ExportError(f"model {name!r}: a {kind} retrieval export needs a {kind} index, got {index_kind!r}")
      return index.to_keras_layer(query_model=None, k=k)
    if isinstance(index, tfrs.layers.factorized_top_k.TopK):
      if getattr(index, "query_model", None) is not None:
        raise sl.ExportError(f"model {name!r}: pass the top-k layer without a query_model; the query model is "
                             "given separately as `query_model`")
      return index
    raise sl.ExportError(f"model {name!r}: index must be a TFRS TopK layer or a semrec.towers.RetrievalIndex, "
                         f"got {type(index).__name__}")
  if candidate_embeddings is None or item_ids is None:
    raise sl.ExportError(f"model {name!r}: give either `index` or both `candidate_embeddings` and `item_ids`")
  emb = np.asarray(candidate_embeddings, dtype=np.float32)
  ids = np.asarray(item_ids).astype(str)
  if emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
    raise sl.ExportError(f"model {name!r}: candidate_embeddings {list(emb.shape)} and item_ids "
                         f"{list(ids.shape)} must be [N, d] and [N]")
  bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
  if bad.size:
    raise sl.ExportError(f"model {name!r}: candidate embedding of item {str(ids[bad[0]])!r} has NaN/inf values")
  if k > emb.shape[0]:
    raise sl.ExportError(f"model {name!r}: k={k} exceeds the {emb.shape[0]} candidates")
  if kind == "brute_force":
    layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
  else:
    try:
      import scann  # noqa: F401
    except ImportError as e:
      raise ImportError(_SCANN_HINT) from e
    n = emb.shape[0]
    leaves = int(scann_options.get("num_leaves") or max(1, min(n, round(np.sqrt(n)))))
    opts = {"num_leaves": leaves,
            "num_leaves_to_search": int(scann_options.get("num_leaves_to_search") or max(1, leaves // 20)),
            "dimensions_per_block": int(scann_options.get("dimensions_per_block", 2)),
            "num_reordering_candidates": int(scann_options.get("num_reordering_candidates") or max(10 * k, 100)),
            "training_iterations": int(scann_options.get("training_iterations", 12))}
    layer = tfrs.layers.factorized_top_k.ScaNN(k=k, **opts)
  return layer.index(tf.constant(emb), tf.constant(ids))


def multi_interest_top_k(topk, queries, k: int):
  """(scores [B, k], ids [B, k]) of multi-interest queries [B, K, d] through a TFRS top-k layer.

  Every one of the B * K vectors is searched (``topk(vectors, k=k)``); each query's K * k results are sorted by
  score and an item found by several vectors is kept once, at its best score (the graph twin of
  ``semrec.towers.multi_query_top_k``, exact for a brute-force layer). The duplicate check compares every pair of
  a query's K * k results: B * (K * k)^2 booleans per request (K = 10, k = 100: 1 MB per user), fine for the small
  batches of online retrieval; batch offline scoring through ``multi_query_top_k`` instead.
  """
  b, d = tf.shape(queries)[0], queries.shape[-1]
  scores, ids = topk(tf.reshape(queries, [-1, d]), k=k)  # [B * K, k]
  scores, ids = tf.reshape(scores, [b, -1]), tf.reshape(ids, [b, -1])  # [B, K * k]
  order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
  scores, ids = tf.gather(scores, order, batch_dims=1), tf.gather(ids, order, batch_dims=1)
  m = tf.shape(ids)[1]
  earlier = tf.linalg.band_part(tf.ones([m, m], tf.bool), -1, 0) & ~tf.eye(m, dtype=tf.bool)  # [i, j]: j < i
  dup = tf.reduce_any(tf.equal(ids[:, :, None], ids[:, None, :]) & earlier[None], axis=2)  # seen at a better rank
  top, pos = tf.math.top_k(tf.where(dup, tf.fill(tf.shape(scores), -np.inf), scores), k=k)  # ties: lower index first
  return top, tf.gather(ids, pos, batch_dims=1)


def export_retrieval(base_dir: str, query_model, example_query_features: ExampleInputs, *, kind: str = "brute_force",
                     k: int = 10, index=None, candidate_embeddings=None, item_ids=None,
                     scann_options: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
                     track: Optional[Mapping[str, Any]] = None, **kwargs) -> ExportResult:
  """Exports query features -> top-k (scores, item ids) with the index inside the graph.

  Args:
    base_dir: export base directory.
    query_model: layer/model or bound method (e.g. ``retriever.query_embedding``) -> [B, d] query embedding,
      or [B, K, d] multi-interest queries (a candidate's score is the max over the K vectors; each vector is
      searched and the K lists merged in the graph, ``multi_interest_top_k``).
    example_query_features: warm-up batch(es) of query features (nested dicts are flattened).
    kind: "brute_force" (``tfrs.layers.factorized_top_k.BruteForce``, standard ops only) or "scann"
      (``tfrs.layers.factorized_top_k.ScaNN``: the SavedModel needs ScaNN's custom ops; its manifest
      says so).
    k: neighbours returned.
    index: a TFRS TopK layer (already indexed, without query_model) or a ``semrec.towers.RetrievalIndex``
      of the same kind; otherwise the index is built from ``candidate_embeddings`` [N, d] and
      ``item_ids`` [N].
    scann_options: ScaNN layer options (num_leaves, num_leaves_to_search, dimensions_per_block,
      num_reordering_candidates, training_iterations) when building a ScaNN index here.
    name: model name (default ``retrieval_<kind>``).
    track: layers a plain-function ``query_model`` closes over, saved with the module.
    dynamic_axes: free axes besides the batch (default: axis 1, H, of every ``history_*`` input).
    shared_axes: free axes that must agree across inputs (default: H of every ``history_*`` input).

  Signature outputs: ``scores`` float32 [B, k], ``item_ids`` string [B, k] (best first).
  """
  if kind not in ("brute_force", "scann"):
    raise sl.ExportError(f"retrieval kind must be 'brute_force' or 'scann', got {kind!r}")
  name = name or f"retrieval_{kind}"
  if k < 1:
    raise sl.ExportError(f"model {name!r}: k must be >= 1, got {k}")
  if index is not None and hasattr(index, "to_keras_layer") and hasattr(index, "__len__"):
    k = min(int(k), len(index))  # RetrievalIndex.to_keras_layer clamps k to the catalogue size too.
  topk = _topk_layer(kind, int(k), index, candidate_embeddings, item_ids, dict(scann_options or {}), name)
  requests, paths = flat_requests(example_query_features, name)
  dynamic_axes = kwargs.pop("dynamic_axes", None)
  if dynamic_axes is None:
    dynamic_axes = {k: [1] for k, p in (paths or {}).items() if len(p) > 1 and p[0] == "history"}
  specs = input_specs_from_examples(requests[0], dynamic_axes=dynamic_axes)
  shared_axes = kwargs.pop("shared_axes", None)
  if shared_axes is None:
    shared_axes = _history_length_axis(dynamic_axes)
  owner = getattr(query_model, "__self__", None)
  is_keras = isinstance(query_model, tf.keras.layers.Layer) or isinstance(owner, tf.keras.layers.Layer)

  def fn(features):
    x = unflatten_features(features, paths) if paths else features
    q = query_model(x, training=False) if is_keras else query_model(x)
    scores, ids = multi_interest_top_k(topk, q, k) if q.shape.rank == 3 else topk(q, k=k)
    return {"scores": tf.ensure_shape(scores, [None, k]), "item_ids": tf.ensure_shape(ids, [None, k])}

  trackables = {"query_model": owner if isinstance(owner, tf.Module) else query_model, "index": topk}
  if not isinstance(trackables["query_model"], tf.Module):
    del trackables["query_model"]
  trackables.update({f"tracked_{k}": v for k, v in (track or {}).items()})
  module = ServingModule(fn, specs, trackables=trackables, shared_axes=shared_axes)
  kwargs.setdefault("artefact", f"retrieval_{kind}")
  kwargs.setdefault("description", f"user features -> top-{k} item ids ({kind} index in the graph)")
  extra = dict(kwargs.pop("extra", None) or {})
  extra.update({"k": int(k), "index_kind": kind})
  return export_serving_module(module, base_dir, name, requests, extra=extra,
                               needs_scann_ops=True if kind == "scann" else None, **kwargs)


def export_brute_force_retrieval(base_dir: str, query_model, example_query_features: ExampleInputs, **kwargs
                                 ) -> ExportResult:
  """`export_retrieval` with ``kind="brute_force"`` (artefact 4: standard TF ops, stock TF Serving)."""
  return export_retrieval(base_dir, query_model, example_query_features, kind="brute_force", **kwargs)


def export_scann_retrieval(base_dir: str, query_model, example_query_features: ExampleInputs, **kwargs
                           ) -> ExportResult:
  """`export_retrieval` with ``kind="scann"`` (artefact 5: needs ScaNN's custom ops to load and serve)."""
  return export_retrieval(base_dir, query_model, example_query_features, kind="scann", **kwargs)


# ---------------------------------------------------------------------------------------------------
# ScaNN searcher directory.


def export_scann_searcher(base_dir: str, index, example_queries, *, item_ids=None, k: int = 10,
                          name: str = "scann_index", data_fingerprint: Optional[str] = None,
                          metrics: Optional[Mapping[str, Any]] = None, description: str = "",
                          extra: Optional[Mapping[str, Any]] = None, rtol: float = 1e-4, atol: float = 1e-5
                          ) -> ExportResult:
  """Serialises a ScaNN searcher with its item-ID mapping as ``<base>/<name>/<version>/``.

  Layout: ``searcher/`` (ScaNN assets, relative paths: the directory can be moved), ``item_ids.txt``
  (line i = item id of ScaNN row i), ``assets.extra/semrec_expected_outputs.npz`` (example queries and
  their top-k at export time), ``manifest.json``. Load with
  ``scann.scann_ops_pybind.load_searcher(<version>/searcher)``; it is for an external ANN service fed by
  the exported query tower, not for TF Serving.

  Args:
    index: a ``semrec.towers.RetrievalIndex`` of kind "scann", a ``scann_ops_pybind`` searcher (then
      ``item_ids`` is required), or the path of a saved one (``RetrievalIndex.save`` directory or a ScaNN
      ``serialize`` directory): it is loaded and re-serialised, so the copy is verified like a fresh one.
    example_queries: [Q, d] float32 query embeddings, searched at export time and by `verify_export`.
    item_ids: [N] item ids (taken from the index when it has them).
    k: neighbours per query for the stored check.
  """
  sl.check_model_name(name)
  searcher, ids = _searcher_and_ids(index, item_ids, name)
  q = np.asarray(example_queries, dtype=np.float32)
  if q.ndim != 2 or not np.isfinite(q).all():
    raise sl.ExportError(f"model {name!r}: example_queries must be a finite [Q, d] float32 array, got {list(q.shape)}")
  k = min(int(k), len(ids))
  rows, dist = searcher.search_batched(q, final_num_neighbors=k)
  rows = np.asarray(rows)
  expected = {"queries": q, "scores": np.asarray(dist, np.float32),
              "item_ids": np.array([[ids[j].encode() for j in r] for r in rows], dtype=bytes)}

  with sl.staging_dir(base_dir, name) as tmp:
    sdir = os.path.join(tmp, "searcher")
    os.makedirs(sdir)
    searcher.serialize(sdir, relative_path=True)
    with open(os.path.join(tmp, "item_ids.txt"), "w", encoding="utf-8") as f:
      f.write("".join(x + "\n" for x in ids))
    atomic.save_npz(os.path.join(tmp, sl.EXPECTED_OUTPUTS_FILE), **expected)
    version, _ = sl.next_version_dir(base_dir, name)
    manifest = sl.build_manifest(
        name=name, version=version, kind="scann_searcher", artefact="scann_searcher",
        inputs={"queries": {"dtype": "float32", "shape": [None, int(q.shape[1])]}},
        outputs={"item_ids": {"dtype": "string", "shape": [None, k]}, "scores": {"dtype": "float32", "shape": [None, k]}},
        files=sl.file_inventory(tmp), signature_name="", needs_scann_ops=False, data_fingerprint=data_fingerprint,
        metrics=metrics, description=description or "ScaNN searcher (pybind) + item-ID mapping",
        expected_outputs={"file": sl.EXPECTED_OUTPUTS_FILE, "rtol": rtol, "atol": atol},
        extra={**dict(extra or {}), "k": k, "num_items": len(ids), "dim": int(q.shape[1]),
               "load": "scann.scann_ops_pybind.load_searcher('<version>/searcher')",
               "params": dict(getattr(index, "params", {}) or {})})
    manifest["serving_note"] = ("not a SavedModel: load with scann.scann_ops_pybind.load_searcher; row i of the "
                                "searcher is the item on line i of item_ids.txt")
    published, path = sl.publish_with_manifest(tmp, base_dir, name, version, manifest)
  return ExportResult(name=name, version=published, path=path, manifest=manifest)


def _searcher_and_ids(index, item_ids, name: str):
  """(scann_ops_pybind searcher, [N] str item ids) of an index / searcher / saved directory, checked."""
  if isinstance(index, (str, os.PathLike)):
    index = _load_searcher_dir(os.fspath(index), name)
  searcher = index
  if hasattr(index, "searcher") and hasattr(index, "item_ids"):
    if getattr(index, "kind", "scann") != "scann" or index.searcher is None:
      raise sl.ExportError(f"model {name!r}: the index is {getattr(index, 'kind', '?')!r}, not ScaNN; brute-force "
                           "indexes are served by the retrieval SavedModel (export_brute_force_retrieval)")
    searcher = index.searcher
    item_ids = index.item_ids if item_ids is None else item_ids
  if not hasattr(searcher, "serialize") or not hasattr(searcher, "search_batched"):
    raise sl.ExportError(f"model {name!r}: expected a scann_ops_pybind searcher, got {type(searcher).__name__}")
  if item_ids is None:
    raise sl.ExportError(f"model {name!r}: item_ids are required to map ScaNN rows to items")
  ids = [str(x) for x in np.asarray(item_ids, dtype=object)]
  for i, x in enumerate(ids):
    if "\n" in x or "\r" in x:
      raise sl.ExportError(f"model {name!r}: item id at row {i} ({x!r}) contains a newline")
  size = searcher.size() if hasattr(searcher, "size") else len(ids)
  if size != len(ids):
    raise sl.ExportError(f"model {name!r}: the searcher holds {size} rows but {len(ids)} item ids were given")
  return searcher, ids


def _load_searcher_dir(path: str, name: str):
  """A saved index directory: ``RetrievalIndex.save`` output (manifest.json + scann/) or a bare ScaNN
  ``serialize`` directory (scann_assets.pbtxt)."""
  if os.path.isfile(os.path.join(path, "manifest.json")) and os.path.isdir(os.path.join(path, "scann")):
    from semrec.towers import RetrievalIndex
    return RetrievalIndex.load(path)
  if os.path.isfile(os.path.join(path, "scann_assets.pbtxt")):
    try:
      from scann.scann_ops.py import scann_ops_pybind
    except ImportError as e:
      raise ImportError(_SCANN_HINT) from e
    return scann_ops_pybind.load_searcher(path)
  raise sl.ExportError(f"model {name!r}: {path} is neither a saved semrec.towers index (manifest.json + scann/) "
                       "nor a ScaNN searcher directory (scann_assets.pbtxt)")
