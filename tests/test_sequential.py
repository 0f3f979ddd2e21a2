"""Sequential query tower, every-prefix training windows and the mixed-negative retrieval loss."""
import dataclasses
import math

import numpy as np
import pytest
import pandas as pd
import tensorflow as tf
from absl.testing import parameterized

from semrec.data import ItemFeatures
from semrec.sid import ItemRepresentationConfig
from semrec.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, MixedNegativeRetrieval,
                           QueryTowerConfig, RetrievalInputs, RetrieverConfig, ScoreConfig, SequentialQueryTower,
                           SequentialTowerConfig, TwoTowerRetriever, dot_scores, sequence_windows)

E = math.e
Q2 = [[1.0, 0.0], [0.0, 1.0]]  # two queries
C2 = [[1.0, 0.0], [1.0, 1.0]]  # their positives: scores q.c^T = [[1, 1], [0, 1]]


class LossTest(tf.test.TestCase, parameterized.TestCase):
  """Hand-made batch of M = 2 positives, temperature 1."""

  def _loss(self, ids=("a", "b"), probs=(0.5, 0.25), sampled=None, sampled_ids=None, num_items=None, **flags):
    task = MixedNegativeRetrieval(**flags)
    return float(task(tf.constant(Q2), tf.constant(C2), candidate_ids=tf.constant(list(ids)),
                      candidate_sampling_probability=tf.constant(list(probs)),
                      sampled_embeddings=None if sampled is None else tf.constant(sampled),
                      sampled_ids=None if sampled_ids is None else tf.constant(sampled_ids), num_items=num_items))

  def test_in_batch_softmax_with_and_without_logq(self):
    # Plain: row 0 logits [1, 1] label 0 -> log 2; row 1 logits [0, 1] label 1 -> log(1 + e^-1).
    plain = (math.log(2) + math.log(1 + 1 / E)) / 2  # 0.503204
    self.assertAllClose(self._loss(logq_correction=False), plain)
    # logQ: subtract log(C * P(j)) = log(2 * .5) = 0 from column 0 and log(2 * .25) = -log 2 from column 1,
    # so column 1 gains log 2: row 0 [1, 1 + log 2] -> log(e + 2e) - 1 = log 3; row 1 [0, 1 + log 2] ->
    # log(1 + 2e) - log(2e) = log(1 + 1 / (2e)).
    logq = (math.log(3) + math.log(1 + 1 / (2 * E))) / 2  # 0.633730
    self.assertAllClose(self._loss(logq_correction=True), logq)
    self.assertNotAllClose(plain, logq)

  def test_accidental_hits_masked(self):
    # Both positives are item "a": each row's other column is the same item; masked, each row's softmax is
    # over its own column only -> loss 0. Unmasked it is the plain in-batch loss above.
    self.assertAllClose(self._loss(ids=("a", "a"), logq_correction=False), 0.0, atol=1e-6)
    unmasked = self._loss(ids=("a", "a"), logq_correction=False, remove_accidental_hits=False)
    self.assertAllClose(unmasked, (math.log(2) + math.log(1 + 1 / E)) / 2)

  def test_sampled_negatives_with_and_without_logq(self):
    # One uniform sample n = [0, 1] ("z") out of N = 4 items: q.n = [0, 1].
    kw = dict(sampled=[[0.0, 1.0]], sampled_ids=["z"], num_items=4)
    # No logQ: row 0 [1, 1, 0] -> log(2e + 1) - 1; row 1 [0, 1, 1] -> log(1 + 2e) - 1.
    no_logq = (math.log(2 * E + 1) - 1 + math.log(1 + 2 * E) - 1) / 2
    self.assertAllClose(self._loss(logq_correction=False, **kw), no_logq)
    self.assertGreater(no_logq, (math.log(2) + math.log(1 + 1 / E)) / 2)  # a negative was added
    # logQ: in-batch as above (column 1 + log 2); sampled column - log(S / N) = + log 4.
    # row 0 [1, 1 + log 2, log 4] -> log(e + 2e + 4) - 1; row 1 [0, 1 + log 2, 1 + log 4] ->
    # log(1 + 2e + 4e) - log(2e).
    logq = (math.log(3 * E + 4) - 1 + math.log(1 + 6 * E) - math.log(2 * E)) / 2
    self.assertAllClose(self._loss(logq_correction=True, **kw), logq)

  def test_sampled_copy_of_the_positive_is_masked(self):
    # Sample "a" = row 0's own item: masked for row 0 only. No logQ, no in-batch part:
    # row 0 [own 1, masked] -> 0; row 1 [own 1, q1.[1,0] = 0] -> log(e + 1) - 1.
    kw = dict(sampled=[[1.0, 0.0]], sampled_ids=["a"], num_items=4, logq_correction=False, in_batch=False)
    self.assertAllClose(self._loss(**kw), (0 + math.log(E + 1) - 1) / 2)
    self.assertAllClose(self._loss(remove_accidental_hits=False, **kw), (math.log(2) + math.log(E + 1) - 1) / 2)

  def test_full_catalogue_softmax_equals_softmax_over_all_items(self):
    # in_batch=False + S = N = every item: the loss is the full softmax cross-entropy (log(S / N) = 0).
    cat = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.5]], np.float32)  # items a, b, c; positives a, b
    task = MixedNegativeRetrieval(in_batch=False)
    got = task(tf.constant(Q2), tf.constant(cat[:2]), candidate_ids=tf.constant(["a", "b"]),
               candidate_sampling_probability=tf.constant([0.5, 0.25]), sampled_embeddings=tf.constant(cat),
               sampled_ids=tf.constant(["a", "b", "c"]), num_items=3)
    logits = np.array(Q2) @ cat.T
    want = np.mean([-np.log(np.exp(logits[i, i]) / np.exp(logits[i]).sum()) for i in range(2)])
    self.assertAllClose(float(got), want)

  def test_temperature_scales_logits_and_config_roundtrip(self):
    # T = 0.5 doubles the plain logits: row 0 [2, 2] -> log 2; row 1 [0, 2] -> log(1 + e^-2).
    self.assertAllClose(self._loss(logq_correction=False, temperature=0.5),
                        (math.log(2) + math.log(1 + E ** -2)) / 2)
    task = MixedNegativeRetrieval(temperature=0.5, logq_correction=False, in_batch=False)
    self.assertEqual(MixedNegativeRetrieval.from_config(task.get_config()).get_config(), task.get_config())


