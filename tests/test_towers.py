"""Towers, quality vector, retriever training/serving, on the tiny synthetic world."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from semrec.data import DataError, ItemFeatures, Queries, SyntheticConfig, make_synthetic, temporal_split
from semrec.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QualityConfig,
                           QualityVector, QueryTower, QueryTowerConfig, RetrievalInputs, RetrieverConfig, ScoreConfig,
                           TwoTowerRetriever, build_index, compile_retriever, embed_candidates, embed_queries,
                           evaluate_scores, init_model, item_frequencies, load_retriever, save_retriever,
                           tune_quality_weights)
from semrec.sid import ItemRepresentationConfig

H = 4


def _world(tmp_dir):
  cfg = SyntheticConfig(num_items=120, num_users=40, num_topics=4, num_days=8, impressions_per_user_per_day=5,
                        seed=0, output_dir=tmp_dir)
  return make_synthetic(cfg)


def _content(ds, dim=16, seed=0):
  """Test-only content embeddings: a topic direction plus item noise (the real encoders live in encoders/)."""
  rng = np.random.default_rng(seed)
  topic_dirs = rng.normal(size=(int(ds.item_topics.max()) + 1, dim))
  x = topic_dirs[ds.item_topics] + 0.3 * rng.normal(size=(ds.num_items, dim))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class _Fixture:
  """Shared tiny world + features, built once per module."""

  def __init__(self, tmp_dir):
    from semrec.sid import ClusterIdLayer, RQVAEConfig, fit_kmeans, train_sid_model
    self.ds = _world(tmp_dir)
    self.split = temporal_split(self.ds)
    self.content = _content(self.ds)
    self.sid_model = train_sid_model(self.content, RQVAEConfig(mode="rqkmeans", num_levels=2, codebook_size=4))
    self.codes = self.sid_model.codes(self.content)
    # Cluster IDs as the pipeline makes them: k-means on the content (never the true topics).
    clusters = ClusterIdLayer(fit_kmeans(self.content, k=4, seed=0))(self.content).numpy().astype(np.int32)
    self.features = ItemFeatures(self.ds.item_ids, {"content": self.content, "sid": self.codes,
                                                    "cluster_k4": clusters})
    self.quality = QualityVector.fit(self.split.train, self.ds.items, self.split.cutoff, self.ds.quality_columns)
    self.pos = self.split.train[self.split.train["label"] > 0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return _Fixture(str(tmp_path_factory.mktemp("towers_synth")))


def _item(*modes, dim=8, **kw):
  """An ItemEncoderConfig whose representation concatenates ``modes`` (world: 2-level SIDs, K = 4, 4 topics)."""
  args = dict(modes=modes, embedding_dim=dim, hash_buckets=64, num_levels=2, codebook_size=4, table_budget=16,
              cluster_sizes=(4,) if "cluster" in modes else ())
  args.update(kw)
  return ItemEncoderConfig(representation=ItemRepresentationConfig(**args))


def _config(item=None, quality_mode="none", pooling="mean", q_dim=0):
  return RetrieverConfig(
      item=item or _item("random_hash", "dense", "cluster"),
      candidate=CandidateTowerConfig(mlp_dims=(16,), output_dim=8),
      query=QueryTowerConfig(user_hash_bins=16, user_dim=4, max_history=H, pooling=pooling, mlp_dims=(16,),
                             output_dim=8, use_time=True, time_mean=4e5, time_scale=2e5),
      temperature=0.1, scores=ScoreConfig(quality_dim=q_dim, quality_mode=quality_mode), learning_rate=1e-2)


def _inputs(world, model, quality=True):
  q = world.quality
  return RetrievalInputs(world.features, model.item_encoder.required_features(), H,
                         quality=q.features() if quality else None, unknown_quality=q.new_item_features())


def _spm_representation(world, modes=("spm",)):
  from semrec.sid import ItemRepresentation, train_sid_spm
  spm = train_sid_spm(world.codes, vocab_size=16, codebook_size=4)
  rc = ItemRepresentationConfig(modes=modes, embedding_dim=8, num_levels=2, codebook_size=4, table_budget=16,
                                hash_buckets=32)
  return ItemRepresentation(rc, spm=spm, name="item_representation")


# ---------------------------------------------------------------------------------------------------
# Quality vector

def test_quality_vector_uses_train_only_and_priors(world):
  qv, train = world.quality, world.split.train
  assert qv.feature_names == ["positive_rate", "like_rate", "log_count", "freshness", "production_score",
                              "duration_s"]
  counts = train["item_id"].value_counts()
  j = qv.feature_names.index("log_count")
  some = counts.index[0]
  row = list(qv.item_ids).index(some)
  np.testing.assert_allclose(qv.raw[row, j], np.log1p(counts[some]), rtol=1e-6)
  # positive rate: (sum label + 10 * p0) / (n + 10), with p0 the global train rate.
  p0 = train["label"].mean()
  g = train[train["item_id"] == some]
  np.testing.assert_allclose(qv.raw[row, 0], (g["label"].sum() + 10 * p0) / (len(g) + 10), rtol=1e-5)
  # a cold item (only seen after the cutoff) gets the priors: count 0, freshness 1, rates = global rate.
  cold = world.split.cold_items[0]
  crow = list(qv.item_ids).index(cold)
  np.testing.assert_allclose(qv.raw[crow, :4], [p0, train["like"].mean(), 0.0, 1.0], rtol=1e-5)
  # (its own catalogue columns are kept; an id absent from the catalogue gets the column means too)
  np.testing.assert_allclose(qv.gather([cold])[0, :4], qv.new_item_features()[:4], rtol=1e-5)
  np.testing.assert_allclose(qv.gather(["never-seen"])[0], qv.new_item_features(), rtol=1e-5)
  np.testing.assert_array_equal(qv.gather([""])[0], np.zeros(qv.dim))
  assert np.isfinite(qv.features()).all()


def test_quality_vector_new_item_policies(world):
  prior = world.quality  # default policy
  neutral = QualityVector.fit(world.split.train, world.ds.items, world.split.cutoff, world.ds.quality_columns,
                              config=QualityConfig(new_item_policy="neutral"))
  unseen = ~neutral.seen
  assert unseen.any() and neutral.seen.any()
  beh = neutral.behavioural
  assert beh.tolist() == [True, True, True, True, False, False]
  # neutral: behavioural features of unseen items are 0 (the train mean), catalogue columns are kept.
  np.testing.assert_array_equal(neutral.features()[np.ix_(unseen, beh)], 0.0)
  np.testing.assert_allclose(neutral.features()[:, ~beh], prior.features()[:, ~beh])
  np.testing.assert_allclose(neutral.features()[neutral.seen], prior.features()[neutral.seen])
  # prior: log_count 0 is the lowest standardised count of all.
  j = prior.feature_names.index("log_count")
  assert prior.features()[unseen, j].max() < prior.features()[neutral.seen, j].min()
  np.testing.assert_array_equal(neutral.new_item_features()[beh], 0.0)


def test_quality_vector_nan_raises_naming_item_and_feature(world):
  items = world.ds.items.copy()
  items.loc[3, "production_score"] = np.nan
  with pytest.raises(DataError, match=r"item 'item_00003'.*production_score"):
    QualityVector.fit(world.split.train, items, quality_columns=("production_score",))
  qv = QualityVector.fit(world.split.train, items, quality_columns=("production_score",),
                         config=QualityConfig(nan_policy="mean"))
  assert np.isfinite(qv.features()).all()
  with pytest.raises(DataError, match="missing"):
    QualityVector.fit(world.split.train, items, quality_columns=("no_such_column",))


def test_quality_vector_save_load(world, tmp_path):
  world.quality.save(str(tmp_path))
  back = QualityVector.load(str(tmp_path))
  np.testing.assert_allclose(back.features(), world.quality.features())
  assert back.feature_names == world.quality.feature_names


# ---------------------------------------------------------------------------------------------------
# Layers

class LayerTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import tempfile
    cls.world = _Fixture(tempfile.mkdtemp(prefix="towers_layers"))

  def _item_batch(self, ids):
    feats = self.world.features.gather(np.asarray(ids, dtype=object), allow_unknown=True)
    return {"item_id": tf.constant(np.asarray(ids).astype(str)), "content": tf.constant(feats["content"]),
            "sid": tf.constant(feats["sid"]), "cluster_k4": tf.constant(feats["cluster_k4"])}

  def test_item_encoder_config_roundtrip(self):
    enc = ItemEncoder(_item("random_hash", "dense", "cluster", dim=4))
    batch = self._item_batch(["item_00001", "item_00002", ""])
    out = enc(batch)
    self.assertEqual(out.shape, (3, 12))
    self.assertAllEqual(out[2], tf.zeros(12))  # padding -> zeros
    clone = ItemEncoder.from_config(enc.get_config())
    clone(batch)
    clone.set_weights(enc.get_weights())
    self.assertAllClose(clone(batch), out)

  def test_candidate_and_query_tower_config_roundtrip(self):
    enc = ItemEncoder(_item("dense", "cluster", dim=4))
    cand = CandidateTower(enc, CandidateTowerConfig(mlp_dims=(8,), output_dim=4))
    batch = self._item_batch(["item_00001", "item_00005"])
    out = cand(batch)
    clone = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(cand))
    clone(batch)
    clone.set_weights(cand.get_weights())
    self.assertAllClose(clone(batch), out)
    self.assertAllClose(tf.norm(out, axis=-1), [1.0, 1.0], atol=1e-5)

    qt = QueryTower(enc, QueryTowerConfig(user_hash_bins=8, user_dim=4, max_history=3, pooling="attention",
                                          mlp_dims=(8,), output_dim=4))
    qb = self._query_batch([["item_00001", "item_00002", "item_00003"], ["", "", "item_00004"]])
    qout = qt(qb)
    qclone = QueryTower.from_config(qt.get_config())
    qclone(qb)
    qclone.set_weights(qt.get_weights())
    self.assertAllClose(qclone(qb), qout)

  def _query_batch(self, hist, users=None):
    hist = np.asarray(hist, dtype=object)
    feats = self.world.features.gather(hist, allow_unknown=True)
    return {"user_id": tf.constant(users or [f"user_{i:04d}" for i in range(len(hist))]),
            "timestamp": tf.constant(np.full(len(hist), 400000, np.int64)),
            "history": {"item_id": tf.constant(hist.astype(str)), "content": tf.constant(feats["content"]),
                        "sid": tf.constant(feats["sid"]), "cluster_k4": tf.constant(feats["cluster_k4"])}}

  @parameterized.parameters("mean", "attention", "gru")
  def test_history_truncation_and_empty_history(self, pooling):
    enc = ItemEncoder(_item("random_hash", "dense", dim=4))
    qt = QueryTower(enc, QueryTowerConfig(user_hash_bins=8, user_dim=4, max_history=2, pooling=pooling,
                                          mlp_dims=(8,), output_dim=4))
    long = self._query_batch([["item_00001", "item_00002", "item_00003", "item_00004"]])
    short = self._query_batch([["item_00003", "item_00004"]])
    # A history longer than max_history keeps only its most recent max_history items.
    self.assertAllClose(qt(long), qt(short))
    empty = qt(self._query_batch([["", "", "", ""]]))
    self.assertTrue(np.isfinite(empty.numpy()).all())
    # With an empty history the query rests on the user id alone: same as any other empty history length.
    self.assertAllClose(empty, qt(self._query_batch([["", ""]])))

  def test_unknown_user_and_item_fall_back_to_hashing(self):
    enc = ItemEncoder(_item("random_hash", "cluster", dim=4))
    # Unknown item: no feature row (cluster id -1 -> zero vector), but its id still hashes.
    batch = {"item_id": tf.constant(["brand-new-item"]), "cluster_k4": tf.constant([-1])}
    out = enc(batch).numpy()
    self.assertTrue(np.isfinite(out).all())
    self.assertAllEqual(out[0, 4:], np.zeros(4))
    self.assertGreater(np.abs(out[0, :4]).sum(), 0)
    qt = QueryTower(enc, QueryTowerConfig(user_hash_bins=8, user_dim=4, max_history=2, mlp_dims=(8,), output_dim=4))
    q = qt({"user_id": tf.constant(["never-seen-user"]), "timestamp": tf.constant([0], tf.int64),
            "history": {"item_id": tf.constant([["", "brand-new-item"]]), "cluster_k4": tf.constant([[-1, -1]])}})
    self.assertTrue(np.isfinite(q.numpy()).all())

  def test_missing_feature_is_named(self):
    enc = ItemEncoder(_item("dense", dim=4))
    with self.assertRaisesRegex(KeyError, "content"):
      enc({"item_id": tf.constant(["a"])})
    with self.assertRaisesRegex(ValueError, "sid_assigner"):
      ItemEncoder(dataclasses.replace(_item("unigram"), sid_from_content=True))
    with self.assertRaisesRegex(ValueError, "no SID mode"):
      dataclasses.replace(_item("dense"), sid_from_content=True)

  def test_sid_from_content_matches_precomputed_codes(self):
    from semrec.sid import ItemRepresentation, ItemRepresentationConfig
    rc = ItemRepresentationConfig(modes=("unigram",), embedding_dim=4, num_levels=2, codebook_size=4,
                                  table_budget=8)
    rep = ItemRepresentation(rc)
    from_feat = ItemEncoder(ItemEncoderConfig(representation=rc), item_representation=rep)
    in_graph = ItemEncoder(ItemEncoderConfig(representation=rc, sid_from_content=True), item_representation=rep,
                           sid_assigner=self.world.sid_model.assigner)
    batch = self._item_batch(["item_00001", "item_00007", "item_00011"])
    self.assertAllClose(from_feat(batch), in_graph(batch))
    self.assertEqual(in_graph.trainable_weights, rep.trainable_weights)  # the assigner stays frozen


# ---------------------------------------------------------------------------------------------------
# Retriever

def _trained(world, config, epochs=3, item_representation=None):
  tf.keras.utils.set_random_seed(0)
  model = TwoTowerRetriever(config, item_representation=item_representation)
  inputs = _inputs(world, model)
  enc = inputs.encode(world.pos, item_probs=item_frequencies(world.pos))
  ds = inputs.dataset(enc, 32, shuffle=True, seed=0)
  init_model(model, next(iter(ds)))
  compile_retriever(model)
  hist = model.fit(ds, epochs=epochs, verbose=0)
  return model, inputs, enc, hist


def test_training_lowers_loss(world):
  tf.keras.utils.set_random_seed(0)
  model = TwoTowerRetriever(_config())
  inputs = _inputs(world, model)
  enc = inputs.encode(world.pos, item_probs=item_frequencies(world.pos))
  fixed = inputs.dataset(enc, 32)  # same batches before and after: the in-batch loss is comparable
  init_model(model, next(iter(fixed)))
  compile_retriever(model)
  before = model.evaluate(fixed, verbose=0, return_dict=True)["loss"]
  model.fit(inputs.dataset(enc, 32, shuffle=True, seed=0), epochs=6, verbose=0)
  after = model.evaluate(fixed, verbose=0, return_dict=True)["loss"]
  assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("flag", ["logq_correction", "remove_accidental_hits", "in_batch_negatives"])
def test_model_loss_is_the_task_with_each_flag(world, flag):
  # The model feeds its towers' embeddings to MixedNegativeRetrieval (whose values tests/test_sequential.py
  # checks by hand); turning a flag off must change the loss on the same batch, and equal the task's loss
  # computed here from the same embeddings.
  from semrec.towers import MixedNegativeRetrieval
  cfg = dataclasses.replace(_config(), num_negatives=16)
  model = TwoTowerRetriever(cfg)
  inputs = _inputs(world, model)
  enc = inputs.encode(world.pos, item_probs=item_frequencies(world.pos))
  tf.keras.utils.set_random_seed(0)
  batch = next(iter(inputs.dataset(enc, 32, num_negatives=16)))
  init_model(model, batch)
  weights = model.get_weights()
  off = TwoTowerRetriever(dataclasses.replace(cfg, **{flag: False}))
  init_model(off, batch)
  off.set_weights(weights)
  on_loss, off_loss = float(model.compute_loss(batch)), float(off.compute_loss(batch))
  assert np.isfinite(on_loss) and np.isfinite(off_loss) and abs(on_loss - off_loss) > 1e-4
  q, c = off(batch)
  task = MixedNegativeRetrieval(temperature=cfg.temperature, **{
      "logq_correction": flag != "logq_correction", "remove_accidental_hits": flag != "remove_accidental_hits",
      "in_batch": flag != "in_batch_negatives"})
  by_hand = task(q, c, candidate_ids=batch["item"]["item_id"], candidate_sampling_probability=batch["item_prob"],
                 sampled_embeddings=off.candidate_embedding(batch["negatives"]),
                 sampled_ids=batch["negatives"]["item_id"], num_items=batch["num_items"])
  np.testing.assert_allclose(off_loss, float(by_hand), rtol=1e-5)


def test_learned_quality_weights_move(world):
  model, *_ = _trained(world, _config(quality_mode="learned", q_dim=world.quality.dim), epochs=2)
  block = model.score_blocks["quality"]
  assert block.w.trainable and block.settings() == {}  # a trained weight, not a post-hoc setting
  assert np.abs(block.w.numpy()).sum() > 0


def test_quality_changes_scores_only_through_w_dot_f(world):
  model, inputs, enc, _ = _trained(world, _config(quality_mode="tuned", q_dim=world.quality.dim), epochs=1)
  assert not model.score_blocks["quality"].trainable_weights  # tuned: a post-hoc value, no variable
  w = np.linspace(-0.3, 0.3, world.quality.dim).astype(np.float32)
  model.score_blocks.apply({"quality": {"w": w}})
  batch = next(iter(inputs.dataset(enc, 16)))
  q_full, c_full = model(batch)
  q, p = model.query_tower(batch), model.candidate_tower(batch["item"])
  f = batch["item"]["quality"]
  scores_full = tf.matmul(q_full, c_full, transpose_b=True).numpy()
  scores_towers = tf.matmul(q, p, transpose_b=True).numpy()
  # score = q.p + w.f(p): the difference is the same per candidate for every query.
  expected = np.broadcast_to((f.numpy() @ w)[None, :], scores_full.shape)
  np.testing.assert_allclose(scores_full - scores_towers, expected, atol=1e-5)


def test_tune_quality_weights_recovers_a_quality_signal():
  # 3 candidates, q.p ties everything at 0; feature 0 is 1 for the target item (row 2) only.
  q = np.zeros((4, 2), np.float32)
  p = np.zeros((3, 2), np.float32)
  f = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0]], np.float32)
  w, info = tune_quality_weights(q, p, f, np.array([2, 2, 2, 2]), k=1, grid=(-1.0, 0.0, 1.0))
  # With w = 0 all scores tie and ties go to the target (rank 0): recall@1 = 1 already, so w stays 0
  # unless it helps; break the tie against the target with a base score favouring row 0.
  p[0] = [1.0, 0.0]
  q[:] = [0.5, 0.0]
  w, info = tune_quality_weights(q, p, f, np.array([2, 2, 2, 2]), k=1, grid=(-1.0, 0.0, 1.0))
  assert info["baseline_recall"] == 0.0 and info["recall"] == 1.0
  assert w[0] == 1.0
  # Query weights: targets 2 (3 queries) vs 0 (1 query, weight 5); w[0] = 1 now loses the heavier query.
  w, info = tune_quality_weights(q, p, f, np.array([2, 2, 2, 0]), k=1, grid=(-1.0, 0.0, 1.0),
                                 query_weights=np.array([1.0, 1.0, 1.0, 5.0]))
  assert w[0] != 1.0 and info["recall"] == 5.0 / 8.0


def test_save_load_and_tuned_w_applied_at_serving(world, tmp_path):
  rep = _spm_representation(world, ("spm", "random_hash"))
  item = ItemEncoderConfig(representation=rep.config)
  model, inputs, enc, _ = _trained(world, _config(item=item, quality_mode="tuned", q_dim=world.quality.dim),
                                   epochs=1, item_representation=rep)
  qb = embed_queries(model, inputs, enc, with_blocks=False)
  cb = embed_candidates(model, inputs, with_blocks=False)
  w, info = tune_quality_weights(qb, cb, world.quality.features(), inputs.rows_of(enc["item_id"]),
                                 grid=(-0.5, 0.0, 0.5))
  model.score_blocks.apply({"quality": {"w": w}})
  save_retriever(model, str(tmp_path / "retriever"))
  batch = next(iter(inputs.dataset(enc, 16)))
  back = load_retriever(str(tmp_path / "retriever"), batch)
  np.testing.assert_allclose(back.score_blocks["quality"].value, w)
  q0, c0 = model(batch)
  q1, c1 = back(batch)
  np.testing.assert_allclose(q1.numpy(), q0.numpy(), atol=1e-6)
  np.testing.assert_allclose(c1.numpy(), c0.numpy(), atol=1e-6)
  # Serving: an index over [p ; f(p)] queried with [q ; w] ranks by q.p + w.f(p).
  cands = embed_candidates(back, inputs)
  queries = embed_queries(back, inputs, {k: v[:8] for k, v in enc.items()})
  index = build_index(cands, world.ds.item_ids, kind="brute_force", k=5)
  _, top = index.search_rows(queries, 5)
  expected = qb[:8] @ cb.T + (world.quality.features() @ w)[None, :]
  np.testing.assert_array_equal(top[:, 0], expected.argmax(axis=1))
  # The TFRS top-k layer over the same index answers raw query features through the model's query side.
  layer = index.to_keras_layer(query_model=back.query_embedding, k=5)
  first = {k: v[:8] for k, v in enc.items()}
  _, ids = layer(next(iter(inputs.dataset(first, 8))))
  np.testing.assert_array_equal(ids.numpy()[:, 0].astype(str), world.ds.item_ids[expected.argmax(axis=1)])


def _test_recall_at_10(world, model, inputs):
  """Recall@10 (``evaluate_scores``) of ``model`` on the world's test positives, one query each."""
  test_pos = world.split.test[world.split.test["label"] > 0]
  enc = inputs.encode(test_pos, context=world.ds.interactions)
  q, c = embed_queries(model, inputs, enc), embed_candidates(model, inputs)
  item_ids = inputs.item_features.item_ids
  # The user's earlier items are excluded, except the target itself (a repeat stays findable, so this
  # measures ranking, not how many targets are repeats).
  exclude = [item_ids[rows[rows < len(item_ids)]] for rows in inputs.exclusions(enc, world.ds.interactions)]
  exclude = [np.asarray(ex[ex != t], dtype=object) for ex, t in zip(exclude, enc["item_id"])]
  queries = Queries(user_ids=np.asarray(enc["user_id"], dtype=object), histories=exclude,
                    targets=[np.array([t], dtype=object) for t in enc["item_id"]],
                    timestamps=np.asarray(enc["timestamp"], np.int64), exclude=exclude, cold=np.zeros(len(q), bool))
  return evaluate_scores(lambda rows: q[rows] @ c.T, queries, item_ids, ks=(10,), ndcg_ks=(10,))["overall"]["recall@10"]


