"""Served retrievers refuse bad numbers and bad shapes, naming the input (issue 26 items 5 and 6).

Every exported retrieval signature (candidate_tower, query_tower, retrieval_brute_force, retrieval_scann) is
reloaded with ``tf.saved_model.load`` and fed NaN / inf values and wrong shapes; the in-graph checks of
``semrec.export.ServingModule`` must fail with a message that names the input. ``semrec batch embed`` on NaN
features exits 1 with that message and writes nothing.

The towers are plain Keras stand-ins with the served models' feature layout (item: ``item_id``, ``content``
[B, 3], ``lexical`` [B, 2]; query: ``user_id`` and ``history_{item_id, content, lexical}`` [B, H, ...]), so
the checks, not a model's internals, are under test.
"""
import os
import re

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from semrec import export as ex

D, LX, H = 3, 2, 4


class _Candidate(tf.keras.layers.Layer):
  """item features -> [content[:, :2] ; lexical] [B, 4]."""

  def call(self, features):
    return tf.concat([features["content"][:, :2], features["lexical"]], axis=-1)


class _Query(tf.keras.layers.Layer):
  """query features -> mean over H of [history content[..., :2] ; history lexical] [B, 4] (or [B, H, 4] with
  ``multi=True``, one query vector per history item, as the content mix's "max" pooling serves)."""

  def __init__(self, multi=False, **kwargs):
    super().__init__(**kwargs)
    self.multi = multi

  def call(self, features):
    h = features["history"]
    v = tf.concat([h["content"][..., :2], h["lexical"]], axis=-1)
    return v if self.multi else tf.reduce_mean(v, axis=1)


def _items(n=6, seed=0):
  rng = np.random.default_rng(seed)
  return {"item_id": np.array([f"i{i}" for i in range(n)], dtype=object),
          "content": rng.normal(size=(n, D)).astype(np.float32),
          "lexical": rng.normal(size=(n, LX)).astype(np.float32)}


def _query(b=2, seed=1):
  rng = np.random.default_rng(seed)
  return {"user_id": np.array([f"u{i}" for i in range(b)], dtype=object),
          "history": {"item_id": np.array([[f"i{j}" for j in range(H)]] * b, dtype=object),
                      "content": rng.normal(size=(b, H, D)).astype(np.float32),
                      "lexical": rng.normal(size=(b, H, LX)).astype(np.float32)}}


def _flat(query):
  return ex.flatten_features(query)[0]


def _refused(fn, feats, pattern):
  """Calls the reloaded signature and asserts the in-graph check's message matches ``pattern``."""
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    fn(**{k: tf.constant(v) for k, v in feats.items()})
  assert re.search(pattern, ex.refused_request_message(info.value)), ex.refused_request_message(info.value)


def _with(feats, key, value):
  out = dict(feats)
  out[key] = value
  return out


def _nan_at(x, value=np.nan):
  x = np.array(x, copy=True)
  x.flat[-1] = value
  return x


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  base = str(tmp_path_factory.mktemp("serving_checks"))
  items, query = _items(40), _query()
  cands = _Candidate()(items).numpy()
  from semrec.towers import build_index
  index = build_index(cands, items["item_id"], kind="scann", k=3, num_leaves=4, num_leaves_to_search=4)
  paths = {
      "candidate_tower": ex.export_candidate_tower(base, _Candidate(), {k: v[:6] for k, v in items.items()}).path,
      "query_tower": ex.export_query_tower(base, _Query(), query).path,
      "retrieval_brute_force": ex.export_brute_force_retrieval(base, _Query(), query, k=3, candidate_embeddings=cands,
                                                               item_ids=items["item_id"]).path,
      "retrieval_scann": ex.export_scann_retrieval(base, _Query(), query, k=3, index=index).path,
      "multi_interest": ex.export_brute_force_retrieval(base, _Query(multi=True), query, k=3, name="multi_interest",
                                                        candidate_embeddings=cands, item_ids=items["item_id"]).path,
  }
  import scann  # noqa: F401  (registers the ScaNN ops retrieval_scann needs to load)
  return {name: tf.saved_model.load(p).signatures["serving_default"] for name, p in paths.items()} | {"paths": paths}


def test_candidate_tower_refuses_nan_inf_and_bad_shapes(exports):
  fn, items = exports["candidate_tower"], _items(2)
  out = fn(**{k: tf.constant(v) for k, v in items.items()})["embedding"].numpy()
  np.testing.assert_allclose(out, np.concatenate([items["content"][:, :2], items["lexical"]], 1))  # a valid call
  _refused(fn, _with(items, "content", _nan_at(items["content"])), r"^content: NaN/inf values")
  _refused(fn, _with(items, "lexical", _nan_at(items["lexical"], np.inf)), r"^lexical: NaN/inf values")
  _refused(fn, _with(items, "lexical", _nan_at(items["lexical"], -np.inf)), r"^lexical: NaN/inf values")
  _refused(fn, _with(items, "lexical", np.zeros((2, LX + 1), np.float32)), r"^lexical: dimension 1 must be 2")
  _refused(fn, _with(items, "content", np.zeros((2,), np.float32)), r"^content: expected rank 2")
  _refused(fn, _with(items, "lexical", items["lexical"][:1]),
           r"^lexical: batch size \(dimension 0\) must equal that of item_id")