def _hash_content(dim):
  """Hashed ID (32 rows) + content projection, each ``dim`` wide."""
  return ItemEncoderConfig(representation=ItemRepresentationConfig(modes=("random_hash", "dense"), embedding_dim=dim,
                                                                   hash_buckets=32))


def _features(n=12, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.array([f"i{j:02d}" for j in range(n)], dtype=object)
  return ItemFeatures(ids, {"content": rng.normal(size=(n, dim)).astype(np.float32)})


def _hist(features, rows):
  """History batch dict for lists of item ids ("" = padding)."""
  ids = np.asarray(rows, dtype=object)
  g = features.gather(ids, allow_unknown=True)
  return {"history": {"item_id": tf.constant(ids.astype(str)), "content": tf.constant(g["content"])}}


class SequentialTowerTest(tf.test.TestCase, parameterized.TestCase):

  def _tower(self, share=True, max_history=4, dropout=0.0):
    enc = ItemEncoder(_hash_content(4))
    cand = CandidateTower(enc, CandidateTowerConfig(mlp_dims=(), output_dim=8))
    cfg = SequentialTowerConfig(max_history=max_history, num_blocks=2, num_heads=2, dropout=dropout,
                                share_item_embeddings=share)
    return SequentialQueryTower(cand, cfg, output_dim=8)

  @parameterized.parameters(True, False)
  def test_config_roundtrip(self, share):
    f = _features()
    tower = self._tower(share)
    batch = _hist(f, [["", "i01", "i02", "i03"], ["i04", "i05", "i06", "i07"]])
    out = tower(batch)
    clone = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(tower))
    clone(batch)
    for t in (tower, clone):  # without sharing, the query path does not build the candidate MLP
      t.candidate_tower(batch["history"])
    clone.set_weights(tower.get_weights())
    self.assertAllClose(clone(batch), out)
    self.assertEqual(clone.config, tower.config)
    # Shared weights: history items enter through the candidate tower, so no separate projection exists.
    self.assertEqual(tower.item_projection is None, share)

  def test_causal_attention_never_sees_later_items(self):
    f = _features()
    tower = self._tower()
    a, _ = tower.sequence_output(_hist(f, [["i01", "i02", "i03", "i04"]]))
    b, _ = tower.sequence_output(_hist(f, [["i01", "i02", "i09", "i11"]]))  # positions 2, 3 changed
    self.assertAllClose(a[0, :2], b[0, :2], atol=1e-6)  # earlier positions unchanged
    self.assertNotAllClose(a[0, 2], b[0, 2])  # the changed positions do change
    # Padding is never attended to either: the same items behind more padding give the same last output.
    self.assertAllClose(tower(_hist(f, [["", "", "i01", "i02"]])), tower(_hist(f, [["", "i01", "i02"]])),
                        atol=1e-6)

  def test_truncation_empty_history_and_unknown_items(self):
    f = _features()
    tower = self._tower(max_history=3)
    long = tower(_hist(f, [["i00", "i01", "i02", "i03", "i04"]]))
    self.assertAllClose(long, tower(_hist(f, [["i02", "i03", "i04"]])), atol=1e-6)  # most recent 3 kept
    self.assertAllEqual(tower(_hist(f, [["", "", ""]])), tf.zeros([1, 8]))  # empty history -> zero query
    unknown = tower(_hist(f, [["", "never-seen", "i01"]]))  # unknown id: hashed, zero content row
    self.assertTrue(np.isfinite(unknown.numpy()).all())

  def test_dropout_only_in_training(self):
    f = _features()
    tower = self._tower(dropout=0.5)
    batch = _hist(f, [["i01", "i02", "i03", "i04"]])
    self.assertAllClose(tower(batch), tower(batch))
    self.assertNotAllClose(tower(batch, training=True), tower(batch))

  def test_bad_config(self):
    with self.assertRaisesRegex(ValueError, "num_heads"):
      SequentialTowerConfig(num_heads=0)
    with self.assertRaisesRegex(ValueError, "divisible"):
      SequentialQueryTower(self._tower().candidate_tower, SequentialTowerConfig(num_heads=3), output_dim=8)


