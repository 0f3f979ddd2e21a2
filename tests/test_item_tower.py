"""The cold-aware item tower: one ItemRepresentation, ID dropout, cluster-ID parts, the content residual."""
import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import dataclasses

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from semrec.sid import ClusterIdLayer, ItemRepresentation, ItemRepresentationConfig
from semrec.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QueryTower,
                           QueryTowerConfig, RetrieverConfig)
from semrec.towers import ContentResidual, content_basis

L, K, D = 2, 4, 4


def _rep(modes, **kw):
  args = dict(modes=modes, embedding_dim=3, num_levels=L, codebook_size=K, table_budget=8, hash_buckets=50,
              cluster_sizes=(2, 3) if "cluster" in modes else ())
  args.update(kw)
  return ItemRepresentationConfig(**args)


def _items(n, seed=0):
  """n items: ids, SIDs, content [n, D], cluster ids at k=2 and k=3."""
  rng = np.random.default_rng(seed)
  return {"item_id": tf.constant([f"i{i}" for i in range(n)]),
          "sid": tf.constant(rng.integers(0, K, size=(n, L)).astype(np.int32)),
          "content": tf.constant(rng.normal(size=(n, D)).astype(np.float32)),
          "cluster_k2": tf.constant(rng.integers(0, 2, size=n).astype(np.int32)),
          "cluster_k3": tf.constant(rng.integers(0, 3, size=n).astype(np.int32))}


def _cos(x):
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  return x @ x.T


def _fill_hash_table(layer):
  """Gives every hashed-ID row a non-zero value (with ID dropout the table starts at zero)."""
  table = layer._tables["random_hash"].embeddings  # pylint: disable=protected-access
  table.assign(np.random.default_rng(0).uniform(0.5, 1.0, size=table.shape).astype(np.float32))


class IdDropoutTest(tf.test.TestCase):

  def _zeroed_rows(self, layer, feats, training):
    out = layer(feats, training=training).numpy()
    return out, np.all(out[:, 3:] == 0.0, axis=1)  # concat: [unigram (3) ; random_hash (3)]

  def test_zeroes_the_hash_part_at_training_only(self):
    layer = ItemRepresentation(_rep(("unigram", "random_hash"), id_dropout=0.25))
    feats = _items(2000)
    layer(feats)
    # Untrained rows are zero, so a new item's hashed ID equals a dropped one.
    self.assertAllEqual(layer(feats).numpy()[:, 3:], np.zeros((2000, 3)))
    _fill_hash_table(layer)
    eval_out, eval_zero = self._zeroed_rows(layer, feats, training=False)
    self.assertEqual(eval_zero.sum(), 0)  # inference never drops
    self.assertAllEqual(layer(feats).numpy(), eval_out)  # training=None behaves as inference
    tf.keras.utils.set_random_seed(7)
    train_out, zero = self._zeroed_rows(layer, feats, training=True)
    # Binomial(2000, 0.25): mean 500, sd 19.4; [400, 600] is +-5 sd.
    self.assertBetween(int(zero.sum()), 400, 600)
    # Only the hashed-ID part of the dropped rows changes; kept rows are not rescaled.
    self.assertAllEqual(train_out[:, :3], eval_out[:, :3])
    self.assertAllEqual(train_out[~zero], eval_out[~zero])
    tf.keras.utils.set_random_seed(7)
    _, zero_again = self._zeroed_rows(layer, feats, training=True)
    self.assertAllEqual(zero, zero_again)  # fixed seed -> the same rows

  def test_no_dropout_when_rate_is_zero_and_encoder_passes_training(self):
    base = ItemRepresentation(_rep(("unigram", "random_hash")))
    feats = _items(200)
    self.assertAllEqual(base(feats, training=True), base(feats, training=False))
    enc = ItemEncoder(ItemEncoderConfig(representation=_rep(("unigram", "random_hash"), id_dropout=0.5)))
    enc(feats)
    _fill_hash_table(enc.item_representation)
    tf.keras.utils.set_random_seed(1)
    out = enc(feats, training=True).numpy()
    dropped = np.all(out[:, 3:] == 0.0, axis=1).sum()
    self.assertBetween(int(dropped), 65, 135)  # Binomial(200, 0.5): mean 100, sd 7.1
    self.assertEqual(np.all(enc(feats, training=False).numpy()[:, 3:] == 0.0, axis=1).sum(), 0)


