"""Serving the two-stage recommender: a user's history -> candidate sources -> merge -> SID ranker -> top-k.

Shape letters: N catalogue items, M merged candidates, S sources, H history length, d' query width.

``export_cascade`` writes ``<base>/cascade/<version>/`` (a new integer version, published atomically like every
export, see ``semrec.export.serving_layout``):

```
cascade/<version>/
  manifest.json              # kind "cascade": source order, quotas, M, per-source k, feature names, config,
                             # library versions, SHA-256 of every file below, the recorded requests' summary
  cascade_data.npz           # catalogue ids, SID codes, content; the train log (user, item, time, label)
  retriever_data.npz         # per learned source: candidate vectors [N, d'] and its query feature tables
  requests.json              # recorded requests and the in-memory cascade's top-k ids and scores for them
  models/<source>/1/         # each learned source's query tower (export_query_tower, TF Serving layout)
  models/ranker/1/           # the cascade ranker (export_ranker, with its item-vector cache)
```

The non-learned sources (fresh items, transition, content kNN, popularity) and the ranker's dense features are
deterministic functions of the catalogue and the train log, so the export stores those inputs and
``CascadeServer.load`` rebuilds them with the library functions that trained the cascade
(``semrec.ranking.build_sources``, ``CascadeFeaturizer``); requests then run through the same
``ScoreSource.retrieve`` -> ``merge_candidates`` -> ``CascadeFeaturizer.examples`` as the in-memory
``Cascade``. Only the learned parts run as SavedModels: each retriever's query tower (its dot product with the
exported candidate vectors is ``semrec.towers.evaluation.dot_scores``) and the ranker. The chain logic exists
once; the server adds request parsing and the top-k.

Request (``CascadeServer.recommend``): history item ids (most recent last), the request timestamp (the
dataset's time unit), optional ``user_id`` (the ranker's context reads the user's train activity; unknown or
None = a user without past), ``k``. Fallbacks: history ids not in the catalogue are dropped (listed by
``CascadeServer.parse``); an empty history is served by the sources that need none (fresh items, popularity,
the learned towers' empty-history query); a catalogue, or a set of sources, with fewer than M items gives fewer
candidates, and ``k`` beyond the candidates gives fewer items. A non-string history id, a NaN/inf or
non-integral timestamp, ``k < 1`` raise ``ValueError`` naming the field.

``semrec verify-export`` replays ``requests.json`` through ``CascadeServer`` in a fresh Python process
(``replay_recorded_requests``) and compares top-k ids (exactly) and scores (``atol``) with the in-memory
cascade's.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from semrec import atomic
from semrec.data import EvalSplit, ItemFeatures, Queries
from semrec.export import serving_layout as sl
from semrec.export.features import flatten_features
from semrec.export.serving_module import ExportResult
from semrec.ranking.candidates import MergedCandidates, ScoreSource, catalogue_index
from semrec.ranking.cascade import CascadeConfig, CascadeFeaturizer, CascadeStage, candidate_stage

CASCADE_KIND = "cascade"
DATA_FILE = "cascade_data.npz"
RETRIEVER_FILE = "retriever_data.npz"
REQUESTS_FILE = "requests.json"
MODELS_DIR = "models"
RANKER_NAME = "ranker"
ANONYMOUS_USER = "\x00anonymous"  # never a dataset user id: a request without user_id has no past activity
SCORE_ATOL = 1e-5


# ----------------------------------------------------------------------------------------------- requests


@dataclasses.dataclass
class CascadeRequest:
  """A parsed request: the known history (most recent last), the dropped unknown ids, time, user, exclude."""
  history: np.ndarray
  unknown: list
  timestamp: int
  user_id: str
  exclude: np.ndarray


def parse_request(history: Sequence[str], timestamp, index: pd.Index, user_id: Optional[str] = None,
                  exclude: Optional[Sequence[str]] = None) -> CascadeRequest:
  """Validates one request (see the module docstring); unknown history ids are dropped, in order."""
  if isinstance(history, (str, bytes)):
    raise ValueError("history: expected a sequence of item ids (most recent last), got one string")
  hist = list(history if history is not None else [])
  for i, h in enumerate(hist):
    if not isinstance(h, str):
      raise ValueError(f"history[{i}]: item ids must be strings, got {h!r} ({type(h).__name__})")
  if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Real):
    raise ValueError(f"timestamp: expected an integer time, got {timestamp!r}")
  if not math.isfinite(float(timestamp)) or float(timestamp) != int(timestamp):
    raise ValueError(f"timestamp: must be a finite integer (the dataset's time unit), got {timestamp!r}")
  if user_id is not None and not isinstance(user_id, str):
    raise ValueError(f"user_id: expected a string or None, got {user_id!r}")
  known = index.get_indexer(np.asarray(hist, dtype=object)) >= 0 if hist else np.zeros(0, bool)
  kept = np.asarray([h for h, ok in zip(hist, known) if ok], dtype=object)
  unknown = [h for h, ok in zip(hist, known) if not ok]
  ex = kept if exclude is None else np.asarray(list(exclude), dtype=object)
  return CascadeRequest(kept, unknown, int(timestamp), ANONYMOUS_USER if user_id is None else user_id, ex)


def request_queries(requests: Sequence[CascadeRequest]) -> Queries:
  """The ``Queries`` of parsed requests (no targets; the whole catalogue is a candidate)."""
  n = len(requests)
  return Queries(np.array([r.user_id for r in requests], dtype=object), [r.history for r in requests],
                 [np.zeros(0, dtype=object) for _ in range(n)], np.array([r.timestamp for r in requests], np.int64),
                 [r.exclude for r in requests], np.zeros(n, bool), None)


def final_top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple:
  """(rows [k'], scores [k']) of one query's merged candidates ``rows`` [M] ordered by the ranker's
  ``scores`` [M] (best first; equal scores keep the merge order; padding slots never returned), k' <= k."""
  ok = np.flatnonzero(np.asarray(rows) >= 0)
  order = ok[np.argsort(-np.asarray(scores, np.float64)[ok], kind="stable")][:int(k)]
  return np.asarray(rows)[order], np.asarray(scores, np.float32)[order]