def test_sequence_windows_cover_every_target_once():
  h, t = sequence_windows({"u": ["a", "b", "c", "d", "e", "f"], "v": ["x"], "w": ["p", "q"]}, 3)
  # u (6 items) -> windows [c d e f] and [a b c]; v (1 item) -> none; w -> [p q].
  assert h.tolist() == [["c", "d", "e"], ["", "a", "b"], ["", "", "p"]]
  assert t.tolist() == [["d", "e", "f"], ["", "b", "c"], ["", "", "q"]]
  assert sorted(x for x in t.reshape(-1) if x) == ["b", "c", "d", "e", "f", "q"]


def _seq_model(num_negatives, in_batch=True):
  cfg = RetrieverConfig(item=_hash_content(8),
                        candidate=CandidateTowerConfig(mlp_dims=(), output_dim=8), query_tower="sequential",
                        sequential=SequentialTowerConfig(max_history=4, num_blocks=1, num_heads=2, dropout=0.0),
                        num_negatives=num_negatives, in_batch_negatives=in_batch, temperature=0.2,
                        learning_rate=1e-2)
  return TwoTowerRetriever(cfg)


def test_every_prefix_training_learns_a_cycle():
  # Users walk a fixed cycle i00 -> i01 -> ... -> i11 -> i00: the next item is fully determined by the last.
  tf.keras.utils.set_random_seed(0)
  f = _features()
  ids = list(f.item_ids)
  seqs = {f"u{u}": [ids[(u + j) % 12] for j in range(6)] for u in range(24)}
  model = _seq_model(num_negatives=-1, in_batch=False)
  inputs = RetrievalInputs(f, model.item_encoder.required_features(), max_history=4)
  ds = inputs.sequence_dataset(seqs, 8, num_negatives=-1, seed=0)
  first = next(iter(ds))
  assert first["negatives"]["content"].shape == (12, 6)  # full catalogue
  untrained = float(model.compute_loss(first))
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  model.fit(ds, epochs=15, verbose=0)
  assert float(model.compute_loss(first)) < 0.5 * untrained
  # Served query = last position: for history (.., i04, i05) the top item is i06.
  q = model.query_embedding(_hist(f, [["i02", "i03", "i04", "i05"]]))
  c = model.candidate_embedding({"item_id": tf.constant(np.asarray(ids).astype(str)),
                                 "content": tf.constant(f.arrays["content"])})
  assert int(tf.argmax(tf.matmul(q, c, transpose_b=True)[0])) == 6


def _with_scores(cfg, **kw):
  """``cfg`` with its ``ScoreConfig`` fields ``kw`` replaced."""
  return dataclasses.replace(cfg, scores=dataclasses.replace(cfg.scores, **kw))


