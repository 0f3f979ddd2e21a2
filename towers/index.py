"""Top-k retrieval indexes over candidate embeddings: ScaNN and exact brute force.

Shape letters: N candidates, Q queries, d embedding width, k neighbours.

``build_index(embeddings, item_ids, kind="auto")`` returns a ``RetrievalIndex`` with a numpy API
(``search(queries, k) -> (scores [Q, k], ids [Q, k])``), ``save(dir)`` / ``RetrievalIndex.load(dir)``
and ``to_keras_layer()``, which returns the matching TFRS layer (``tfrs.layers.factorized_top_k.ScaNN``
or ``BruteForce``) indexed with the same candidates. ScaNN's own guidance is that below ~20k items
an exact search is as fast as a tree + AH searcher, so ``kind="auto"`` picks brute force there.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Optional

import numpy as np

KINDS = ("auto", "scann", "brute_force")
_SCANN_HINT = "ScaNN is not importable; install it with `pip install 'scann[tf]==1.4.2'` (built for TF 2.20)."


@dataclasses.dataclass
class IndexConfig:
  """How to build a retrieval index.

  Attributes:
    kind: "auto" (brute force below ``brute_force_below`` items, else ScaNN), "scann" or "brute_force".
    k: Default number of neighbours returned by ``search``.
    brute_force_below: Catalogue size under which "auto" picks brute force.
    num_leaves: ScaNN tree leaves; default round(sqrt(N)) (ScaNN's rule of thumb: leaves ~ sqrt(N) balances
      the cost of scoring the centroids against the cost of scoring the points of the searched leaves).
    num_leaves_to_search: Leaves probed per query. Default: calibrated when the index is built with
      ``calibration_queries`` (the served query embeddings): the fewest leaves, on a geometric grid, whose
      recall@``calibration_k`` against exact search on those queries reaches ``target_recall``; without them
      max(10, num_leaves // 20) (5% of the tree as in the ScaNN README example, at least 10).
    dimensions_per_block: ScaNN AH block size (2 is ScaNN's recommended setting for AH).
    anisotropic_quantization_threshold: ScaNN AH noise-shaping threshold (0.2 is the ScaNN README value
      for dot product).
    reorder: Candidates rescored exactly after AH per search for the index's k; default
      max(reorder_factor * k, 100). A search for another k rescores max(reorder_factor * k, 100).
    soar_lambda: ScaNN's SOAR spilling for dot product (Sun et al., "SOAR", NeurIPS 2023): each item is also
      assigned to a second leaf whose residual is near-orthogonal to its first, so a query whose true
      neighbour sits in a leaf it does not probe still finds it through the second; lambda = 1 is the paper's
      and ScaNN's recommended setting. The tree then holds each item twice (its partition index doubles; the
      AH codes and the dataset do not). None: no spilling (TFRS's ScaNN layer, ``to_keras_layer``, has none).
    reorder_factor: Exactly rescored candidates per neighbour returned (AH scores rank well but not exactly:
      rescoring 10x as many as asked recovers the exact order of the top k).
    target_recall: Recall the calibration aims at on the calibration queries (above the .95 served target, so
      that other queries of the same distribution keep .95).
    calibration_k: The k of the calibration's recall.
    training_sample_size: Points sampled to train the tree and the AH codebooks.
    num_threads: Search threads (0 = ScaNN's default, all cores).
  """
  kind: str = "auto"
  k: int = 100
  brute_force_below: int = 20_000
  num_leaves: Optional[int] = None
  num_leaves_to_search: Optional[int] = None
  dimensions_per_block: int = 2
  anisotropic_quantization_threshold: float = 0.2
  reorder: Optional[int] = None
  soar_lambda: Optional[float] = 1.0
  reorder_factor: int = 10
  target_recall: float = 0.97
  calibration_k: int = 10
  training_sample_size: int = 100_000
  num_threads: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"IndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
    if self.k < 1:
      raise ValueError(f"IndexConfig.k must be >= 1, got {self.k}")
    for f in ("num_leaves", "num_leaves_to_search", "reorder"):
      v = getattr(self, f)
      if v is not None and v < 1:
        raise ValueError(f"IndexConfig.{f} must be >= 1 or None, got {v}")
    if self.reorder_factor < 1 or self.calibration_k < 1:
      raise ValueError(f"IndexConfig.reorder_factor and calibration_k must be >= 1, got {self.reorder_factor} "
                       f"and {self.calibration_k}")
    if not 0 < self.target_recall <= 1:
      raise ValueError(f"IndexConfig.target_recall must be in (0, 1], got {self.target_recall}")

  def resolved_kind(self, n: int) -> str:
    if self.kind != "auto":
      return self.kind
    return "brute_force" if n < self.brute_force_below else "scann"

  def reorder_for(self, k: int) -> int:
    """Candidates rescored exactly for a search of ``k`` neighbours: max(reorder_factor * k, 100)."""
    return max(self.reorder_factor * int(k), 100)

  def scann_params(self, n: int) -> dict:
    """The ScaNN tree/AH/reorder parameters for a catalogue of ``n`` items."""
    leaves = self.num_leaves or max(1, int(round(math.sqrt(n))))
    leaves = min(leaves, n)
    search = self.num_leaves_to_search or max(10, leaves // 20)
    return {"num_leaves": leaves, "num_leaves_to_search": min(search, leaves),
            "reorder": self.reorder or self.reorder_for(self.k),
            "dimensions_per_block": self.dimensions_per_block,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "soar_lambda": self.soar_lambda, "training_sample_size": min(self.training_sample_size, n)}


def _import_scann():
  try:
    from scann.scann_ops.py import scann_ops_pybind
  except ImportError as e:  # pragma: no cover - scann is a pinned dependency
    raise ImportError(_SCANN_HINT) from e
  return scann_ops_pybind


def _check_embeddings(embeddings, item_ids):
  emb = np.asarray(embeddings)
  if emb.ndim != 2 or emb.shape[0] == 0:
    raise ValueError(f"candidate embeddings must be a non-empty [N, d] array, got shape {emb.shape}")
  emb = emb.astype(np.float32, copy=False)
  bad = ~np.isfinite(emb).all(axis=1)
  ids = np.asarray(item_ids, dtype=object) if item_ids is not None else np.arange(len(emb)).astype(str).astype(object)
  if len(ids) != len(emb):
    raise ValueError(f"{len(ids)} item ids for {len(emb)} candidate embeddings")
  if bad.any():
    raise ValueError(f"candidate embedding of item {ids[np.argmax(bad)]!r} has NaN/inf values "
                     f"({int(bad.sum())} bad rows)")
  if len(set(ids.tolist())) != len(ids):
    raise ValueError("duplicate item ids in the index")
  return np.ascontiguousarray(emb), ids


def multi_query_top_k(search_rows: Callable, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-k of multi-interest queries [Q, K, d] (score = max over the K vectors): (scores [Q, k], rows [Q, k]).

  Each of the Q * K vectors is searched with ``search_rows(vectors [Q*K, d], k)`` -> (scores, rows); a query's
  K lists are merged keeping each row once, at its best score, best first. With an exact ``search_rows`` the
  result is exact: an item in the true top k under the max score is in the top k of its best vector (any
  item beating it there also beats it overall).
  """
  q = np.asarray(queries, np.float32)
  n, n_vec, d = q.shape
  s, r = search_rows(q.reshape(n * n_vec, d), k)
  s, r = s.reshape(n, -1), r.reshape(n, -1)
  order = np.argsort(-s, axis=1, kind="stable")
  s, r = np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)
  k = min(k, s.shape[1] // max(n_vec, 1))
  out_s, out_r = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
  for i in range(n):
    _, first = np.unique(r[i], return_index=True)  # first = best occurrence (rows are sorted by score)
    keep = np.sort(first)[:k]
    out_s[i], out_r[i] = s[i, keep], r[i, keep]
  return out_s, out_r


def brute_force_top_k(queries: np.ndarray, embeddings: np.ndarray, k: int,
                      batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Exact dot-product top-k: (scores [Q, k] float32, rows [Q, k] int64), best first.

  Scores are computed in query chunks of ``batch_size`` with ``tf.linalg.matmul`` + ``tf.math.top_k``
  (what ``tfrs.layers.factorized_top_k.BruteForce`` does), so memory stays at batch_size * N floats.
  Multi-interest queries [Q, K, d] are scored by the max over their K vectors (``multi_query_top_k``).
  """
  import tensorflow as tf
  k = min(k, embeddings.shape[0])
  if np.ndim(queries) == 3:
    return multi_query_top_k(lambda v, kk: brute_force_top_k(v, embeddings, kk, batch_size), queries, k)
  cands = tf.constant(embeddings)
  scores_out, rows_out = [], []
  for s in range(0, len(queries), batch_size):
    q = tf.constant(np.asarray(queries[s:s + batch_size], dtype=np.float32))
    sc, idx = tf.math.top_k(tf.linalg.matmul(q, cands, transpose_b=True), k=k)
    scores_out.append(sc.numpy())
    rows_out.append(idx.numpy().astype(np.int64))
  if not scores_out:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate(scores_out), np.concatenate(rows_out)


class RetrievalIndex:
  """A built top-k index: ``search`` returns item ids and dot-product scores.

  Attributes:
    kind: "scann" or "brute_force".
    item_ids: [N] object array; row i of the index is item ``item_ids[i]``.
    config: The ``IndexConfig`` it was built with.
    params: The resolved build parameters (ScaNN leaves, reorder, ...), for reports.
    build_seconds: Wall time of the build.
  """

  def __init__(self, kind, item_ids, embeddings, config, searcher=None, params=None, build_seconds=0.0):
    self.kind = kind
    self.item_ids = np.asarray(item_ids, dtype=object)
    self.embeddings = embeddings
    self.config = config
    self.searcher = searcher
    self.params = params or {}
    self.build_seconds = build_seconds

  def __len__(self):
    return len(self.item_ids)

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  def search_rows(self, queries, k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, rows [Q, k] int64) for ``queries`` [Q, d] float32, or multi-interest queries
    [Q, K, d] (score = max over the K vectors, ``multi_query_top_k``)."""
    k = min(k or self.config.k, len(self))
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
      q = q[None]
    if q.ndim not in (2, 3) or q.shape[-1] != self.dim:
      raise ValueError(f"queries must be [Q, {self.dim}] or [Q, K, {self.dim}], got shape {q.shape}")
    if not np.isfinite(q).all():
      bad = ~np.isfinite(q.reshape(len(q), -1)).all(axis=1)
      raise ValueError(f"query row {int(np.argmax(bad))} has NaN/inf values")
    if q.ndim == 3:
      return multi_query_top_k(self.search_rows, q, k)
    if self.kind == "brute_force":
      return brute_force_top_k(q, self.embeddings, k)
    return self._scann_rows(q, k, self.params["num_leaves_to_search"])

  def _scann_rows(self, q: np.ndarray, k: int, leaves_to_search: int) -> tuple[np.ndarray, np.ndarray]:
    """ScaNN search of [Q, d] queries: ``leaves_to_search`` leaves, AH scoring, exact rescoring of
    ``reorder`` (the index's k) or ``config.reorder_for(k)`` candidates; batches on every core."""
    reorder = min(len(self), max(self.config.reorder or self.config.reorder_for(k), k))
    search = self.searcher.search_batched_parallel if len(q) >= 64 else self.searcher.search_batched
    rows, scores = search(q, final_num_neighbors=k, pre_reorder_num_neighbors=reorder,
                          leaves_to_search=int(leaves_to_search))
    return np.asarray(scores, np.float32), np.asarray(rows, np.int64)

  def search(self, queries, k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, item ids [Q, k] object) for ``queries`` [Q, d] or [Q, K, d] float32."""
    scores, rows = self.search_rows(queries, k)
    return scores, self.item_ids[rows]

  def to_keras_layer(self, query_model=None, k: Optional[int] = None):
    """The TFRS top-k layer over the same candidates (ScaNN or BruteForce), returning item ids."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    k = min(k or self.config.k, len(self))
    ids = tf.constant(self.item_ids.astype(str))
    cands = tf.constant(self.embeddings)
    if self.kind == "brute_force":
      return tfrs.layers.factorized_top_k.BruteForce(query_model=query_model, k=k).index(cands, ids)
    p = self.params
    layer = tfrs.layers.factorized_top_k.ScaNN(
        query_model=query_model, k=k, num_leaves=p["num_leaves"], num_leaves_to_search=p["num_leaves_to_search"],
        dimensions_per_block=p["dimensions_per_block"], num_reordering_candidates=max(p["reorder"], k))
    return layer.index(cands, ids)

  def save(self, directory: str) -> str:
    """Writes the index (ScaNN assets or embeddings, item ids, manifest) atomically to ``directory``."""
    from semrec.atomic import atomic_directory
    with atomic_directory(directory) as tmp:
      np.save(os.path.join(tmp, "item_ids.npy"), self.item_ids.astype(str))
      np.save(os.path.join(tmp, "embeddings.npy"), self.embeddings)
      if self.kind == "scann":
        scann_dir = os.path.join(tmp, "scann")
        os.makedirs(scann_dir)
        self.searcher.serialize(scann_dir, relative_path=True)
      manifest = {"kind": self.kind, "num_items": len(self), "dim": self.dim, "params": self.params,
                  "config": dataclasses.asdict(self.config), "build_seconds": self.build_seconds}
      with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return directory

  @classmethod
  def load(cls, directory: str) -> "RetrievalIndex":
    """Reloads an index written by ``save``."""
    from semrec.atomic import read_manifest
    manifest = read_manifest(directory, "retrieval index")
    item_ids = np.load(os.path.join(directory, "item_ids.npy")).astype(object)
    emb = np.load(os.path.join(directory, "embeddings.npy"))
    config = IndexConfig(**manifest["config"])
    searcher = None
    if manifest["kind"] == "scann":
      searcher = _import_scann().load_searcher(os.path.join(directory, "scann"))
    return cls(manifest["kind"], item_ids, emb, config, searcher, manifest["params"], manifest["build_seconds"])


def build_index(embeddings, item_ids=None, kind: Optional[str] = None,
                config: Optional[IndexConfig] = None, calibration_queries: Optional[np.ndarray] = None,
                **overrides) -> RetrievalIndex:
  """Builds a top-k index over candidate embeddings.

  Args:
    embeddings: [N, d] float32 candidate embeddings (rows with NaN/inf raise, naming the item).
    item_ids: [N] item ids (default "0".."N-1").
    kind: Shortcut for ``config.kind`` ("auto", "scann", "brute_force").
    config: An ``IndexConfig``; ``overrides`` replace its fields.
    calibration_queries: [Q, d] or multi-interest [Q, K, d] query embeddings of the served model: with
      ``num_leaves_to_search=None``, a ScaNN index searches the fewest leaves that reach
      ``config.target_recall`` on them (``calibrate_leaves_to_search``; the table is in ``params``).

  Returns:
    A ``RetrievalIndex``.
  """
  config = config or IndexConfig()
  if kind is not None:
    overrides["kind"] = kind
  if overrides:
    config = dataclasses.replace(config, **overrides)
  emb, ids = _check_embeddings(embeddings, item_ids)
  resolved = config.resolved_kind(len(emb))
  t0 = time.perf_counter()
  if resolved == "brute_force":
    return RetrievalIndex("brute_force", ids, emb, config, params={"exact": True},
                          build_seconds=time.perf_counter() - t0)
  scann = _import_scann()
  p = config.scann_params(len(emb))
  builder = scann.builder(emb, config.k, "dot_product")
  builder = builder.tree(num_leaves=p["num_leaves"], num_leaves_to_search=p["num_leaves_to_search"],
                         training_sample_size=p["training_sample_size"], soar_lambda=p["soar_lambda"])
  builder = builder.score_ah(p["dimensions_per_block"],
                             anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"],
                             training_sample_size=p["training_sample_size"])
  builder = builder.reorder(p["reorder"])
  searcher = builder.build()
  if config.num_threads:
    searcher.set_num_threads(config.num_threads)
  index = RetrievalIndex("scann", ids, emb, config, searcher, p, time.perf_counter() - t0)
  if config.num_leaves_to_search is None and calibration_queries is not None and len(calibration_queries):
    t1 = time.perf_counter()
    p["num_leaves_to_search"], p["calibration"] = calibrate_leaves_to_search(index, calibration_queries)
    index.searcher = _with_leaves_to_search(index.searcher, p["num_leaves_to_search"])
    p["calibration"]["seconds"] = round(time.perf_counter() - t1, 3)
  return index


def _with_leaves_to_search(searcher, leaves: int):
  """The same searcher (tree, AH codes, dataset) whose default leaves to search is ``leaves``: its serialised
  config is rewritten and reloaded, so whoever loads a saved or exported copy
  (``scann_ops_pybind.load_searcher``) searches the calibrated number of leaves without being told."""
  import tempfile
  from scann.proto import scann_pb2
  with tempfile.TemporaryDirectory(prefix="semrec_scann_") as tmp:
    searcher.serialize(tmp, relative_path=True)
    path = os.path.join(tmp, "scann_config.pb")
    config = scann_pb2.ScannConfig()
    with open(path, "rb") as f:
      config.ParseFromString(f.read())
    config.partitioning.query_spilling.max_spill_centers = int(leaves)
    with open(path, "wb") as f:
      f.write(config.SerializeToString())
    return _import_scann().load_searcher(tmp)


def calibrate_leaves_to_search(index: RetrievalIndex, queries: np.ndarray) -> tuple[int, dict]:
  """(leaves to search, report): the fewest leaves, on the geometric grid 1, 2, 3, 4, 6, 8, 11, 16, ... (steps of
  about sqrt(2)) up to every leaf, whose recall@``calibration_k`` against exact search on ``queries`` reaches
  ``index.config.target_recall``; every leaf when none does. Recall grows with the leaves searched, so the
  first grid point that reaches the target is the cheapest; the exact top k is computed once.

  Args:
    index: a ScaNN ``RetrievalIndex``.
    queries: [Q, d] or multi-interest [Q, K, d] float32 query embeddings (searched per vector and merged).
  """
  cfg, leaves = index.config, int(index.params["num_leaves"])
  q = np.asarray(queries, np.float32)
  k = min(cfg.calibration_k, len(index))
  _, exact = brute_force_top_k(q, index.embeddings, k)
  grid, v = [], 1.0
  while int(round(v)) < leaves:
    if not grid or int(round(v)) > grid[-1]:
      grid.append(int(round(v)))
    v *= math.sqrt(2)
  grid.append(leaves)
  tried = {}
  for n in grid:
    if q.ndim == 3:
      _, rows = multi_query_top_k(lambda x, kk: index._scann_rows(x, kk, n), q, k)
    else:
      _, rows = index._scann_rows(q, k, n)
    tried[n] = float(np.mean([len(set(a.tolist()) & set(e.tolist())) for a, e in zip(rows, exact)]) / k)
    if tried[n] >= cfg.target_recall:
      break
  chosen = next((n for n, r in tried.items() if r >= cfg.target_recall), leaves)
  return chosen, {"target_recall": cfg.target_recall, "k": k, "num_queries": int(len(q)),
                  "recall_by_leaves": {str(n): round(r, 4) for n, r in tried.items()}}


def recall_against_exact(index: RetrievalIndex, queries: np.ndarray, k: int = 10) -> float:
  """Mean |approx top-k ∩ exact top-k| / k over ``queries`` (exact = numpy/TF brute force)."""
  _, approx = index.search_rows(queries, k)
  _, exact = brute_force_top_k(np.asarray(queries, np.float32), index.embeddings, k)
  hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
  return float(np.mean(hits) / min(k, len(index)))


def index_report(index: RetrievalIndex, queries: np.ndarray, k: int = 10, repeats: int = 3) -> dict:
  """Recall@k of ``index`` against brute force and per-batch query latency of both (best of ``repeats``)."""
  queries = np.asarray(queries, np.float32)

  def _time(fn):
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - t0)
    return best

  t_index = _time(lambda: index.search_rows(queries, k))
  t_exact = _time(lambda: brute_force_top_k(queries, index.embeddings, k))
  return {"kind": index.kind, "num_items": len(index), "num_queries": len(queries), "k": k,
          f"recall@{k}": recall_against_exact(index, queries, k),
          "index_batch_seconds": t_index, "brute_force_batch_seconds": t_exact,
          "speedup_vs_brute_force": t_exact / max(t_index, 1e-12), "params": index.params,
          "build_seconds": index.build_seconds}


def build_and_save_index(embeddings, item_ids, out_dir: str, kind: str = "auto", k: int = 100,
                         queries: Optional[np.ndarray] = None, eval_k: int = 10, num_eval_queries: int = 1000,
                         seed: int = 0, repeats: int = 3, **overrides) -> dict:
  """What ``semrec index`` runs: build an index over candidate embeddings, save it, report quality/latency.

  Args:
    embeddings: [N, d] candidate embeddings (e.g. ``embed_candidates(model, inputs)``).
    item_ids: [N] item ids.
    out_dir: Where the index is written (``RetrievalIndex.save``); ``report.json`` goes inside it.
    kind: "auto" | "scann" | "brute_force".
    k: Default neighbours of the saved index.
    queries: [Q, d] or multi-interest [Q, K, d] evaluation queries (e.g. query-tower embeddings): the even rows
      calibrate ScaNN's leaves to search (``build_index(calibration_queries=...)``), the odd rows, which the
      calibration never saw, measure recall and speed; default: ``num_eval_queries`` candidate rows with
      Gaussian noise, split the same way (a stand-in when no query log is at hand; documented in the report).
    eval_k: The k of the recall-vs-brute-force report.
    repeats: Timed runs of each search (the best is reported).

  Returns:
    The report dict (kind, params, recall@eval_k vs brute force on the held-out queries, per-batch latency of
    both and the speed-up, build time).
  """
  emb = np.asarray(embeddings, np.float32)
  source = "given"
  if queries is None:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(emb), size=min(num_eval_queries, len(emb)), replace=False)
    base = emb[rows]
    queries = base + 0.1 * base.std() * rng.standard_normal(base.shape).astype(np.float32)
    source = f"{len(rows)} candidate rows + N(0, (0.1 std)^2) noise"
  queries = np.asarray(queries, np.float32)
  calibration, held_out = (queries[0::2], queries[1::2]) if len(queries) >= 2 else (queries, queries)
  index = build_index(emb, item_ids, kind=kind, k=k, calibration_queries=calibration, **overrides)
  report = index_report(index, held_out, k=min(eval_k, len(index)), repeats=repeats)
  report["query_source"] = source
  report["queries"] = {"calibration": int(len(calibration)), "evaluation": int(len(held_out)),
                       "shape": list(queries.shape[1:]), "split": "even rows calibrate, odd rows are measured"}
  index.save(out_dir)
  from semrec.atomic import write_json
  write_json(os.path.join(out_dir, "report.json"), report, default=str)
  return report