def test_retriever_beats_random_on_synthetic_topics(world):
  # Content + cluster towers on a world whose users prefer topics. Chance recall@10 = 10 / 120 = 0.083; the
  # untrained towers already carry some topic signal through the content projection (measured 0.134), so the
  # trained model must beat both twice chance and the same model before training.
  config = _config(item=_item("dense", "cluster"))
  model, inputs, _, _ = _trained(world, config, epochs=5)
  tf.keras.utils.set_random_seed(0)
  untrained = TwoTowerRetriever(config)
  init_model(untrained, next(iter(inputs.dataset(inputs.encode(world.pos), 32))))
  trained_recall = _test_recall_at_10(world, model, inputs)
  untrained_recall = _test_recall_at_10(world, untrained, inputs)
  assert trained_recall > 2 * 10 / world.ds.num_items
  assert trained_recall > 1.5 * untrained_recall, (trained_recall, untrained_recall)


def test_config_validation():
  with pytest.raises(ValueError, match="quality_dim"):
    RetrieverConfig(scores=ScoreConfig(quality_mode="tuned"))
  with pytest.raises(ValueError, match="output_dim"):
    RetrieverConfig(candidate=CandidateTowerConfig(output_dim=4), query=QueryTowerConfig(output_dim=8))
  with pytest.raises(ValueError, match="pooling"):
    QueryTowerConfig(pooling="max")
  cfg = _config()
  assert RetrieverConfig(**dataclasses.asdict(cfg)) == cfg