# ----------------------------------------------------------------------------------------------- export


def _query_example(inputs, queries: Queries, max_history: int) -> dict:
  """Numpy query features (``semrec.towers.query_features``) of ``queries``, nested as the tower takes them."""
  from semrec.towers import query_features
  f = query_features(inputs, queries, np.arange(len(queries)), max_history)
  return {k: ({hk: hv.numpy() for hk, hv in v.items()} if k == "history" else v.numpy()) for k, v in f.items()}


def _default_requests(split, index: pd.Index, num: int) -> list:
  """Recorded requests: the first ``num`` test queries (their history, time and user), one with an empty
  history and one whose history holds an id unknown to the catalogue."""
  test = split.queries("test")
  out = []
  for r in range(min(num, len(test))):
    out.append({"history": [str(h) for h in test.histories[r]], "timestamp": int(test.timestamps[r]),
                "user_id": str(test.user_ids[r])})
  t = int(test.timestamps[0]) if len(test) else int(split.train["timestamp"].max()) + 1
  out.append({"history": [], "timestamp": t, "user_id": None})
  h = out[0]["history"][-3:] if out else []
  out.append({"history": ["\x01not-in-catalogue"] + h, "timestamp": t, "user_id": None})
  return out


def export_cascade(base_dir: str, cascade, split, item_features: ItemFeatures, retrievers: Optional[Mapping] = None,
                   knn_decay: float = 0.5, *, fresh_scorer: str = "content_knn",
                   sources: Optional[Sequence[ScoreSource]] = None,
                   quotas: Optional[dict] = None, requests: Optional[Sequence[dict]] = None, num_requests: int = 4,
                   k: int = 10, name: str = CASCADE_KIND, data_fingerprint: Optional[str] = None,
                   metrics: Optional[dict] = None) -> ExportResult:
  """Writes a trained cascade as ``<base_dir>/<name>/<next version>/`` (layout in the module docstring).

  Args:
    base_dir: Export base directory.
    cascade: The trained ``semrec.ranking.Cascade``.
    split: The ``EvalSplit`` it was trained on (its train log feeds the non-learned sources and features).
    item_features: The catalogue table the cascade used (``sid`` [N, L]; ``content`` [N, D] for the fresh-item
      and content-kNN sources).
    retrievers: {source name: (``TwoTowerRetriever``, ``RetrievalInputs``)}: the learned sources, in merge
      order (``semrec.ranking.run_two_stage``'s ``retrievers``).
    knn_decay: The content-kNN recency decay the sources were built with.
    fresh_scorer: What orders the fresh-item source ("content_knn" or a learned source's name; ``run_two_stage``'s
      "fresh_scorer").
    sources: The in-memory serving sources (default rebuilt with ``build_sources``); they compute the recorded
      requests' expected results.
    quotas: Merge quotas (default ``merge_candidates``' default).
    requests: Recorded requests ``[{"history": [ids], "timestamp": int, "user_id": str | None}]`` (default:
      ``num_requests`` test queries, an empty history and an unknown item).
    k: Items per recorded result.
    name: Model name under ``base_dir``.
  """
  from semrec.export.artefacts import export_query_tower
  from semrec.export.ranker import export_ranker
  from semrec.ranking.cascade import build_sources
  from semrec.ranking.model import needs_content
  from semrec.towers import embed_candidates
  retrievers = dict(retrievers or {})
  ids = np.asarray(item_features.item_ids, dtype=object)
  index = catalogue_index(ids)
  content = item_features.arrays.get("content")
  cfg = cascade.config
  if sources is None:
    sources = build_sources(split, ids, content, retrievers, cfg.fresh_window, knn_decay, seed=cfg.seed,
                            fresh_scorer=fresh_scorer)
  names = tuple(s.name for s in sources)
  if names != tuple(cascade.sources):
    raise sl.ExportError(f"model {name!r}: sources {names} differ from the cascade's {tuple(cascade.sources)}")
  if tuple(names[:len(retrievers)]) != tuple(retrievers):
    raise sl.ExportError(f"model {name!r}: the learned sources {tuple(retrievers)} must come first in the source "
                         f"order {names}")
  reqs = [dict(r) for r in (requests if requests is not None else _default_requests(split, index, num_requests))]
  parsed = [parse_request(r["history"], r["timestamp"], index, r.get("user_id")) for r in reqs]
  queries = request_queries(parsed)
  stage = candidate_stage(sources, queries, index, cfg, quotas)
  mem = cascade.final_scores(stage)
  for r, p, row, sc in zip(reqs, parsed, stage.merged.rows, mem):
    top, top_scores = final_top_k(row, sc, k)
    r.update(expected_item_ids=[str(ids[i]) for i in top], expected_scores=[float(s) for s in top_scores],
             dropped=list(p.unknown))
  m = stage.merged
  ex = cascade.cascade_featurizer.examples(MergedCandidates(m.rows[:1], m.ranks[:1], m.scores[:1], m.sources),
                                           queries.subset(np.arange(1)))
  rank_cfg = cascade.model.config
  dense = needs_content(rank_cfg.item_representation)
  tables, table_keys, learned = {}, {}, {}
  train = split.train
  with sl.staging_dir(base_dir, name) as tmp:
    models = os.path.join(tmp, MODELS_DIR)
    for src, (model, inputs) in retrievers.items():
      if list(np.asarray(inputs.item_features.item_ids, dtype=object)) != list(ids):
        raise sl.ExportError(f"model {name!r}: source {src!r} has a different catalogue than the cascade")
      max_h = int(model.config.max_history)
      export_query_tower(models, model.query_embedding, _query_example(inputs, queries, max_h), name=src,
                         data_fingerprint=data_fingerprint)
      keys = {}
      for f in inputs.feature_names:
        arr = np.asarray(inputs.tables[f])
        key = "table_" + hashlib.sha256(arr.tobytes() + str((arr.dtype, arr.shape)).encode()).hexdigest()[:16]
        tables[key] = arr
        keys[f] = key
      table_keys[src] = keys
      tables[f"candidates__{src}"] = embed_candidates(model, inputs)
      learned[src] = {"max_history": max_h, "features": list(inputs.feature_names),
                      "multi_interest": bool(getattr(model, "multi_interest", False))}
    cache = None if dense else {"item_id": ids.astype(str), "sid": np.asarray(item_features.arrays["sid"])}
    export_ranker(models, cascade.model, cascade.featurizer.features(ex), name=RANKER_NAME, item_cache=cache,
                  data_fingerprint=data_fingerprint)
    data = {"item_ids": ids.astype(str), "sid": np.asarray(item_features.arrays["sid"]),
            "train_user_id": train["user_id"].to_numpy().astype(str),
            "train_item_id": train["item_id"].to_numpy().astype(str),
            "train_timestamp": train["timestamp"].to_numpy(np.int64),
            "train_label": train["label"].to_numpy()}
    if content is not None:
      data["content"] = np.asarray(content)
    atomic.save_npz(os.path.join(tmp, DATA_FILE), **data)
    atomic.save_npz(os.path.join(tmp, RETRIEVER_FILE), **tables)
    atomic.write_json(os.path.join(tmp, REQUESTS_FILE), {"k": int(k), "atol": SCORE_ATOL, "requests": reqs})
    from semrec.ranking.cascade import cascade_feature_names
    version, _ = sl.next_version_dir(base_dir, name)
    extra = {"sources": list(names), "learned_sources": learned, "table_keys": table_keys,
             "quotas": None if quotas is None else dict(quotas), "candidates": int(cfg.candidates),
             "per_source": int(cfg.per_source), "fresh_window": int(cfg.fresh_window),
             "history_length": int(cfg.history_length), "knn_decay": float(knn_decay), "split_kind": split.kind,
             "fresh_scorer": str(fresh_scorer),
             "blend": {"source": cascade.blend_source, "weight": float(cascade.blend_weight)},
             "cascade_config": dataclasses.asdict(cfg), "cascade_features": cascade_feature_names(names),
             "ranker": {"tasks": list(rank_cfg.tasks), "history_length": int(rank_cfg.history_length),
                        "include_content": bool(dense), "include_history": bool(rank_cfg.use_history),
                        "item_cache": cache is not None},
             "k": int(k), "num_items": int(len(ids)), "recorded_requests": len(reqs)}
    manifest = sl.build_manifest(
        name=name, version=version, kind=CASCADE_KIND, artefact=CASCADE_KIND,
        inputs={"history": {"dtype": "string", "shape": [None]}, "timestamp": {"dtype": "int64", "shape": []},
                "user_id": {"dtype": "string", "shape": []}},
        outputs={"item_ids": {"dtype": "string", "shape": [None]}, "scores": {"dtype": "float32", "shape": [None]}},
        files=sl.file_inventory(tmp), data_fingerprint=data_fingerprint, metrics=metrics,
        description="user history -> candidate sources -> merge -> SID ranker -> top-k (semrec.export.CascadeServer)",
        expected_outputs={"atol": SCORE_ATOL, "requests": len(reqs)}, extra=extra)
    version, path = sl.publish_with_manifest(tmp, base_dir, name, version, manifest)
  return ExportResult(name=name, version=version, path=path, manifest=manifest)