class UnknownIdGateTest(tf.test.TestCase):

  def test_new_items_get_a_zero_id_part_even_when_their_hash_collides(self):
    # hash_buckets=1: every item shares one trained row, the worst case of a collision.
    layer = ItemRepresentation(_rep(("unigram", "random_hash"), hash_buckets=1, gate_unknown_ids=True))
    feats = dict(_items(4), id_known=tf.constant([1.0, 0.0, 1.0, 0.0]))
    layer(feats)
    _fill_hash_table(layer)
    row = layer._tables["random_hash"].embeddings.numpy()[0]  # pylint: disable=protected-access
    for training in (False, True):  # the gate applies at training and at inference
      out = layer(feats, training=training).numpy()
      self.assertAllClose(out[[0, 2], 3:], [row, row])
      self.assertAllEqual(out[[1, 3], 3:], np.zeros((2, 3)))
    ungated = ItemRepresentation(_rep(("unigram", "random_hash"), hash_buckets=1))
    ungated(feats)
    _fill_hash_table(ungated)
    self.assertAllClose(ungated(feats).numpy()[1, 3:], row)  # without the gate the new item inherits the row
    self.assertIn("id_known", layer.config.input_features)

  def test_needs_the_hash_mode_and_the_feature(self):
    with self.assertRaisesRegex(ValueError, "gate_unknown_ids needs the 'random_hash' mode"):
      _rep(("unigram",), gate_unknown_ids=True)
    layer = ItemRepresentation(_rep(("unigram", "random_hash"), gate_unknown_ids=True))
    with self.assertRaisesRegex((KeyError, ValueError), "id_known"):
      layer(_items(2))


class ClusterPartTest(tf.test.TestCase):

  def test_golden_lookup_and_unknown(self):
    layer = ItemRepresentation(_rep(("cluster",)))
    feats = {"cluster_k2": tf.constant([1, 0, -1]), "cluster_k3": tf.constant([2, -1, -1])}
    out = layer(feats).numpy()
    table = layer._tables["cluster"].embeddings.numpy()  # pylint: disable=protected-access
    # one table of 2 + 3 rows: k=2 ids at rows 0..1, k=3 ids at rows 2..4 (offset 2)
    self.assertAllClose(out[0], table[1] + table[2 + 2])
    self.assertAllClose(out[1], table[0])  # unknown k=3 id: no lookup
    self.assertAllEqual(out[2], np.zeros(3))
    self.assertAllEqual(layer.lookup_ids(feats)["cluster"].numpy(), [[1, 4], [0, -1], [-1, -1]])

  def test_out_of_range_and_missing_are_named(self):
    layer = ItemRepresentation(_rep(("cluster",)))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "cluster_k3"):
      layer({"cluster_k2": tf.constant([0]), "cluster_k3": tf.constant([3])})
    with self.assertRaisesRegex(ValueError, "cluster_k3"):
      layer({"cluster_k2": tf.constant([0])})
    with self.assertRaisesRegex(ValueError, "cluster_sizes"):
      _rep(("cluster",), cluster_sizes=())

  def test_cluster_from_content_matches_precomputed_ids(self):
    feats = _items(20)
    rng = np.random.default_rng(3)
    assigners = [ClusterIdLayer(rng.normal(size=(k, D)).astype(np.float32), name=f"a{k}") for k in (2, 3)]
    rep = ItemRepresentation(_rep(("cluster",)))
    pre = dict(feats)
    for a, k in zip(assigners, (2, 3)):
      pre[f"cluster_k{k}"] = a(feats["content"])
    cfg = ItemEncoderConfig(representation=rep.config, cluster_from_content=True)
    in_graph = ItemEncoder(cfg, item_representation=rep, cluster_assigner=assigners)
    self.assertEqual(in_graph.required_features(), ["content", "item_id"])
    self.assertAllClose(in_graph(feats), ItemEncoder(ItemEncoderConfig(representation=rep.config),
                                                     item_representation=rep)(pre))