def _softmax_loss(logits, labels):
  """NumPy mean softmax cross-entropy (float64): mean_i logsumexp(row_i) - row_i[label_i]."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
  return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_mixed_negatives_batch_and_loss():
  f = _features()
  model = _seq_model(num_negatives=5)
  inputs = RetrievalInputs(f, model.item_encoder.required_features(), max_history=4)
  b = next(iter(inputs.sequence_dataset({"u": list(f.item_ids[:6])}, 4, num_negatives=5)))
  neg = b["negatives"]["item_id"].numpy().astype(str)
  assert neg.shape == (5,) and int(b["num_items"]) == 12 and set(neg) <= set(f.item_ids)
  # The loss, re-derived in NumPy from the towers' vectors (temperature T = 0.2, logQ on, accidental hits
  # masked): positives = the non-padding targets (M rows); in-batch logit q_i.c_j / T - log(M P_j); a sampled
  # logit q_i.n_s / T - log(S / N) with S = 5, N = 12; a column holding the row's own item (another
  # position of the same item, or a sampled copy of it) is masked out.
  seq, _ = model.query_tower.sequence_output(b)
  h = seq.shape[1]
  tid = b["target"]["item_id"].numpy()[:, -h:].astype(str)
  valid = tid != ""
  q = seq.numpy()[valid]
  flat = {k: tf.boolean_mask(v[:, -h:], valid) for k, v in b["target"].items()}
  c = model.candidate_tower(flat).numpy()
  n = model.candidate_tower(b["negatives"]).numpy()
  ids, prob = tid[valid], b["target_prob"].numpy()[:, -h:][valid]
  m = len(ids)
  in_batch = q @ c.T / 0.2 - np.log(m * prob)[None, :]
  in_batch[(ids[:, None] == ids[None, :]) & ~np.eye(m, dtype=bool)] = -np.inf
  sampled = q @ n.T / 0.2 - np.log(5 / 12)
  sampled[ids[:, None] == neg[None, :]] = -np.inf
  want_mixed = _softmax_loss(np.concatenate([in_batch, sampled], axis=1), np.arange(m))
  want_in_batch = _softmax_loss(in_batch, np.arange(m))
  np.testing.assert_allclose(float(model.compute_loss(b)), want_mixed, rtol=1e-5)
  without = {k: v for k, v in b.items() if k not in ("negatives", "num_items")}
  np.testing.assert_allclose(float(model.compute_loss(without)), want_in_batch, rtol=1e-5)
  assert want_mixed > want_in_batch  # 5 more negative columns can only raise the log-sum-exp


def test_content_mix_adds_alpha_times_the_content_knn_cosine():
  f = _features()
  cfg = _seq_model(num_negatives=5).config
  model = TwoTowerRetriever(_with_scores(cfg, content_mix=True))
  inputs = RetrievalInputs(f, model.required_features(), max_history=4)
  model.compute_loss(next(iter(inputs.sequence_dataset({"u": list(f.item_ids[:6])}, 4, num_negatives=5))))
  hist = _hist(f, [["", "i01", "i02", "i03"]])
  items = {"item_id": tf.constant(np.asarray(f.item_ids).astype(str)), "content": tf.constant(f.arrays["content"])}
  scores = lambda: (model.query_embedding(hist) @ tf.transpose(model.candidate_embedding(items))).numpy()  # noqa
  s0 = scores()  # a = 0: the learned score alone
  np.testing.assert_allclose(s0, (model.query_tower(hist) @ tf.transpose(model.candidate_tower(items))).numpy(),
                             atol=1e-6)
  model.score_blocks["content"].apply({"alpha": 0.5})
  # u = normalise(0.8^2 x1 + 0.8 x2 + x3) over unit content rows (the content-kNN user vector); x = unit rows.
  unit = f.arrays["content"] / np.linalg.norm(f.arrays["content"], axis=1, keepdims=True)
  u = 0.64 * unit[1] + 0.8 * unit[2] + unit[3]
  u /= np.linalg.norm(u)
  np.testing.assert_allclose(scores() - s0, 0.5 * (unit @ u)[None], atol=1e-5)


def test_content_mix_max_pooling_scores_the_best_history_item():
  f = _features()
  cfg = _seq_model(num_negatives=5).config
  model = TwoTowerRetriever(_with_scores(cfg, content_mix=True, content_mix_pooling="max"))
  assert model.multi_interest
  inputs = RetrievalInputs(f, model.required_features(), max_history=4)
  model.compute_loss(next(iter(inputs.sequence_dataset({"u": list(f.item_ids[:6])}, 4, num_negatives=5))))
  hist = _hist(f, [["", "i01", "i02", "i03"], ["", "", "", ""]])
  items = {"item_id": tf.constant(np.asarray(f.item_ids).astype(str)), "content": tf.constant(f.arrays["content"])}
  q = model.query_embedding(hist).numpy()
  assert q.shape == (2, 4, 8 + 6)  # [B, K = H, d + D]
  c = model.candidate_embedding(items).numpy()
  learned = (model.query_tower(hist) @ tf.transpose(model.candidate_tower(items))).numpy()
  np.testing.assert_allclose(dot_scores(q, c), learned, atol=1e-5)  # a = 0: the learned score alone
  model.score_blocks["content"].apply({"alpha": 0.5})
  unit = f.arrays["content"] / np.linalg.norm(f.arrays["content"], axis=1, keepdims=True)
  best = np.max(unit[[1, 2, 3]] @ unit.T, axis=0)  # the padding slot repeats i03 and never adds a score
  got = dot_scores(model.query_embedding(hist).numpy(), c) - learned
  np.testing.assert_allclose(got[0], 0.5 * best, atol=1e-5)
  np.testing.assert_allclose(got[1], 0.0, atol=1e-6)  # empty history: no content part


def test_pointwise_training_with_a_multi_interest_mix():
  """The pooled tower trains on [q ; 0] rows whatever the content block's a and pooling: the training score of
  every pair is q.p, the towers' alone."""
  f = _features()
  cfg = RetrieverConfig(item=_hash_content(8), candidate=CandidateTowerConfig(mlp_dims=(), output_dim=8),
                        query=QueryTowerConfig(max_history=3, mlp_dims=(), output_dim=8), temperature=0.05,
                        scores=ScoreConfig(content_mix=True, content_mix_pooling="max"))
  model = TwoTowerRetriever(cfg)
  inputs = RetrievalInputs(f, model.required_features(), max_history=3)
  enc = inputs.encode(pd.DataFrame({"user_id": ["u"] * 7, "item_id": list(f.item_ids[:7]), "timestamp": np.arange(7)}))
  batch = next(iter(inputs.dataset(enc, 4)))
  model.compute_loss(batch)
  model.score_blocks["content"].apply({"alpha": 0.5})  # a post-hoc a is not part of a training score
  assert model.multi_interest
  # In-batch softmax over the 4 distinct positives, T = 0.05, logQ: logits q_i.p_j / T - log(4 P_j).
  q = model.query_tower(batch).numpy()
  p = model.candidate_tower(batch["item"]).numpy()
  logits = q @ p.T / 0.05 - np.log(4 * batch["item_prob"].numpy())[None, :]
  np.testing.assert_allclose(float(model.compute_loss(batch)), _softmax_loss(logits, np.arange(4)), rtol=1e-5)