# ----------------------------------------------------------------------------------------------- serving


class _ServingFeaturizer(CascadeFeaturizer):
  """``CascadeFeaturizer`` whose request context is counted from per-user arrays built once at load (each user's
  train times, sorted, and the running count of positives), so a request does neither sort the train log nor
  build a DataFrame; the values are ``context_features``' (``context_from_counts`` on the same counts)."""

  def __init__(self, item_features: ItemFeatures, train: pd.DataFrame, fresh_window: int, history_length: int):
    super().__init__(item_features, train, fresh_window, history_length)
    t = train["timestamp"].to_numpy(np.int64)
    y = train["label"].to_numpy(np.float64) if "label" in train.columns else np.zeros(len(train))
    self._users = {}
    for u, rows in train.groupby("user_id", sort=False).indices.items():
      order = rows[np.argsort(t[rows], kind="stable")]
      self._users[u] = (t[order], np.concatenate([[0.0], np.cumsum(y[order])]))

  def context(self, queries: Queries) -> np.ndarray:
    from semrec.ranking.data import context_from_counts
    ts = np.asarray(queries.timestamps, np.int64)
    activity, positives = np.zeros(len(ts), np.int64), np.zeros(len(ts))
    for i, (u, t) in enumerate(zip(queries.user_ids, ts)):
      if u in self._users:
        times, cum = self._users[u]
        activity[i] = np.searchsorted(times, t, side="left")
        positives[i] = cum[activity[i]]
    return context_from_counts(ts, activity, positives)