class ContentResidualTest(tf.test.TestCase, parameterized.TestCase):

  def _encoder(self, modes=("random_hash", "unigram"), basis=None, **kw):
    cfg = ItemEncoderConfig(representation=_rep(modes, **kw), content_residual=True)
    return ItemEncoder(cfg, content_basis=basis)

  @parameterized.parameters(((16,),), ((),))
  def test_untrained_candidate_cosines_equal_content_cosines(self, mlp_dims):
    # d = 8 >= D = 4: the orthogonal projection preserves every cosine and the zero-initialised MLP adds 0.
    tf.keras.utils.set_random_seed(0)
    tower = CandidateTower(self._encoder(), CandidateTowerConfig(mlp_dims=mlp_dims, output_dim=8))
    feats = _items(12)
    out = tower(feats).numpy()
    self.assertAllClose(out @ out.T, _cos(feats["content"].numpy()), atol=1e-5)

  def test_basis_from_content_keeps_cosines_of_low_rank_content(self):
    # Content of rank 3 in D = 6 with d = 4: the SVD basis spans it, so cosines are kept exactly.
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(30, 3)) @ rng.normal(size=(3, 6))).astype(np.float32)
    basis = content_basis(x, 4)
    self.assertAllClose(basis.T @ basis, np.eye(4), atol=1e-5)  # orthonormal columns (the 4th: a null direction)
    self.assertAllClose(content_basis(x[:, :3], 4)[:, 3], np.zeros(3))  # columns beyond D are zero
    enc = ItemEncoder(ItemEncoderConfig(representation=_rep(("random_hash",)), content_residual=True),
                      content_basis=basis)
    tower = CandidateTower(enc, CandidateTowerConfig(mlp_dims=(8,), output_dim=4))
    out = tower({"item_id": tf.constant([f"i{i}" for i in range(30)]), "content": tf.constant(x)}).numpy()
    self.assertAllClose(out @ out.T, _cos(x), atol=1e-5)

  @parameterized.parameters(1.0, 0.5)
  def test_untrained_query_is_content_knn_of_the_history(self, decay):
    tf.keras.utils.set_random_seed(0)
    enc = ItemEncoder(ItemEncoderConfig(representation=_rep(("random_hash", "unigram")), content_residual=True,
                                        residual_history_decay=decay))
    cand = CandidateTower(enc, CandidateTowerConfig(mlp_dims=(16,), output_dim=8))
    qt = QueryTower(enc, QueryTowerConfig(user_hash_bins=8, user_dim=4, max_history=3, mlp_dims=(16,), output_dim=8))
    items = _items(12)
    content = items["content"].numpy()
    hist_rows = np.array([[0, 1, 2], [3, 4, 4], [5, 6, 7]])
    hist_ids = np.array([[f"i{r}" for r in row] for row in hist_rows])
    hist_ids[1, 0] = ""  # padding is ignored by the residual's mean
    hist_content = content[hist_rows].copy()
    hist_content[1, 0] = 0.0
    q = qt({"user_id": tf.constant(["u0", "u1", "u2"]),
            "history": {"item_id": tf.constant(hist_ids), "sid": tf.gather(items["sid"], hist_rows),
                        "content": tf.constant(hist_content)}}).numpy()
    c = cand(items).numpy()
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    # weights decay ** age, age 0 = the last (most recent) column; padding weighs 0
    valid = (hist_ids != "")[..., None] * (decay ** np.array([2.0, 1.0, 0.0]))[None, :, None]
    mean_hist = (unit[hist_rows] * valid).sum(1) / valid.sum(1)
    expected = (mean_hist / np.linalg.norm(mean_hist, axis=1, keepdims=True)) @ unit.T
    self.assertAllClose(q @ c.T, expected, atol=1e-5)

  def test_training_moves_away_from_pure_content(self):
    # The residual does not freeze the tower: one gradient step on the MLP changes the candidate vectors.
    tf.keras.utils.set_random_seed(0)
    tower = CandidateTower(self._encoder(), CandidateTowerConfig(mlp_dims=(16,), output_dim=8))
    feats = _items(12)
    before = tower(feats).numpy()
    with tf.GradientTape() as tape:
      loss = -tf.reduce_sum(tower(feats, training=True)[:, 0])
    grads = tape.gradient(loss, tower.trainable_variables)
    tf.keras.optimizers.SGD(1.0).apply_gradients(zip(grads, tower.trainable_variables))
    self.assertGreater(np.abs(tower(feats).numpy() - before).max(), 1e-3)
    names = [v.name for v in tower.trainable_variables]
    self.assertFalse(any("projection" in n for n in names))  # P stays frozen by default
    self.assertTrue(any("scale" in n for n in names))

  def test_mismatched_tower_widths_are_refused(self):
    enc = self._encoder()
    CandidateTower(enc, CandidateTowerConfig(output_dim=8))
    with self.assertRaisesRegex(ValueError, "output_dim"):
      QueryTower(enc, QueryTowerConfig(output_dim=4))