# ---------------------------------------------------------------------------------------------------
# Metrics

def test_rank_metrics_golden():
  # 1 query, 4 items; scores = [3, 1, 2, 0]; target i2 -> rank 1 (only i0 scores higher).
  items = np.array(["i0", "i1", "i2", "i3"], dtype=object)
  scores = lambda rows: np.tile([3.0, 1.0, 2.0, 0.0], (len(rows), 1))  # noqa: E731

  def queries(targets, exclude):
    obj = lambda xs: [np.array(x, dtype=object) for x in xs]  # noqa: E731
    return Queries(user_ids=np.array([f"u{i}" for i in range(len(targets))], dtype=object), histories=obj(exclude),
                   targets=obj(targets), timestamps=np.zeros(len(targets), np.int64), exclude=obj(exclude),
                   cold=np.zeros(len(targets), bool))

  m = evaluate_scores(scores, queries([["i2"]], [[]]), items, ks=(1, 2), ndcg_ks=(2,))["overall"]
  assert (m["recall@1"], m["recall@2"]) == (0.0, 1.0)
  # Excluding i0 (seen before) makes the target rank 0.
  m = evaluate_scores(scores, queries([["i2"]], [["i0"]]), items, ks=(1,), ndcg_ks=(2,))["overall"]
  assert m["recall@1"] == 1.0 and m["ndcg@2"] == 1.0
  # 25 items scored -row: targets j0, j1, j20 rank 0, 1, 20.
  items = np.array([f"j{i}" for i in range(25)], dtype=object)
  ranked = lambda rows: np.tile(-np.arange(25.0), (len(rows), 1))  # noqa: E731
  m = evaluate_scores(ranked, queries([["j0"], ["j1"], ["j20"]], [[], [], []]), items, ks=(1, 10),
                      ndcg_ks=(10,))["overall"]
  # recall@1 = 1/3, recall@10 = 2/3, ndcg@10 = (1/log2(2) + 1/log2(3)) / 3
  np.testing.assert_allclose([m["recall@1"], m["recall@10"], m["ndcg@10"]],
                             [1 / 3, 2 / 3, (1 + 1 / np.log2(3)) / 3])
  assert m["queries"] == 3