@pytest.mark.parametrize("name", ["query_tower", "retrieval_brute_force", "retrieval_scann", "multi_interest"])
def test_query_signatures_refuse_nan_inf_and_bad_shapes(exports, name):
  fn, q = exports[name], _flat(_query())
  fn(**{k: tf.constant(v) for k, v in q.items()})  # a valid call passes every check
  _refused(fn, _with(q, "history_content", _nan_at(q["history_content"])), r"^history_content: NaN/inf values")
  _refused(fn, _with(q, "history_lexical", _nan_at(q["history_lexical"], np.inf)), r"^history_lexical: NaN/inf values")
  # H differs between two history inputs (was "Incompatible shapes: [2,3] vs. [2,4]" deep in the model)
  _refused(fn, _with(q, "history_lexical", q["history_lexical"][:, :-1]),
           r"^history_lexical: dimension 1 \(H\) must equal dimension 1 of history_item_id")
  _refused(fn, _with(q, "history_content", q["history_content"][..., :-1]),
           r"^history_content: dimension 2 must be 3")
  _refused(fn, _with(q, "history_content", q["history_content"][:, 0]), r"^history_content: expected rank 3")
  _refused(fn, _with(q, "history_item_id", q["history_item_id"][:1]),
           r"^history_item_id: batch size \(dimension 0\) must equal that of user_id")


def test_scann_retrieval_answers_like_brute_force_on_valid_input(exports):
  """The checks pass valid requests through unchanged: ScaNN (every leaf searched, exact rescoring) = exact."""
  q = {k: tf.constant(v) for k, v in _flat(_query()).items()}
  brute, scann_out = exports["retrieval_brute_force"](**q), exports["retrieval_scann"](**q)
  np.testing.assert_array_equal(brute["item_ids"].numpy(), scann_out["item_ids"].numpy())


def test_refused_request_message_extracts_the_named_check():
  class Fake(Exception):
    message = ("Graph execution error:\n\nDetected at node assert_equal_3/Assert/Assert defined at ...\n"
               "assertion failed: [history_sid: dimension 1 (H) must equal dimension 1 of history_item_id] "
               "[Condition x == y did not hold element-wise:]")
  assert ex.refused_request_message(Fake()) == "history_sid: dimension 1 (H) must equal dimension 1 of history_item_id"
  assert ex.refused_request_message(ValueError("content: NaN/inf values : Tensor had NaN values")) == \
      "content: NaN/inf values"
  assert ex.refused_request_message(ValueError("\nsomething else\nmore")) == "something else"


def test_shared_axes_must_name_real_inputs():
  spec = {"history_a": tf.TensorSpec([None, None], tf.float32)}
  with pytest.raises(ex.ExportError, match="shared axis 'H': no input 'history_b'"):
    ex.ServingModule(lambda f: f["history_a"], spec, shared_axes={"H": [("history_a", 1), ("history_b", 1)]})
  with pytest.raises(ex.ExportError, match="axis 2 of input 'history_a' is out of range"):
    ex.ServingModule(lambda f: f["history_a"], spec, shared_axes={"H": [("history_a", 2), ("history_a", 1)]})


def test_batch_embed_refuses_nan_features_and_writes_nothing(exports, tmp_path):
  from semrec.cli import main
  items = _items(5)
  items["content"][3, 1] = np.nan
  feats = tmp_path / "features.npz"
  np.savez(feats, item_ids=items["item_id"].astype(str), item_id=items["item_id"].astype(str),
           content=items["content"], lexical=items["lexical"])
  out = tmp_path / "emb.npz"
  res = CliRunner().invoke(main, ["batch", "embed", "--model", exports["paths"]["candidate_tower"],
                                  "--features", str(feats), "--out", str(out)])
  assert res.exit_code == 1, res.output
  assert "Error:" in res.output and "content: NaN/inf values" in res.output, res.output
  assert not out.exists()


def test_embeddings_with_nan_rows_are_never_written(tmp_path):
  """A candidate tower exported before the input checks can still return NaN rows: the writer refuses them."""
  from semrec.beam.inprocess import write_embeddings
  emb = np.ones((3, 2), np.float32)
  emb[1, 0] = np.nan
  out = tmp_path / "emb.npz"
  with pytest.raises(ValueError, match=r"item 'b' has NaN/inf values \(1 of 3 rows\)"):
    write_embeddings(str(out), ["a", "b", "c"], emb)
  assert not out.exists()