class RoundTripTest(tf.test.TestCase):

  def test_item_encoder_and_towers_round_trip(self):
    cfg = ItemEncoderConfig(representation=_rep(("random_hash", "dense", "cluster", "unigram"), id_dropout=0.3,
                                                content_dim=D),
                            content_residual=True)
    enc = ItemEncoder(cfg)
    cand = CandidateTower(enc, CandidateTowerConfig(mlp_dims=(8,), output_dim=8))
    feats = _items(5)
    out = cand(feats).numpy()
    clone = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(cand))
    self.assertEqual(clone.item_encoder.config, cfg)
    clone(feats)
    clone.set_weights(cand.get_weights())
    self.assertAllClose(clone(feats), out)
    enc_clone = ItemEncoder.from_config(enc.get_config())
    enc_clone.residual_layer(8)  # a tower creates the residual; build it as CandidateTower would
    enc_clone(feats)
    enc_clone.anchor(feats)
    enc_clone.set_weights(enc.get_weights())
    self.assertAllClose(enc_clone(feats), enc(feats))
    res = ContentResidual.from_config(enc.residual.get_config())
    self.assertEqual((res.dim, res.trainable_projection), (8, False))

  def test_config_dict_round_trip_through_retriever_config(self):
    cfg = RetrieverConfig(item=ItemEncoderConfig(representation=_rep(("spm", "random_hash"), table_budget=16,
                                                                     id_dropout=0.2),
                                                 content_residual=True))
    from semrec.config import from_dict, to_dict
    again = from_dict(RetrieverConfig, to_dict(cfg))
    self.assertEqual(again, cfg)
    self.assertEqual(again.item.representation.modes, ("spm", "random_hash"))
    with self.assertRaisesRegex(ValueError, "id_dropout"):
      dataclasses.replace(cfg.item.representation, id_dropout=1.0)

  def test_retriever_with_cold_aware_item_tower_saves_and_loads(self):
    from semrec.towers import TwoTowerRetriever, init_model, load_retriever, save_retriever
    rep = _rep(("unigram", "random_hash", "cluster"), id_dropout=0.5)
    cfg = RetrieverConfig(item=ItemEncoderConfig(representation=rep, content_residual=True),
                          candidate=CandidateTowerConfig(mlp_dims=(8,), output_dim=8),
                          query=QueryTowerConfig(max_history=3, mlp_dims=(8,), output_dim=8))
    items = _items(6)
    hist = {k: tf.stack([v[:3], v[3:6]]) for k, v in items.items()}  # [2, 3, ...]
    batch = {"user_id": tf.constant(["u0", "u1"]), "timestamp": tf.constant([0, 0], tf.int64),
             "item_prob": tf.constant([0.5, 0.5]), "item": {k: v[:2] for k, v in items.items()}, "history": hist}
    model = init_model(TwoTowerRetriever(cfg), batch)
    basis = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))[0][:D].astype(np.float32)  # [4, 8]
    model.item_encoder.residual.set_basis(basis)
    q0, c0 = model(batch)
    path = self.get_temp_dir() + "/retriever"
    save_retriever(model, path)
    back = load_retriever(path, batch)
    self.assertEqual(back.config, cfg)
    self.assertAllClose(back.item_encoder.residual.projection.numpy(), basis)
    q1, c1 = back(batch)
    self.assertAllClose(q1, q0, atol=1e-6)
    self.assertAllClose(c1, c0, atol=1e-6)