def _comparison_config(variants):
  from semrec.towers import ComparisonConfig, FitConfig
  cfg = ComparisonConfig(variants=variants, embedding_dim=8, fit=FitConfig(max_epochs=4, patience=0, batch_size=16),
                         baselines=("popularity", "content_knn"))
  r = cfg.retriever
  cfg.retriever = dataclasses.replace(r, candidate=CandidateTowerConfig(mlp_dims=(), output_dim=8),
                                      query=dataclasses.replace(r.query, output_dim=8, mlp_dims=(8,), max_history=H),
                                      sequential=dataclasses.replace(r.sequential, max_history=H), num_negatives=16)
  return cfg


class _StopAtVariant(tf.keras.callbacks.Callback):
  """Raises when the n-th variant starts training (simulates a kill in the middle of a sweep)."""
  started = 0

  def __init__(self, n):
    super().__init__()
    self.n = n

  def on_train_begin(self, logs=None):
    type(self).started += 1
    if type(self).started == self.n:
      raise RuntimeError("killed")


def test_comparison_baselines_slices_and_resume(world, tmp_path):
  from semrec.data import make_split
  from semrec.towers import run_retrieval_comparison
  split = make_split(world.ds, "temporal")
  cfg = _comparison_config(("hashed_id", "content"))
  with pytest.raises(RuntimeError, match="killed"):
    run_retrieval_comparison(world.ds, split, world.ds.item_ids, world.content, cfg, output_dir=str(tmp_path),
                             verbose=False, callbacks=(_StopAtVariant(2),))
  assert (tmp_path / "variants" / "hashed_id" / "result.json").exists()
  assert not (tmp_path / "variants" / "content").exists()
  out = run_retrieval_comparison(world.ds, split, world.ds.item_ids, world.content, cfg, output_dir=str(tmp_path),
                                 verbose=False)
  assert out["results"]["hashed_id"]["resumed"] and not out["results"]["content"]["resumed"]
  table = out["table"]
  # On the temporal split every learned variant also gets a tuned-quality row (ComparisonConfig default).
  assert set(table[table["quality"] == "tuned"]["variant"]) == {"hashed_id", "content"}
  table = table[table["quality"] == "none"]
  # Baselines are rows of the same table, on the same test queries.
  test = table[(table["stage"] == "test") & (table["slice"] == "overall")].set_index("variant")
  assert set(test.index) == {"popularity", "content_knn", "hashed_id", "content"}
  assert test["queries"].nunique() == 1
  cold = table[(table["stage"] == "test") & (table["slice"] == "cold")].set_index("variant")["recall@10"]
  # Cold test items have no train interaction: the hashed-ID tower knows nothing about them (an untrained
  # row), the content tower scores them through their content. Random: 10 / 120 per target.
  assert cold["content"] > cold["hashed_id"] + 0.1, cold.to_dict()
  assert out["served"]["variant"] in ("hashed_id", "content")
  assert (tmp_path / "retrieval_comparison.json").exists()
  # The default content mix chose its pooling and lexical channel (the world's items have titles) on validation.
  mix = out["results"]["content"]["content_mix"]
  assert set(mix["scores"]) == {"mean", "max", "mean+lexical", "max+lexical"}
  assert mix["lexical_weight"] in (0.0, 1.0)
  # The tuning's fast path (towers run once per pooling and b, a rescales the mix block) scores the chosen point
  # as the model does once a is set in it (the result's validation metrics).
  chosen = mix["pooling"] + ("+lexical" if mix["lexical_weight"] else "")
  assert abs(mix["scores"][chosen][mix["alpha"]] - out["results"]["content"]["selection_score"]) < 1e-6
  # The tuner picked the best point of its table (no cold floor for the content block by default).
  assert mix["scores"][chosen][mix["alpha"]] == max(v for row in mix["scores"].values() for v in row.values())
  assert (tmp_path / "lexical_encoder.npz").exists()  # to encode new items' titles at serving time
  # A post-hoc setting changed: the trained weights are reused and only the mix is re-tuned (no retraining).
  scores = dataclasses.replace(cfg.retriever.scores, content_mix_pooling="mean", content_mix_lexical="off")
  fixed = dataclasses.replace(cfg, retriever=dataclasses.replace(cfg.retriever, scores=scores))
  again = run_retrieval_comparison(world.ds, split, world.ds.item_ids, world.content, fixed,
                                   output_dir=str(tmp_path), verbose=False)
  r = again["results"]["content"]
  assert r["resumed"] and r["post_hoc"] == {"content_mix_pooling": "mean", "content_mix_lexical": "off",
                                            "num_recent": 10, "decay": 0.8, "alpha_grid": [0.0, 0.25, 0.5, 1.0,
                                                                                           2.0, 4.0]}
  assert r["epochs"] == out["results"]["content"]["epochs"]
  assert set(r["content_mix"]["scores"]) == {"mean"} and r["content_mix"]["pooling"] == "mean"
  assert r["content_mix"]["lexical_weight"] is None
  with pytest.raises(ValueError, match="unknown variants"):
    _comparison_config(("bigram_tower",))


