"""Tests for the scaled impression world, the day-by-day sweep (causality, checkpoint resume), the
ranker's injected blocks and its loss under tf.distribute."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from semrec.config import to_dict
from semrec.data.impressions import ImpressionWorldConfig, make_impression_world
from semrec.ranking import (CrossStack, MlpStack, Ranker, RankerConfig, RankingFeaturizer, binary_task, daily_split,
                            prepare_sequential, run_ranking_experiment, train_sequential)
from semrec.ranking import experiment as experiment_lib
from semrec.ranking.experiment import _rep_config, summarise

K = 8
TINY = dict(num_items=600, num_users=150, num_days=6, impressions_per_day=1500, num_topics=4, subtopics_per_topic=4,
            content_dim=8)


def _tiny_world(seed=0, **kw):
  return make_impression_world(ImpressionWorldConfig(**{**TINY, **kw}, seed=seed))


def _sids(world):
  """Dev-only SIDs [N, 3]: (topic, subtopic, item-level code) -- content-derived by construction."""
  return np.stack([world.topic % K, world.subtopic % K, np.arange(len(world.topic)) % K], 1).astype(np.int32)


@pytest.fixture(scope="module")
def tiny():
  world = _tiny_world()
  fi = world.item_features(_sids(world))
  data = prepare_sequential(world.dataset.interactions, fi, history_length=4,
                            split=daily_split(world.dataset.interactions, "day"))
  return world, fi, data


def _config(mode="unigram", budget=64, **kw):
  rep = _rep_config(mode, budget, 3, K, embedding_dim=4, content_dim=0)
  kw = {"hidden_units": (8,), **kw}
  return RankerConfig(item_representation=rep, history_length=4, num_cross_layers=1, learning_rate=1e-2,
                      batch_size=256, **kw)


# -- the world ---------------------------------------------------------------------------------------------------


def test_world_is_deterministic_in_its_seed():
  a, b, c = _tiny_world(0), _tiny_world(0), _tiny_world(1)
  pd.testing.assert_frame_equal(a.dataset.interactions, b.dataset.interactions)
  np.testing.assert_array_equal(a.content, b.content)
  assert not a.dataset.interactions["label"].equals(c.dataset.interactions["label"])


def test_world_sizes_and_new_items_every_day():
  w = _tiny_world()
  inter = w.dataset.interactions
  assert len(inter) == TINY["impressions_per_day"] * TINY["num_days"]
  assert w.content.shape == (TINY["num_items"], TINY["content_dim"])
  np.testing.assert_allclose(np.linalg.norm(w.content, axis=1), 1.0, rtol=1e-5)
  # Uploads on every day, and on every day some items get their first impression.
  assert set(np.unique(w.upload_day)) == set(range(TINY["num_days"]))
  first_day = inter.groupby("item_id")["day"].min()
  assert set(first_day.unique()) == set(range(TINY["num_days"]))
  # No impression of an item before its upload.
  up = pd.Series(w.upload_day, index=w.dataset.item_ids)
  assert (inter["day"].to_numpy() >= up.loc[inter["item_id"]].to_numpy()).all()


def test_ctr_depends_on_content():
  """A logistic fit on one-hot (topic, subtopic) of the clicked items beats chance on later days, and
  the same fit on shuffled topics does not: content predicts part of the CTR."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  w = _tiny_world(num_days=4, impressions_per_day=6000)
  inter = w.dataset.interactions
  rows = w.dataset.items.set_index("item_id").index.get_indexer(inter["item_id"])
  leaf = w.topic[rows] * TINY["subtopics_per_topic"] + w.subtopic[rows]
  x = np.eye(TINY["num_topics"] * TINY["subtopics_per_topic"])[leaf]
  y = inter["label"].to_numpy()
  train = inter["day"].to_numpy() < 3

  def heldout_auc(features):
    fit = LogisticRegression(max_iter=200).fit(features[train], y[train])
    return roc_auc_score(y[~train], fit.predict_proba(features[~train])[:, 1])

  assert heldout_auc(x) > 0.58
  shuffled = x[np.random.default_rng(0).permutation(len(x))]
  assert abs(heldout_auc(shuffled) - 0.5) < 0.03


def test_per_item_quality_is_not_content():
  # The memorised part is independent of the content part (so content cannot predict all of CTR).
  w = make_impression_world(ImpressionWorldConfig(num_items=20000, num_users=10, num_days=2, impressions_per_day=10))
  assert abs(np.corrcoef(w.item_quality, w.content_logit)[0, 1]) < 0.05
  assert w.item_quality.std() > 0.5


# -- the day-by-day protocol -------------------------------------------------------------------------------------


def test_daily_split_periods_and_cold_items(tiny):
  world, fi, data = tiny
  inter = world.dataset.interactions
  assert [int(p["day"].iloc[0]) for p in data.split.train_periods] == list(range(TINY["num_days"] - 1))
  assert (data.split.eval_period["day"] == TINY["num_days"] - 1).all()
  seen = set(inter.loc[inter["day"] < TINY["num_days"] - 1, "item_id"])
  assert data.split.cold_items.size > 0 and not set(data.split.cold_items) & seen
  sub = daily_split(inter, "day", max_train_rows_per_day=100, seed=3)
  assert [len(p) for p in sub.train_periods] == [100] * (TINY["num_days"] - 1)
  assert len(sub.eval_period) == TINY["impressions_per_day"]
  np.testing.assert_array_equal(sub.cold_items, data.split.cold_items)  # judged on the full log


