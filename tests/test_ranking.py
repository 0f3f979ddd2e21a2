"""Tests for semrec.ranking: AUC, examples, every representation mode, the sweep, serving export."""
import os

import numpy as np
import pytest

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf
from absl.testing import parameterized

from semrec.config import to_dict
from semrec.data import ItemFeatures, SyntheticConfig, make_synthetic
from semrec.export import ServingError, export_ranker, score_in_fresh_process
from semrec.ranking import (ALL_MODES, RankerConfig, RankingFeaturizer, auc, prepare_sequential, run_ranking_experiment,
                            sliced_auc, train_ranker)
from semrec.ranking.experiment import _rep_config
from semrec.ranking.serving import ItemVectorCache

L, K, D = 3, 8, 16


def _residual_kmeans(x, levels, k, seed=0):
  """Dev-only SIDs: residual k-means codes [N, levels] int32 (shipped code takes codes as input)."""
  from sklearn.cluster import KMeans
  r = x.astype(np.float64)
  codes = []
  for level in range(levels):
    km = KMeans(k, n_init=1, random_state=seed + level).fit(r)
    c = km.predict(r)
    codes.append(c)
    r = r - km.cluster_centers_[c]
  return np.stack(codes, 1).astype(np.int32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A small synthetic world with topic-derived content and SIDs (more users than synthetic_small, so
  a ranker has signal to learn from in one sequential pass)."""
  ds = make_synthetic(SyntheticConfig(num_items=100, num_users=200, num_topics=4, num_days=12,
                                      impressions_per_user_per_day=8, seed=1,
                                      output_dir=str(tmp_path_factory.mktemp("ranking_world"))))
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(4, D))
  content = (centers[ds.item_topics] + 0.3 * rng.normal(size=(ds.num_items, D))).astype(np.float32)
  content /= np.linalg.norm(content, axis=1, keepdims=True)
  codes = _residual_kmeans(content, L, K)
  fi = ItemFeatures(ds.item_ids, {"sid": codes, "content": content})
  data = prepare_sequential(ds.interactions, fi, num_periods=4, history_length=8)
  return ds, fi, data


def _config(mode="spm", budget=128, use_history=True, **kw):
  rep = _rep_config(mode, budget, L, K, embedding_dim=8, content_dim=D)
  return RankerConfig(item_representation=rep, use_history=use_history, history_length=8, hidden_units=(32,),
                      num_cross_layers=1, learning_rate=3e-2, batch_size=128, **kw)


class AucTest(parameterized.TestCase):

  def test_golden(self):
    # pos scores {0.8, 0.4}, neg {0.5, 0.1}: pairs (0.8>0.5, 0.8>0.1, 0.4<0.5, 0.4>0.1) -> 3/4.
    self.assertAlmostEqual(auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]), 0.75)

  def test_ties_count_half(self):
    # one pos and one neg with the same score -> 1/2.
    self.assertAlmostEqual(auc([1, 0], [0.3, 0.3]), 0.5)

  def test_matches_sklearn(self):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
    self.assertAlmostEqual(auc(y, s), roc_auc_score(y, s), places=12)

  def test_one_class_is_nan_and_bad_scores_raise(self):
    self.assertTrue(np.isnan(auc([1, 1], [0.1, 0.2])))
    with self.assertRaisesRegex(ValueError, "NaN"):
      auc([1, 0], [np.nan, 0.2])

  def test_slices(self):
    out = sliced_auc({"label": np.array([1, 0, 1, 0])}, {"label": np.array([0.9, 0.1, 0.2, 0.8])},
                     np.array([True, True, False, False]))
    # cold rows 0, 1 ranked right -> 1.0; warm rows 2, 3 ranked wrong -> 0.0.
    self.assertEqual(out["label"]["cold_auc"], 1.0)
    self.assertEqual(out["label"]["warm_auc"], 0.0)
    self.assertEqual(out["label"]["n_cold"], 2)


def test_unseen_piece_share():
  from semrec.ranking.piece_stats import unseen_piece_share
  pieces = np.array([[0, 1, -1], [0, 2, -1], [3, -1, -1]])
  # trained item 0 uses pieces {0, 1}; items 1, 2 have pieces 0, 2, 3 -> 2 of 3 never trained.
  assert unseen_piece_share(pieces, np.array([True, False, False]), np.array([1, 2])) == pytest.approx(2 / 3)


def test_piece_support():
  from semrec.ranking.piece_stats import piece_support
  pieces = np.array([[0, 1, -1], [0, 2, -1], [3, -1, -1]])
  # supports: piece 0 <- items 0, 1 = 5 + 2 = 7; piece 1 = 5; piece 2 = 2; piece 3 = 0.
  # item 1 uses pieces (0, 2) -> supports (7, 2) -> median 4.5.
  assert piece_support(pieces, np.array([5, 2, 0]), np.array([1])) == pytest.approx(4.5)


def test_examples_are_causal_and_shaped(world):
  ds, fi, data = world
  feats = RankingFeaturizer(fi, history_length=8).features(data.eval_examples.take(np.arange(50)))
  assert feats["candidate_sid"].shape == (50, L)
  assert feats["history_sid"].shape == (50, 8, L)
  assert feats["context"].shape == (50, 6)
  assert "candidate_content" not in feats
  # Every history item was a positive of that user strictly before the example's timestamp.
  inter = ds.interactions
  ev = data.split.eval_period.iloc[:50]
  for r in range(50):
    user, ts = ev["user_id"].iloc[r], ev["timestamp"].iloc[r]
    earlier = set(inter[(inter.user_id == user) & (inter.timestamp < ts) & (inter.label > 0)].item_id)
    hist = [h for h in feats["history_item_id"][r] if h]
    assert set(hist) <= earlier
    pad = feats["history_item_id"][r] == ""
    assert (feats["history_sid"][r][pad] == 0).all()
  # Cold items never occur in the training periods.
  train_items = set(np.concatenate([p.item_id.to_numpy() for p in data.split.train_periods]))
  assert not (set(data.split.cold_items) & train_items)
  assert data.cold_mask.sum() > 0


def test_config_validation():
  with pytest.raises(ValueError, match="task_weights"):
    RankerConfig(tasks=("label", "like"), task_weights=(1.0,))
  with pytest.raises(ValueError, match="duplicates"):
    RankerConfig(tasks=("label", "label"))
  with pytest.raises(ValueError, match="history_length"):
    RankerConfig(history_length=0)


def test_every_mode_beats_constant_and_sweep_writes_table(world, tmp_path):
  """Each representation mode trains a tiny ranker (sequential protocol) that beats a constant
  predictor (AUC 0.5) on the held-out period, for both tasks; the sweep writes its table and PNG."""
  ds, fi, data = world
  base = _config()
  res = run_ranking_experiment(ds, fi, modes=ALL_MODES, budgets=(128,), seeds=(0,), use_history=(True,),
                               codebook_size=K, base_config=base, embedding_dim=8, data=data,
                               output_dir=str(tmp_path), progress=False)
  runs = res.runs
  assert set(runs["mode"]) == set(ALL_MODES)
  for r in runs.itertuples():
    assert r.auc > 0.6, f"mode {r.mode} task {r.task}: held-out AUC {r.auc:.3f} does not beat a constant"
  for key in ("runs_csv", "summary_md", "summary_json", "png"):
    assert os.path.getsize(res.files[key]) > 0
  md = open(res.files["summary_md"]).read()
  assert "| yes | spm | 128 |" in md
  # The paired difference to random hashing is each mode's AUC minus random_hash's of the same seed.
  s = res.summary[res.summary["task"] == "label"].set_index("mode")
  for mode in ALL_MODES:
    assert s.loc[mode, "d_auc_vs_hash"] == pytest.approx(s.loc[mode, "auc"] - s.loc["random_hash", "auc"])
  # Lookup statistics: a hashed id reads 1 row per item, unigram L rows.
  assert s.loc["random_hash", "lookups_per_item"] == 1.0 and s.loc["unigram", "lookups_per_item"] == L


def test_ranker_config_round_trip(world):
  from semrec.ranking import Ranker
  ds, fi, data = world
  cfg = _config("prefix")
  feats = RankingFeaturizer(fi, history_length=8).features(data.eval_examples.take(np.arange(16)))
  a = Ranker(cfg)
  out_a = a(feats)
  b = Ranker.from_config(a.get_config())
  b(feats)
  b.set_weights(a.get_weights())
  assert to_dict(b.config) == to_dict(cfg)
  np.testing.assert_allclose(b(feats)["like"].numpy(), out_a["like"].numpy(), rtol=1e-6)


def test_experiment_rejects_bad_arguments(world):
  ds, fi, data = world
  with pytest.raises(ValueError, match="unknown representation mode"):
    run_ranking_experiment(ds, fi, modes=("trigram",), data=data)
  with pytest.raises(ValueError, match="L\\*K"):
    run_ranking_experiment(ds, fi, modes=("spm",), budgets=(16,), codebook_size=K, data=data)
  no_content = ItemFeatures(fi.item_ids, {"sid": fi.arrays["sid"]})
  with pytest.raises(ValueError, match="content"):
    run_ranking_experiment(ds, no_content, modes=("dense",), data=data)


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory):
  ds, fi, data = world
  run = train_ranker(_config("spm+hash"), fi, ds.interactions, data=data, progress=False)
  feats = run.featurizer.features(data.eval_examples.take(np.arange(40)))
  base = str(tmp_path_factory.mktemp("export"))
  result = export_ranker(base, run.model, feats, metrics={"label_auc": run.metrics["label"]["auc"]})
  return run, feats, base, result


def test_export_matches_in_memory_in_fresh_process(exported):
  run, feats, base, result = exported
  assert result.version == 1 and result.path == os.path.join(base, "ranker", "1")
  assert os.path.getsize(os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests")) > 0
  expected = run.model(feats, training=False)
  got = score_in_fresh_process(result.path, feats)
  assert set(got) == {"label", "like"}
  for task in ("label", "like"):
    np.testing.assert_allclose(got[task], expected[task].numpy(), rtol=1e-5, atol=1e-6)


def test_one_user_request_broadcasts(exported):
  run, feats, base, result = exported
  served = tf.saved_model.load(result.path).signatures["serving_default"]
  one_user = {k: (v if k.startswith("candidate_") else v[:1]) for k, v in feats.items()}
  tiled = {k: (v if k.startswith("candidate_") else np.repeat(v[:1], len(v), axis=0)) for k, v in feats.items()}
  out = served(**{k: tf.constant(v) for k, v in one_user.items()})
  ref = run.model(tiled, training=False)
  np.testing.assert_allclose(out["label"].numpy(), ref["label"].numpy(), rtol=1e-5, atol=1e-6)


def test_reexport_adds_version_and_keeps_served_one(exported, tmp_path):
  run, feats, base, result = exported
  before = open(os.path.join(result.path, "saved_model.pb"), "rb").read()
  again = export_ranker(base, run.model, feats)
  assert again.version == 2
  assert open(os.path.join(result.path, "saved_model.pb"), "rb").read() == before


@pytest.mark.parametrize("field,mutate,message", [
    ("candidate_sid", lambda f: np.concatenate([f["candidate_sid"], f["candidate_sid"][:, :1]], 1),
     "candidate_sid: each item needs L=3"),
    ("history_sid", lambda f: np.where(f["history_item_id"][..., None] != "", K, f["history_sid"]).astype(np.int32),
     "history_sid: codes must be in \\[0, 8\\)"),
    ("last_item_id", lambda f: f["last_item_id"][:3], "last_item_id: batch size must be 1 or the number"),
    ("history_sid", lambda f: f["history_sid"][:, :-1], "history_sid: leading shape must equal"),
    ("context", lambda f: f["context"][:, :-1], "context: width must be C=6"),
])
def test_malformed_requests_are_rejected(exported, field, mutate, message):
  run, feats, base, result = exported
  served = tf.saved_model.load(result.path).signatures["serving_default"]
  bad = dict(feats)
  bad[field] = mutate(feats)
  if field == "last_item_id":
    bad["last_sid"] = feats["last_sid"][:3]
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    served(**{k: tf.constant(v) for k, v in bad.items()})


def test_malformed_request_rejected_in_fresh_process(exported):
  run, feats, base, result = exported
  bad = dict(feats)
  bad["candidate_sid"] = np.full_like(feats["candidate_sid"], -3)
  with pytest.raises(ServingError, match="candidate_sid: codes must be in"):
    score_in_fresh_process(result.path, bad)


def test_item_vector_cache_serves_catalogue_items_without_the_representation(exported, world):
  run, feats, base, result = exported
  _, fi, _ = world
  rep = run.model.item_representation
  cache = ItemVectorCache(rep, fi.item_ids, fi.arrays["sid"])
  calls = []

  def spy(items):
    calls.append(int(tf.size(items["item_id"])))
    return rep(items)

  ids = np.array([fi.item_ids[3], "", fi.item_ids[7], "new_item", fi.item_ids[5]]).astype(str)
  codes = fi.arrays["sid"][[3, 0, 7, 1, 5]].copy()
  codes[4] = (codes[4] + 1) % K  # a catalogue id with other codes than cached: not a hit
  items = {"item_id": tf.constant(ids), "sid": tf.constant(codes)}
  expected = rep(items).numpy()
  assert np.abs(cache(items, spy).numpy() - expected).max() == 0.0
  assert calls == [2]  # only "new_item" and the re-coded item were embedded
  known = {k: tf.gather(v, [0, 1, 2]) for k, v in items.items()}
  np.testing.assert_array_equal(cache(known, spy).numpy(), expected[:3])  # the padding row is zero
  assert calls == [2] and not expected[1].any()
  with pytest.raises(ValueError, match="item 'x' is not"):
    ItemVectorCache(rep, ["x", "x"], np.zeros((2, L), np.int32))


def test_export_with_item_cache_matches_in_memory_in_fresh_process(exported, world, tmp_path):
  run, feats, base, result = exported
  _, fi, _ = world
  cached = export_ranker(str(tmp_path), run.model, feats, item_cache={"item_id": fi.item_ids, "sid": fi.arrays["sid"]})
  new = dict(feats)  # half the candidates are not in the catalogue (distinct new ids): the fallback path
  n = len(feats["candidate_item_id"])
  new["candidate_item_id"] = np.where(np.arange(n) % 2 == 0, [f"new_{i}" for i in range(n)],
                                      feats["candidate_item_id"]).astype(object)
  for f in (feats, new):
    got = score_in_fresh_process(cached.path, f)
    ref = run.model(f, training=False)
    for task in ("label", "like"):
      np.testing.assert_allclose(got[task], ref[task].numpy(), rtol=1e-5, atol=1e-6)