def test_comparison_receives_the_sid_stage_inputs(world):
  """The comparison fits nothing but towers: a variant's cluster ids / SIDs / SPM are inputs, and a missing one
  raises naming it."""
  from semrec.data import make_split
  from semrec.towers import prepare_item_side
  split = make_split(world.ds, "temporal")
  cfg = _comparison_config(("hashed_id", "cold_hashed_cluster", "sid_spm"))
  assert cfg.sid_needs() == {"cluster_ids", "sid_codes", "spm"}
  assert _comparison_config(("hashed_id", "seq_content")).sid_needs() == set()
  with pytest.raises(ValueError, match=r"need \['cluster_ids', 'sid_codes', 'spm'\] from the SID stage"):
    prepare_item_side(world.ds, split, world.ds.item_ids, world.content, cfg)
  clusters = world.features.arrays["cluster_k4"]
  side = prepare_item_side(world.ds, split, world.ds.item_ids, world.content,
                           _comparison_config(("cold_hashed_cluster",)), cluster_ids=clusters)
  np.testing.assert_array_equal(side.features.arrays["cluster_k4"], clusters)  # used as given, k = 4
  assert side.num_clusters == 4 and side.spm is None and "sid" not in side.features.arrays


def test_sequential_variant_beats_random_on_leave_one_out(world, tmp_path):
  from semrec.data import make_split
  from semrec.towers import run_retrieval_comparison
  split = make_split(world.ds, "leave_one_out")
  out = run_retrieval_comparison(world.ds, split, world.ds.item_ids, world.content,
                                 _comparison_config(("seq_cold_hashed_content",)), verbose=False)
  overall = out["results"]["seq_cold_hashed_content"]["test"]["overall"]
  # 120 items, users prefer topics: a working sequential tower ranks the next item well above chance (10/120).
  assert overall["recall@10"] > 2 * 10 / world.ds.num_items, overall


def test_comparison_markdown_rows_baselines_first_and_quality_rows():
  import pandas as pd
  from semrec.towers import comparison_markdown
  rows = []
  for name, kind, quality, r10 in (("popularity", "baseline", "none", 0.1), ("content", "learned", "none", 0.2),
                                   ("content", "learned", "tuned", 0.25)):
    for s in ("overall", "warm", "cold"):
      rows.append({"variant": name, "kind": kind, "quality": quality, "stage": "test", "slice": s,
                   "recall@10": r10, "recall@100": 2 * r10})
  lines = comparison_markdown(pd.DataFrame(rows)).splitlines()
  assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| popularity", "| content", "| content + quality"]
  assert lines[4] == "| content + quality | learned | " + " | ".join(["0.2500"] * 3 + ["0.5000"] * 3) + " |"