def test_auto_pooling_is_set_after_training_and_saved(tmp_path):
  from semrec.towers import load_retriever, save_retriever
  f = _features()
  cfg = _with_scores(_seq_model(num_negatives=5).config, content_mix=True, content_mix_pooling="auto")
  model = TwoTowerRetriever(cfg)
  inputs = RetrievalInputs(f, model.required_features(), max_history=4)
  batch = next(iter(inputs.sequence_dataset({"u": list(f.item_ids[:6])}, 4, num_negatives=5)))
  model.compute_loss(batch)
  assert not model.multi_interest  # "auto" scores with the mean until tuned
  model.score_blocks["content"].apply({"alpha": 0.5, "pooling": "max"})
  assert model.multi_interest and model.query_embedding(_hist(f, [["i01", "i02", "i03", "i04"]])).shape.rank == 3
  save_retriever(model, str(tmp_path / "m"))
  loaded = load_retriever(str(tmp_path / "m"), batch)
  # The config is saved as given ("auto"); the chosen values are in the one settings record, not in the
  # checkpoint (which holds the trained weights only).
  assert loaded.config.scores.content_mix_pooling == "auto" and loaded.multi_interest
  assert loaded.score_blocks.settings() == {"content": {"alpha": 0.5, "pooling": "max", "lexical_weight": None}}
  import json
  import os
  with open(os.path.join(str(tmp_path / "m"), "config.json")) as fh:
    assert json.load(fh)["score_settings"] == {"content": {"alpha": 0.5, "pooling": "max", "lexical_weight": None}}
  saved = [name for name, _ in tf.train.list_variables(os.path.join(str(tmp_path / "m"), "weights", "ckpt"))]
  assert saved and not [n for n in saved if "score_blocks" in n or "alpha" in n], saved
  hist = _hist(f, [["", "i01", "i02", "i03"]])
  np.testing.assert_allclose(loaded.query_embedding(hist).numpy(), model.query_embedding(hist).numpy(), atol=1e-6)
  fixed = TwoTowerRetriever(_with_scores(cfg, content_mix_pooling="mean"))
  with pytest.raises(ValueError, match="auto"):
    fixed.score_blocks["content"].apply({"alpha": 0.5, "pooling": "max"})
