"""Serving the ranker: an explicit ``tf.Module`` over raw features (exported by ``semrec.export.export_ranker``).

The ``serving_default`` signature takes raw features, i.e. item ids and their SID codes (and content
for dense modes), never precomputed pieces: SPM segmentation of the codes happens in-graph inside the
``ItemRepresentation`` (``semrec.sid.SpmSegmenter``, standard TF ops only), so the SavedModel loads
and answers in a process that imports only TensorFlow.

Inputs (B candidates; U = 1 or B rows of user-side features, broadcast over the candidates, so one
request can score 100 candidates for one user without repeating the history 100 times):

  candidate_item_id  [B] string        candidate_sid  [B, L] int32     (candidate_content [B, D] float32)
  last_item_id       [U] string        last_sid       [U, L] int32     (last_content      [U, D] float32)
  history_item_id    [U, H] string     history_sid    [U, H, L] int32  (history_content   [U, H, D] float32)
  context            [U, C] float32

(``history_*`` only when the model uses history, ``*_content`` only for dense modes.) Padding items
are id ``""`` (their codes are ignored). Outputs: task name -> [B] float32 probability.

Item-vector cache (``item_cache``, optional): the representation of a catalogue item is a function of its
(id, SID codes) and the frozen weights, so it can be computed once at export for every catalogue item. A
request whose items are all in the cache (same id *and* codes) is answered from it, without SPM
segmentation, hashing or table lookups; any other item (e.g. one uploaded after the export) is embedded by
the model's item representation as before (only those items). Both paths give the same vectors.

Malformed requests fail an in-graph ``tf.debugging`` assert whose message names the feature: wrong
number of SID levels L, codes outside [0, K), a batch size that is neither 1 nor B, history ids and
codes of different shapes, a context or content of the wrong width.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

from semrec.ranking.model import Ranker, masked_mean


class RankerServingModule(tf.Module):
  """Explicit serving module for a trained :class:`Ranker`.

  Args:
    model: The trained ranker.
    sid_length: L, SID levels per item.
    codebook_size: K, codes per level (valid codes are [0, K)).
    content_dim: D, for dense representations (ignored otherwise).
    item_cache: Optional catalogue ``{"item_id": [N] str, "sid": [N, L] int}`` whose representations are
      precomputed (see :class:`ItemVectorCache`); not for dense (content) representations.
  """

  def __init__(self, model: Ranker, sid_length: int, codebook_size: int, content_dim: Optional[int] = None,
               item_cache: Optional[Mapping[str, np.ndarray]] = None, name: Optional[str] = None):
    super().__init__(name=name)
    self.model = model
    self.sid_length = int(sid_length)
    self.codebook_size = int(codebook_size)
    self.uses_history = bool(model.config.use_history)
    self.uses_content = bool(model.uses_content)
    self.context_dim = int(model.config.context_dim)
    self.tasks = tuple(model.config.tasks)
    if self.uses_content and not content_dim:
      raise ValueError("RankerServingModule: content_dim is required for a dense item representation")
    self.content_dim = int(content_dim) if self.uses_content else None
    self.item_cache = None
    if item_cache is not None:
      if self.uses_content:
        raise ValueError("RankerServingModule: item_cache is not supported for a dense (content) representation")
      self.item_cache = ItemVectorCache(model.item_representation, item_cache["item_id"], item_cache["sid"])
    self.input_specs = self._specs()
    self.serve = tf.function(self._serve, input_signature=[dict(self.input_specs)])

  def _specs(self) -> dict:
    s = {}
    for slot, lead in (("candidate", [None]), ("last", [None]), ("history", [None, None])):
      if slot == "history" and not self.uses_history:
        continue
      s[f"{slot}_item_id"] = tf.TensorSpec(lead, tf.string, name=f"{slot}_item_id")
      # L is dynamic in the signature so a wrong L reaches the assert with its message below.
      s[f"{slot}_sid"] = tf.TensorSpec(lead + [None], tf.int32, name=f"{slot}_sid")
      if self.uses_content:
        s[f"{slot}_content"] = tf.TensorSpec(lead + [None], tf.float32, name=f"{slot}_content")
    s["context"] = tf.TensorSpec([None, None], tf.float32, name="context")
    return s

  def _checks(self, f) -> list:
    """In-graph request validation. Shape checks run first: value checks (code range, finiteness)
    are built under their control dependency, so a shape error is reported as such rather than as
    a broadcasting failure inside a value check."""
    L, K = self.sid_length, self.codebook_size
    b = tf.shape(f["candidate_item_id"])[0]
    slots = [s for s in ("candidate", "last", "history") if s != "history" or self.uses_history]
    shape_checks = []

    def batch_ok(name, n):
      return tf.debugging.Assert(
          tf.logical_or(tf.equal(n, 1), tf.equal(n, b)),
          [f"{name}: batch size must be 1 or the number of candidates; got", n, "candidates:", b])

    for slot in slots:
      ids, sid = f[f"{slot}_item_id"], f[f"{slot}_sid"]
      shape_checks.append(tf.debugging.assert_equal(
          tf.shape(sid)[-1], L, message=f"{slot}_sid: each item needs L={L} SID codes (last dimension)"))
      shape_checks.append(_assert_same_shape(
          tf.shape(sid)[:-1], tf.shape(ids), f"{slot}_sid: leading shape must equal the shape of {slot}_item_id"))
      if self.uses_content:
        content = f[f"{slot}_content"]
        shape_checks.append(tf.debugging.assert_equal(
            tf.shape(content)[-1], self.content_dim, message=f"{slot}_content: width must be D={self.content_dim}"))
        shape_checks.append(_assert_same_shape(
            tf.shape(content)[:-1], tf.shape(ids),
            f"{slot}_content: leading shape must equal the shape of {slot}_item_id"))
      if slot != "candidate":
        shape_checks.append(batch_ok(f"{slot}_item_id", tf.shape(ids)[0]))
    ctx = f["context"]
    shape_checks.append(tf.debugging.assert_equal(tf.shape(ctx)[-1], self.context_dim,
                                                  message=f"context: width must be C={self.context_dim}"))
    shape_checks.append(batch_ok("context", tf.shape(ctx)[0]))

    value_checks = []
    with tf.control_dependencies(shape_checks):
      for slot in slots:
        ids, sid = f[f"{slot}_item_id"], f[f"{slot}_sid"]
        pad = tf.equal(ids, "")[..., None]
        in_range = tf.logical_and(sid >= 0, sid < K)
        value_checks.append(tf.debugging.assert_equal(
            tf.reduce_all(tf.logical_or(in_range, pad)), True,
            message=f"{slot}_sid: codes must be in [0, {K}) for every non-padding item"))
        if self.uses_content:
          value_checks.append(tf.debugging.assert_all_finite(f[f"{slot}_content"],
                                                             message=f"{slot}_content: NaN/inf values"))
      value_checks.append(tf.debugging.assert_all_finite(ctx, message="context: NaN/inf values"))
    return shape_checks + value_checks

  def _embed_request(self, f) -> tuple:
    """Candidate [B, d], last [U, d] and pooled history [U, d] (None without history) from ONE call of
    the item representation over every item of the request (candidates, last item and history
    flattened together): SPM segmentation, hashing and the lookups run once per request instead of
    once per slot, which is what dominates a 1-user x 100-candidate request."""
    slots = ["candidate", "last"] + (["history"] if self.uses_history else [])
    keys = ["item_id", "sid"] + (["content"] if self.uses_content else [])
    widths = {"item_id": [], "sid": [self.sid_length], "content": [self.content_dim]}
    flat = {k: tf.concat([tf.reshape(f[f"{s}_{k}"], [-1] + widths[k]) for s in slots], 0) for k in keys}
    sizes = [tf.size(f[f"{s}_item_id"]) for s in slots]
    rep = self.model.item_representation
    parts = tf.split(self.item_cache(flat, rep) if self.item_cache is not None else rep(flat), sizes)
    hist = None
    if self.uses_history:
      ids = f["history_item_id"]
      hist = masked_mean(tf.reshape(parts[2], tf.concat([tf.shape(ids), [-1]], 0)), ids)
    return parts[0], parts[1], hist

  def _serve(self, features):
    with tf.control_dependencies(self._checks(features)):
      f = {k: tf.identity(v) for k, v in features.items()}
    b = tf.shape(f["candidate_item_id"])[0]
    cand, last, hist = self._embed_request(f)
    d = tf.shape(cand)[-1]
    last = tf.broadcast_to(last, [b, d])
    hist = tf.broadcast_to(hist, [b, d]) if hist is not None else None
    ctx = tf.broadcast_to(f["context"], [b, self.context_dim])
    logits = self.model.score(cand, last, hist, ctx, training=False)
    return {t: tf.sigmoid(v) for t, v in logits.items()}


class ItemVectorCache(tf.Module):
  """Item representations of a fixed catalogue, computed once (the weights are frozen at export).

  Calling it on flat request items ``{"item_id": [M] string, "sid": [M, L] int}`` returns [M, d] float32:
  rows of items whose id is in the catalogue *with the same SID codes* are gathered from the cache, padding
  items (id ``""``) are zero (as the representation makes them), and only when some item is not cached does
  ``representation`` run, on those items only (a ``tf.cond``: a fully cached request never segments).

  Args:
    representation: The trained ``ItemRepresentation`` (non-dense modes: a function of id and codes).
    item_ids: [N] catalogue ids (unique, non-empty).
    codes: [N, L] their SID codes.
    batch_size: Items embedded per call while building the cache.
  """

  def __init__(self, representation, item_ids, codes, batch_size: int = 65536, name: Optional[str] = None):
    super().__init__(name=name)
    ids = np.asarray(item_ids).astype(str)
    codes = np.asarray(codes, np.int32)
    if codes.ndim != 2 or len(codes) != len(ids):
      raise ValueError(f"item_cache: 'sid' must be [N, L] with N = {len(ids)} item ids, got shape {codes.shape}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids) or (ids == "").any():
      bad = str(uniq[counts > 1][0]) if len(uniq) != len(ids) else ""
      raise ValueError(f"item_cache: item ids must be unique and non-empty; item {bad!r} is not")
    vecs = [representation({"item_id": tf.constant(ids[s:s + batch_size]), "sid": tf.constant(codes[s:s + batch_size])},
                           training=False).numpy() for s in range(0, len(ids), batch_size)]
    self.size = len(ids)
    self.vectors = tf.Variable(np.concatenate(vecs), trainable=False, name="item_vectors")  # [N, d]
    self.codes = tf.Variable(codes, trainable=False, name="item_codes")  # [N, L]
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), default_value=-1)

  def __call__(self, items: dict, representation) -> tf.Tensor:
    ids = items["item_id"]
    row = self.table.lookup(ids)  # [M] int64, -1 if unknown
    safe = tf.maximum(row, 0)
    same_codes = tf.reduce_all(tf.equal(tf.gather(self.codes, safe), tf.cast(items["sid"], tf.int32)), axis=-1)
    pad = tf.equal(ids, "")
    hit = tf.logical_or(pad, tf.logical_and(row >= 0, same_codes))
    cached = tf.where(pad[:, None], tf.zeros_like(self.vectors[:1]), tf.gather(self.vectors, safe))

    def embed_misses():
      miss = tf.where(tf.logical_not(hit))  # [m, 1]
      sub = {k: tf.gather_nd(v, miss) for k, v in items.items()}
      return tf.tensor_scatter_nd_update(cached, miss, representation(sub))

    return tf.cond(tf.reduce_all(hit), lambda: cached, embed_misses)


def _assert_same_shape(shape_a, shape_b, message: str):
  """Asserts two shape vectors are equal, whatever their lengths (ranks): compared as strings, so a rank
  mismatch fails with ``message`` (and both shapes) instead of TF's unnamed "Incompatible shapes"."""
  text = lambda s: tf.strings.reduce_join(tf.strings.as_string(s), separator=",")  # noqa: E731
  return tf.debugging.Assert(tf.equal(text(shape_a), text(shape_b)), [message, "got", shape_a, "vs", shape_b])