def _weights_after_each_day(inter, fi, config):
  data = prepare_sequential(inter, fi, history_length=4, split=daily_split(inter, "day"))
  snaps = []
  train_sequential(config, data=data, progress=False,
                   on_period_end=lambda i, model: snaps.append([w.copy() for w in model.get_weights()]))
  return snaps


def _same(a, b):
  return all(np.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


def test_sequential_training_never_sees_a_later_days_labels(tiny):
  """Flipping every label from day 3 on leaves the weights after days 0..2 unchanged (and flipping day
  2's labels does change them): training on day d uses labels of days <= d only."""
  world, fi, data = tiny
  inter = world.dataset.interactions
  cfg = _config()
  ref = _weights_after_each_day(inter, fi, cfg)
  later = inter.copy()
  later.loc[later["day"] >= 3, "label"] = 1.0 - later.loc[later["day"] >= 3, "label"]
  moved = _weights_after_each_day(later, fi, cfg)
  assert all(_same(ref[d], moved[d]) for d in range(3))
  assert not _same(ref[3], moved[3])
  same_day = inter.copy()
  same_day.loc[same_day["day"] == 2, "label"] = 1.0 - same_day.loc[same_day["day"] == 2, "label"]
  assert not _same(ref[2], _weights_after_each_day(same_day, fi, cfg)[2])


def test_interrupted_sweep_resumes_without_retraining(tiny, tmp_path, monkeypatch):
  world, fi, data = tiny
  kw = dict(modes=("random_hash", "unigram", "spm"), budgets=(32,), seeds=(0,), use_history=(True,),
            codebook_size=K, base_config=_config(), embedding_dim=4, data=data, progress=False,
            checkpoint_dir=str(tmp_path / "ckpt"))
  real = experiment_lib._train_one
  calls = []

  def failing(sw, hist, mode, budget, seed):
    if mode == "spm":
      raise KeyboardInterrupt("killed")
    calls.append(mode)
    return real(sw, hist, mode, budget, seed)

  monkeypatch.setattr(experiment_lib, "_train_one", failing)
  with pytest.raises(KeyboardInterrupt):
    run_ranking_experiment(None, fi, **kw)
  assert calls == ["random_hash", "unigram"]
  assert len(os.listdir(tmp_path / "ckpt" / "runs")) == 2
  partial = run_ranking_experiment(None, fi, **kw, finished_only=True)  # report what finished, train nothing
  assert set(partial.runs["mode"]) == {"random_hash", "unigram"} and calls == ["random_hash", "unigram"]

  def counting(sw, hist, mode, budget, seed):
    calls.append(mode)
    return real(sw, hist, mode, budget, seed)

  monkeypatch.setattr(experiment_lib, "_train_one", counting)
  res = run_ranking_experiment(None, fi, **kw)
  assert calls == ["random_hash", "unigram", "spm"]  # only the unfinished configuration was trained
  assert set(res.runs["mode"]) == {"random_hash", "unigram", "spm"}
  # A different sweep (other base config) refuses the same checkpoint folder.
  with pytest.raises(ValueError, match="different sweep"):
    run_ranking_experiment(None, fi, **{**kw, "base_config": _config(hidden_units=(16,))})


@pytest.mark.parametrize("stored_dropout, same", [(None, True), (0.0, True), (0.5, False)])
def test_checkpoint_identity_accepts_a_new_config_field_at_its_default(stored_dropout, same):
  # A checkpoint written before ItemRepresentationConfig had ``id_dropout`` (None: key absent) belongs to
  # the same sweep as one at the default 0.0; one that stored another value does not.
  want = {"base": to_dict(RankerConfig()), "L": 3}
  have = json.loads(json.dumps(want))
  rep = have["base"]["item_representation"]
  if stored_dropout is None:
    del rep["id_dropout"]
  else:
    rep["id_dropout"] = stored_dropout
  assert experiment_lib._same_sweep(have, want, {"base": to_dict(RankerConfig())}) is same
  assert not experiment_lib._same_sweep({**have, "L": 4}, want, {"base": to_dict(RankerConfig())})


def test_summary_pairs_each_mode_with_hash_of_the_same_seed():
  runs = pd.DataFrame({"use_history": True, "mode": ["random_hash", "random_hash", "spm", "spm"],
                       "budget": 64, "rows": 64, "seed": [0, 1, 0, 1], "task": "label",
                       "auc": [0.70, 0.72, 0.75, 0.73], "cold_auc": [0.60, 0.60, 0.70, 0.64]})
  s = summarise(runs).set_index("mode")
  # spm - hash per seed: auc (0.05, 0.01) -> mean 0.03, std sqrt(((0.02)^2 * 2) / 1) = 0.028284;
  # cold (0.10, 0.04) -> mean 0.07.
  assert s.loc["spm", "d_auc_vs_hash"] == pytest.approx(0.03)
  assert s.loc["spm", "d_auc_vs_hash_std"] == pytest.approx(0.0282843, abs=1e-6)
  assert s.loc["spm", "d_cold_auc_vs_hash"] == pytest.approx(0.07)
  assert s.loc["spm", "auc"] == pytest.approx(0.74)


# -- the ranker's blocks and loss --------------------------------------------------------------------------------


def _batch(fi, data, n=32):
  ex = data.train_examples[0].take(np.arange(n))
  return RankingFeaturizer(fi, history_length=4).features(ex), {t: ex.labels[t] for t in ("label", "like")}


def test_loss_is_per_example_mean_of_bce(tiny):
  world, fi, data = tiny
  feats, labels = _batch(fi, data)
  model = Ranker(_config(task_weights=(1.0, 0.5)))
  logits = {t: v.numpy() for t, v in model.logits(feats).items()}

  def bce(y, z):  # from logits: max(z, 0) - z * y + log(1 + exp(-|z|)), averaged over the batch
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))

  expected = bce(labels["label"], logits["label"]) + 0.5 * bce(labels["like"], logits["like"])
  got = float(model.compute_loss((feats, labels)))
  assert got == pytest.approx(expected, rel=1e-5)