def _tower_score_fn(fn, cands: np.ndarray, tables: dict, index: pd.Index, max_history: int):
  """A ``ScoreSource`` score function over an exported query tower: the tower's flat inputs gathered as
  ``semrec.towers.query_features`` does (unknown / padding ids -> the tables' last, zero row), its vectors'
  ``dot_scores`` with the exported candidate vectors."""
  import tensorflow as tf
  from semrec.towers.evaluation import dot_scores
  pad = len(index)

  def score_fn(queries: Queries, rows: np.ndarray) -> np.ndarray:
    sub = queries.subset(rows)
    hist = sub.padded_histories(max_history)
    r = index.get_indexer(hist.reshape(-1)).reshape(hist.shape)
    r = np.where(r < 0, pad, r)
    feats = {"history": {"item_id": hist.astype(str), **{k: v[r] for k, v in tables.items()}},
             "user_id": sub.user_ids.astype(str), "timestamp": np.asarray(sub.timestamps, np.int64)}
    flat, _ = flatten_features(feats)
    q = fn(**{k: tf.constant(v) for k, v in flat.items()})["embedding"].numpy()
    return dot_scores(q, cands)

  return score_fn


def _share_score_fns(sources: list) -> list:
  """Sources built on the same scorer (fresh items and content kNN share the kNN's ``scores``) score a request
  once: the scorer's last (queries, rows) result is reused when the next source asks for the same ones (same
  values; one catalogue pass instead of two)."""
  memo = {}
  for src in sources:
    fn = src.score_fn
    key = (getattr(fn, "__self__", None) and id(fn.__self__), getattr(fn, "__func__", fn))
    if sum(1 for o in sources if (getattr(o.score_fn, "__self__", None) and id(o.score_fn.__self__),
                                  getattr(o.score_fn, "__func__", o.score_fn)) == key) < 2:
      continue
    if key not in memo:
      memo[key] = _last_call_cache(fn)
    src.score_fn = memo[key]
  return sources


