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
    num_leaves: ScaNN tree leaves; default round(sqrt(N)).
    num_leaves_to_search: Leaves probed per query; default max(10, num_leaves // 20) (5% of the tree as in
      the ScaNN README example, at least 10 so small trees keep their recall; at most num_leaves).
    dimensions_per_block: ScaNN AH block size (2 is ScaNN's recommended setting for AH).
    anisotropic_quantization_threshold: ScaNN AH noise-shaping threshold (0.2 is the ScaNN README value
      for dot product).
    reorder: Candidates rescored exactly after AH; default max(10 * k, 100).
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

  def resolved_kind(self, n: int) -> str:
    if self.kind != "auto":
      return self.kind
    return "brute_force" if n < self.brute_force_below else "scann"

  def scann_params(self, n: int) -> dict:
    """The ScaNN tree/AH/reorder parameters for a catalogue of ``n`` items."""
    leaves = self.num_leaves or max(1, int(round(math.sqrt(n))))
    leaves = min(leaves, n)
    search = self.num_leaves_to_search or max(10, leaves // 20)
    return {"num_leaves": leaves, "num_leaves_to_search": min(search, leaves),
            "reorder": self.reorder or max(10 * self.k, 100),
            "dimensions_per_block": self.dimensions_per_block,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "training_sample_size": min(self.training_sample_size, n)}


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
    reorder = max(self.params.get("reorder", k), k)
    rows, scores = self.searcher.search_batched(q, final_num_neighbors=k, pre_reorder_num_neighbors=reorder)
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
                config: Optional[IndexConfig] = None, **overrides) -> RetrievalIndex:
  """Builds a top-k index over candidate embeddings.

  Args:
    embeddings: [N, d] float32 candidate embeddings (rows with NaN/inf raise, naming the item).
    item_ids: [N] item ids (default "0".."N-1").
    kind: Shortcut for ``config.kind`` ("auto", "scann", "brute_force").
    config: An ``IndexConfig``; ``overrides`` replace its fields.

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
                         training_sample_size=p["training_sample_size"])
  builder = builder.score_ah(p["dimensions_per_block"],
                             anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"],
                             training_sample_size=p["training_sample_size"])
  builder = builder.reorder(p["reorder"])
  searcher = builder.build()
  if config.num_threads:
    searcher.set_num_threads(config.num_threads)
  return RetrievalIndex("scann", ids, emb, config, searcher, p, time.perf_counter() - t0)


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
                         seed: int = 0, **overrides) -> dict:
  """What ``semrec index`` runs: build an index over candidate embeddings, save it, report quality/latency.

  Args:
    embeddings: [N, d] candidate embeddings (e.g. ``embed_candidates(model, inputs)``).
    item_ids: [N] item ids.
    out_dir: Where the index is written (``RetrievalIndex.save``); ``report.json`` goes inside it.
    kind: "auto" | "scann" | "brute_force".
    k: Default neighbours of the saved index.
    queries: [Q, d] evaluation queries (e.g. query-tower embeddings); default: ``num_eval_queries``
      candidate rows with Gaussian noise (a stand-in when no query log is at hand; documented in the report).
    eval_k: The k of the recall-vs-brute-force report.

  Returns:
    The report dict (kind, params, recall@eval_k vs brute force, per-batch latency of both, build time).
  """
  index = build_index(embeddings, item_ids, kind=kind, k=k, **overrides)
  source = "given"
  if queries is None:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(index), size=min(num_eval_queries, len(index)), replace=False)
    base = index.embeddings[rows]
    queries = base + 0.1 * base.std() * rng.standard_normal(base.shape).astype(np.float32)
    source = f"{len(rows)} candidate rows + N(0, (0.1 std)^2) noise"
  report = index_report(index, queries, k=min(eval_k, len(index)), repeats=1)
  report["query_source"] = source
  index.save(out_dir)
  tmp = os.path.join(out_dir, f".report.json.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(report, f, indent=2, default=str)
  os.replace(tmp, os.path.join(out_dir, "report.json"))
  return report