def test_injected_blocks_are_used(tiny):
  world, fi, data = tiny
  feats, labels = _batch(fi, data)
  cfg = _config()
  default = Ranker(cfg)
  no_cross = Ranker(cfg, feature_interaction=CrossStack(num_layers=0))
  wide = Ranker(cfg, top_stack=MlpStack((24, 4)))
  default(feats), no_cross(feats), wide(feats)
  assert len(default.feature_interaction.crosses) == 1 and not no_cross.feature_interaction.crosses
  assert wide.heads["label"].kernel.shape == (4, 1)
  assert len(no_cross.trainable_weights) < len(default.trainable_weights)
  # A smoothed-label task is a different loss on the same logits.
  smooth = {t: binary_task(t) for t in cfg.tasks}
  smooth["label"] = __import__("tensorflow_recommenders").tasks.Ranking(
      loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2,
                                              reduction=tf.keras.losses.Reduction.NONE))
  other = Ranker(cfg, tasks=smooth)
  other(feats)
  other.set_weights(default.get_weights())
  assert float(other.compute_loss((feats, labels))) != pytest.approx(float(default.compute_loss((feats, labels))))
  with pytest.raises(ValueError, match="must match config.tasks"):
    Ranker(cfg, tasks={"label": binary_task("label")})


def test_injected_blocks_round_trip_through_config(tiny):
  world, fi, data = tiny
  feats, _ = _batch(fi, data)
  a = Ranker(_config(), feature_interaction=CrossStack(num_layers=2, projection_dim=3, seed=5),
             top_stack=MlpStack((12,), seed=2))
  out = a(feats)["label"].numpy()
  b = Ranker.from_config(a.get_config())
  b(feats)
  b.set_weights(a.get_weights())
  assert len(b.feature_interaction.crosses) == 2 and b.top_stack.units == (12,)
  np.testing.assert_allclose(b(feats)["label"].numpy(), out, rtol=1e-6)


_MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import semrec
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[1])
    import test_ranking_scaled as t
    from semrec.ranking import Ranker, prepare_sequential, daily_split
    from semrec.ranking.training import compile_ranker
    world = t._tiny_world(num_days=2, impressions_per_day=512)
    fi = world.item_features(t._sids(world))
    data = prepare_sequential(world.dataset.interactions, fi, history_length=4,
                              split=daily_split(world.dataset.interactions, "day"))
    cfg = t._config()
    feat = t.RankingFeaturizer(fi, history_length=4)
    ds = feat.dataset(data.train_examples[0], 128)
    weights = []
    for strategy in (None, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
      tf.keras.utils.set_random_seed(0)
      if strategy is None:
        model = compile_ranker(Ranker(cfg))
        hist = model.fit(ds, epochs=1, verbose=0)
      else:
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
          model = compile_ranker(Ranker(cfg))
        hist = model.fit(ds, epochs=1, verbose=0)
      weights.append([w.numpy() for w in model.weights])  # creation order (names get _1 suffixes)
      print("loss", hist.history["loss"][-1])
    a, b = weights
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    print("MAXDIFF", diff)
    """)


def test_ranker_trains_under_mirrored_strategy_like_one_process(tmp_path):
  """2 logical CPU replicas under MirroredStrategy reach the single-process weights after one epoch
  (the loss is averaged over the global batch, so all-reduced gradients equal one process's)."""
  script = tmp_path / "mirrored.py"
  script.write_text(_MIRRORED_SCRIPT)
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
  proc = subprocess.run([sys.executable, str(script), os.path.dirname(os.path.abspath(__file__))],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  diff = float(proc.stdout.split("MAXDIFF")[1].split()[0])
  assert diff < 1e-4, proc.stdout