def _last_call_cache(fn):
  """``fn`` remembering its last call; a lock makes concurrent callers (the server's source threads) wait for
  the one computing instead of computing twice."""
  import threading
  last, lock = {}, threading.Lock()

  def cached(queries: Queries, rows: np.ndarray) -> np.ndarray:
    rows_key = np.asarray(rows, np.int64).tobytes()
    with lock:
      if last.get("queries") is not queries or last.get("rows") != rows_key:
        last.update(queries=queries, rows=rows_key, out=fn(queries, rows))
      return last["out"].copy()

  return cached


def _load_signature(models_dir: str, name: str):
  """The ``serving_default`` function of the latest version of ``<models_dir>/<name>/`` (the loaded SavedModel is
  kept alive on the function)."""
  import tensorflow as tf
  version = sl.latest_version(models_dir, name)
  if version is None:
    raise sl.ExportError(f"{models_dir}/{name}: no SavedModel version directory")
  loaded = tf.saved_model.load(os.path.join(models_dir, name, str(version)))
  fn = loaded.signatures[sl.SIGNATURE_NAME]
  fn._semrec_saved_model = loaded
  return fn


class CascadeServer:
  """The exported cascade, loaded: ``recommend(history, timestamp, k) -> (item_ids, scores)``.

  Build with ``CascadeServer.load(version_dir)``; see the module docstring for the request and its fallbacks.
  """

  def __init__(self, path: str, manifest: dict, index: pd.Index, sources: list, featurizer: CascadeFeaturizer,
               ranking_featurizer, ranker_fn, config: CascadeConfig, quotas: Optional[dict]):
    self.path, self.manifest, self.index = path, manifest, index
    self.item_ids = np.asarray(index, dtype=object)
    self.sources, self.featurizer, self.ranking_featurizer = sources, featurizer, ranking_featurizer
    self.ranker_fn, self.config, self.quotas = ranker_fn, config, quotas
    from concurrent.futures import ThreadPoolExecutor
    # Sources wait mostly in TensorFlow / NumPy kernels, which release the GIL: threads overlap them.
    self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(sources), 2 * (os.cpu_count() or 1))),
                                    thread_name_prefix="semrec-cascade-source")

  @classmethod
  def load(cls, path: str) -> "CascadeServer":
    """Loads ``<base>/cascade/<version>/`` (``ExportError`` naming the file if it is not a cascade export)."""
    from semrec.ranking.cascade import build_sources
    from semrec.ranking.data import RankingFeaturizer
    manifest = sl.read_manifest(path)
    if manifest.get("kind") != CASCADE_KIND:
      raise sl.ExportError(f"{path}: manifest kind is {manifest.get('kind')!r}, not {CASCADE_KIND!r}")
    x = manifest["extra"]
    with np.load(os.path.join(path, DATA_FILE), allow_pickle=False) as d:
      ids = d["item_ids"].astype(object)
      arrays = {"sid": d["sid"]}
      if "content" in d.files:
        arrays["content"] = d["content"]
      train = pd.DataFrame({"user_id": d["train_user_id"].astype(object), "item_id": d["train_item_id"].astype(object),
                            "timestamp": d["train_timestamp"], "label": d["train_label"]})
    index = catalogue_index(ids)
    feats = ItemFeatures(ids, arrays)
    split = EvalSplit(x["split_kind"], train, np.zeros(0, dtype=object), None, {})
    learned = {}
    with np.load(os.path.join(path, RETRIEVER_FILE), allow_pickle=False) as t:
      for src in [n for n in x["sources"] if n in x["learned_sources"]]:  # merge order (the manifest's keys are sorted)
        info = x["learned_sources"][src]
        tables = {f: t[key] for f, key in x["table_keys"][src].items()}
        learned[src] = _tower_score_fn(_load_signature(os.path.join(path, MODELS_DIR), src),
                                       t[f"candidates__{src}"], tables, index, info["max_history"])
    sources = _share_score_fns(build_sources(split, ids, arrays.get("content"), learned, x["fresh_window"],
                                             x["knn_decay"], seed=int(x["cascade_config"].get("seed", 0)),
                                             fresh_scorer=x.get("fresh_scorer", "content_knn")))
    if [s.name for s in sources] != list(x["sources"]):
      raise sl.ExportError(f"{path}: rebuilt sources {[s.name for s in sources]} differ from the manifest's "
                           f"{x['sources']}")
    featurizer = _ServingFeaturizer(feats, train, x["fresh_window"], x["history_length"])
    r = x["ranker"]
    ranking_featurizer = RankingFeaturizer(feats, history_length=r["history_length"], tasks=r["tasks"],
                                           include_content=r["include_content"], include_history=r["include_history"])
    cfg = CascadeConfig(**x["cascade_config"])
    return cls(path, manifest, index, sources, featurizer, ranking_featurizer,
               _load_signature(os.path.join(path, MODELS_DIR), RANKER_NAME), cfg, x["quotas"])

  def parse(self, history: Sequence[str], timestamp, user_id: Optional[str] = None) -> CascadeRequest:
    """The validated request (``parse_request``): known history, dropped unknown ids, time, user."""
    return parse_request(history, timestamp, self.index, user_id)

  def candidates(self, request: CascadeRequest) -> CascadeStage:
    """The request's sources, run concurrently on the server's thread pool, and merged candidates
    (``semrec.ranking.candidate_stage``)."""
    return candidate_stage(self.sources, request_queries([request]), self.index, self.config, self.quotas,
                           executor=self._pool)

  def rank(self, stage: CascadeStage) -> np.ndarray:
    """[1, M] float32 ranker probabilities of the merged candidates (-inf on padding), via the exported ranker:
    the user-side features (last item, history) sent once, broadcast over the candidates."""
    import tensorflow as tf
    ex = self.featurizer.examples(stage.merged, stage.queries)
    out = np.full(stage.merged.rows.shape, -np.inf, np.float32)
    if len(ex):
      f = self.ranking_featurizer.features(ex)
      f = {k: (v[:1] if k.startswith(("last_", "history_")) else v) for k, v in f.items()}
      p = self.ranker_fn(**{k: tf.constant(v) for k, v in f.items()})[self.manifest["extra"]["ranker"]["tasks"][0]]
      q, s = np.nonzero(stage.merged.rows >= 0)
      out[q, s] = p.numpy()
    return out

  def final_scores(self, stage: CascadeStage, probabilities: np.ndarray) -> np.ndarray:
    """[1, M] the final list's scores (``semrec.ranking.cascade.final_list_scores`` with the exported blend)."""
    from semrec.ranking.cascade import final_list_scores
    blend = self.manifest["extra"].get("blend") or {}
    return final_list_scores(probabilities, stage.merged, blend.get("source"), blend.get("weight", 0.0))

  def recommend(self, history: Sequence[str], timestamp, k: int = 10, user_id: Optional[str] = None) -> tuple:
    """(item_ids [k'] object, scores [k'] float32: the ranker's probabilities, or the blend scores when the
    cascade blends a source's order in), best first, k' <= min(k, M).

    Args:
      history: The user's item ids, most recent last (ids unknown to the catalogue are dropped).
      timestamp: Request time (integer, the dataset's time unit; freshness and popularity are read at it).
      k: Items returned.
      user_id: Optional; a train user's id gives the ranker that user's activity context.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
      raise ValueError(f"k: must be an integer >= 1, got {k!r}")
    stage = self.candidates(self.parse(history, timestamp, user_id))
    rows, scores = final_top_k(stage.merged.rows[0], self.final_scores(stage, self.rank(stage))[0], k)
    return self.item_ids[rows], scores


def replay_recorded_requests(path: str) -> dict:
  """Loads the cascade at ``path`` and replays ``requests.json``: {"errors", "num_requests", "max_abs_diff",
  "load_seconds", "mean_request_ms"} (ids must match exactly, scores within the recorded ``atol``)."""
  res = {"errors": [], "num_requests": 0, "max_abs_diff": None, "load_seconds": None, "mean_request_ms": None}
  t0 = time.time()
  server = CascadeServer.load(path)
  res["load_seconds"] = round(time.time() - t0, 2)
  with open(os.path.join(path, REQUESTS_FILE)) as f:
    rec = json.load(f)
  t0 = time.time()
  for i, r in enumerate(rec["requests"]):
    got_ids, got = server.recommend(r["history"], r["timestamp"], rec["k"], r.get("user_id"))
    exp = np.asarray(r["expected_scores"], np.float64)
    if list(got_ids) != list(r["expected_item_ids"]):
      res["errors"].append(f"request {i}: top-{rec['k']} ids {list(got_ids)} differ from the in-memory "
                           f"{r['expected_item_ids']}")
      continue
    diff = float(np.max(np.abs(got.astype(np.float64) - exp))) if len(exp) else 0.0
    res["max_abs_diff"] = max(res["max_abs_diff"] or 0.0, diff)
    if diff > float(rec.get("atol", SCORE_ATOL)):
      res["errors"].append(f"request {i}: max |score diff| {diff:.3g} exceeds atol={rec.get('atol', SCORE_ATOL)}")
  res["num_requests"] = len(rec["requests"])
  res["mean_request_ms"] = round(1000 * (time.time() - t0) / max(len(rec["requests"]), 1), 2)
  return res


# Run as `python -c CHILD_SCRIPT '<json args>'` by ``semrec.export.verify``; prints the verify result marker.
CHILD_SCRIPT = r'''
import json, sys
args = json.loads(sys.argv[1])
res = {"errors": [], "max_abs_diff": None, "num_requests": 0, "load_seconds": None}
try:
  from semrec.export.cascade import replay_recorded_requests
  res.update(replay_recorded_requests(args["dir"]))
except Exception as e:
  res["errors"].append("%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))
res["modules"] = sorted({m.split(".")[0] for m in sys.modules} & set(args["watch_modules"]))
print(args["marker"] + json.dumps(res))
'''


__all__ = ["CascadeRequest", "CascadeServer", "export_cascade", "final_top_k", "parse_request",
           "replay_recorded_requests", "request_queries"]
