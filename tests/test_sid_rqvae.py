"""RQ-VAE / RQ-KMeans: training, frozen assignment, save/load, resumable batch assignment, bad input."""
import os

import numpy as np
import pytest
import semrec  # noqa: F401  (before tensorflow)
import tensorflow as tf

from semrec.config import from_dict, to_dict
from semrec.data import DataError
from semrec.sid import (RQVAEConfig, SidAssigner, SidModel, SidTable, assign_sids, train_sid_model,
                        write_health_report)
from semrec.tests.test_sid_kmeans import purity, random_purity, title_features

TINY = dict(num_levels=2, codebook_size=8, hidden_dims=(16,), latent_dim=4, epochs=3, batch_size=32,
            init_batch_size=64)


def clustered(n=200, d=12, centers=10, seed=0):
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(centers, d)) * 3
  return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  return clustered()


@pytest.fixture(scope="module", params=[("rqvae", "center"), ("rqkmeans", "whiten"), ("rqvae", "whiten")])
def trained(request, data):
  mode, norm = request.param
  return train_sid_model(data, RQVAEConfig(mode=mode, normalization=norm, whiten_dim=8, **TINY))


def test_codes_shape_range_and_health(trained, data):
  codes = trained.codes(data)
  assert codes.shape == (len(data), 2) and codes.dtype == np.int32
  assert codes.min() >= 0 and codes.max() < 8
  h = trained.health(data)
  assert h["num_items"] == len(data)
  # k-means initialisation and dead-code resets (rqvae) / residual k-means (rqkmeans) put every one of the
  # K=8 codes of each level to use on 200 clustered items: utilisation 100%, as the README states.
  assert [lv["utilisation"] for lv in h["levels"]] == [1.0, 1.0]
  assert all(lv["dead_codes"] == 0 for lv in h["levels"])
  if trained.config.normalization == "center":  # better than predicting the mean
    assert h["reconstruction"]["mse"] < ((data - data.mean(0)) ** 2).sum(1).mean()
  if trained.config.mode == "rqvae":
    assert len(trained.history["loss"]) == 3


def test_health_report_and_table(trained, data, tmp_path):
  h = write_health_report(trained, data, str(tmp_path / "h"), title="tiny")
  assert sorted(os.listdir(tmp_path / "h")) == ["code_usage.png", "health.json", "health.md"]
  assert h["num_items"] == len(data) and h["reconstruction"] is not None
  t = trained.table(data, [f"x{i}" for i in range(len(data))])
  assert t.suffix is not None and len(np.unique(t.full_codes(), axis=0)) == len(data)
  np.testing.assert_array_equal(t.codes, trained.codes(data))


def test_save_load_identical_codes(trained, data, tmp_path):
  trained.save(str(tmp_path / "model"))
  trained.save(str(tmp_path / "model"))  # overwriting is atomic and allowed
  loaded = SidModel.load(str(tmp_path / "model"))
  assert loaded.config == trained.config
  np.testing.assert_array_equal(loaded.codes(data), trained.codes(data))
  np.testing.assert_allclose(loaded.codebooks(), trained.codebooks())
  np.testing.assert_allclose(loaded.reconstruct(data[:5]), trained.reconstruct(data[:5]), atol=1e-5)
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p or ".old" in p]


def test_assigner_matches_training_codes_and_serialises(trained, data, tmp_path):
  a = trained.assigner
  assert not a.trainable_weights
  if trained.network is not None:
    # The training forward pass and the frozen assigner agree exactly.
    np.testing.assert_array_equal(trained.network(tf.constant(data))["codes"].numpy(), a(data).numpy())
  clone = SidAssigner.from_config(a.get_config())
  clone(data[:1])
  clone.set_weights(a.get_weights())
  np.testing.assert_array_equal(clone(data).numpy(), a(data).numpy())
  # Inside a Keras tower, saved and reloaded.
  inp = tf.keras.Input([data.shape[1]])
  tower = tf.keras.Model(inp, a(inp))
  tower.save(str(tmp_path / "tower.keras"))
  reloaded = tf.keras.models.load_model(str(tmp_path / "tower.keras"))
  np.testing.assert_array_equal(reloaded(data).numpy(), a(data).numpy())


def test_new_items_without_retraining(trained):
  new = clustered(n=30, seed=5)  # unseen items
  codes = trained.codes(new)
  assert codes.shape == (30, 2)
  np.testing.assert_array_equal(codes, trained.assigner(new).numpy())


def test_assign_sids_resumable(trained, data, tmp_path):
  ids = [f"it{i}" for i in range(len(data))]
  out = str(tmp_path / "sids")
  table = assign_sids(data, trained.assigner, out, item_ids=ids, shard_size=64, progress=False)
  np.testing.assert_array_equal(table.codes, trained.codes(data))
  shards = sorted(p for p in os.listdir(out) if p.startswith("codes-"))
  assert len(shards) == 4
  # Interrupted run: one shard missing, another corrupted with a foreign fingerprint.
  os.remove(os.path.join(out, shards[1]))
  np.savez(os.path.join(out, shards[2]), codes=np.zeros((64, 2), np.int32), start=128, stop=192, fingerprint="x")
  mtime0 = os.path.getmtime(os.path.join(out, shards[0]))
  again = assign_sids(data, trained.assigner, out, item_ids=ids, shard_size=64, suffix=True, progress=False)
  np.testing.assert_array_equal(again.codes, table.codes)
  assert os.path.getmtime(os.path.join(out, shards[0])) == mtime0  # reused, not recomputed
  loaded = SidTable.load(os.path.join(out, "table"))
  assert len(np.unique(loaded.full_codes(), axis=0)) == len(data)


def test_assign_sids_from_store_contents(trained, data, tmp_path):
  from semrec.encoders import StoreContents
  ids = np.array([f"s{i}" for i in range(len(data))], dtype=object)
  contents = StoreContents(ids, data, np.ones((len(data), 1), np.float32), {})
  table = assign_sids(contents, trained.assigner, str(tmp_path / "s"), progress=False)
  assert list(table.item_ids) == list(ids)
  np.testing.assert_array_equal(table.codes, trained.codes(data))


def test_bad_input(trained, data, tmp_path):
  with pytest.raises(DataError, match="wrong embedding width 5"):
    trained.codes(np.zeros((3, 5), np.float32))
  bad = data[:10].copy()
  bad[7, 0] = np.inf
  with pytest.raises(DataError, match="row 7 \\(item 'b7'\\)"):
    assign_sids(bad, trained.assigner, str(tmp_path), item_ids=[f"b{i}" for i in range(10)], progress=False)
  with pytest.raises(DataError, match="empty"):
    assign_sids(np.zeros((0, data.shape[1]), np.float32), trained.assigner, str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="codebook_size K=8 is larger than the number of items N=5"):
    train_sid_model(data[:5], RQVAEConfig(mode=trained.config.mode, **TINY))
  with pytest.raises(DataError, match="NaN or inf"):
    train_sid_model(bad, RQVAEConfig(mode=trained.config.mode, **TINY))


def test_whitening_small_catalogue(data):
  # whiten_dim=64 > N - 1 = 19: capped, trains, codes for all items.
  model = train_sid_model(data[:20], RQVAEConfig(mode="rqkmeans", num_levels=2, codebook_size=4, whiten_dim=64))
  assert model.config.whiten_dim == 12  # min(N - 1, F)
  assert model.codes(data[:20]).shape == (20, 2)


def test_config_validation():
  with pytest.raises(ValueError, match="mode must be one of"):
    RQVAEConfig(mode="vqvae")
  with pytest.raises(ValueError, match="normalization"):
    RQVAEConfig(normalization="l3")
  with pytest.raises(ValueError, match="codebook_size"):
    RQVAEConfig(codebook_size=1)
  cfg = RQVAEConfig(mode="rqkmeans", hidden_dims=[8, 4])
  assert from_dict(RQVAEConfig, to_dict(cfg)) == cfg


@pytest.fixture(scope="module")
def synthetic_400(tmp_path_factory):
  """400 items / 4 topics: enough items for the RQ-VAE to learn from title features in a few seconds."""
  from semrec.data import SyntheticConfig, make_synthetic
  cfg = SyntheticConfig(num_items=400, num_users=10, num_topics=4, num_days=3, impressions_per_user_per_day=2,
                        image_size=8, audio_seconds=0.05, seed=0, output_dir=str(tmp_path_factory.mktemp("syn400")))
  return make_synthetic(cfg)


CFG_400 = dict(num_levels=2, codebook_size=8, hidden_dims=(64,), latent_dim=16, epochs=30, batch_size=32,
               init_batch_size=400, normalization="center")


@pytest.fixture(scope="module")
def trained_400(synthetic_400):
  """{mode: SID model trained on the titles' bag of words}, each trained once for the tests below."""
  x = title_features(synthetic_400)
  return x, {mode: train_sid_model(x, RQVAEConfig(mode=mode, **CFG_400), progress=False)
             for mode in ("rqvae", "rqkmeans")}


@pytest.mark.parametrize("mode", ["rqvae", "rqkmeans"])
def test_level1_codes_are_topic_pure(synthetic_400, trained_400, mode):
  # Content = bag of words of the titles (no topic labels); truth = item_topics.
  x, models = trained_400
  topics = np.asarray(synthetic_400.item_topics)
  codes = models[mode].codes(x)
  p, r = purity(codes[:, 0], topics), random_purity(codes[:, 0], topics)
  assert p > 0.9 and p > r + 0.4, (p, r)


def test_rqvae_training_beats_the_same_model_without_gradient_steps(synthetic_400, trained_400):
  # The same seeded network, k-means codebook initialisation and final codebook refresh, but a learning rate
  # of 1e-12 for its one epoch: zero effective gradient steps. Its decoder is still random, so only
  # training can bring reconstructions towards the input; measured (400 items, 30 epochs): reconstruction
  # cosine 0.47 trained vs 0.16 untrained, MSE 0.84 vs 1.03 (predicting the mean: 0.93), level-1 topic purity
  # 0.975 vs 0.54.
  x, models = trained_400
  trained = models["rqvae"]
  untrained = train_sid_model(x, RQVAEConfig(mode="rqvae", **{**CFG_400, "epochs": 1}, learning_rate=1e-12),
                              progress=False)
  topics = np.asarray(synthetic_400.item_topics)

  def reconstruction(model):  # (mean squared error per item, mean cosine) of the decoded SIDs
    r = model.reconstruct(x)
    cos = (x * r).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    return float(((x - r) ** 2).sum(1).mean()), float(cos.mean())

  (mse_t, cos_t), (mse_u, cos_u) = reconstruction(trained), reconstruction(untrained)
  assert cos_t > cos_u + 0.2 and mse_t < mse_u, (cos_t, cos_u, mse_t, mse_u)
  assert mse_t < ((x - x.mean(0)) ** 2).sum(1).mean()  # better than predicting the mean
  p_trained, p_untrained = (purity(m.codes(x)[:, 0], topics) for m in (trained, untrained))
  assert p_trained > p_untrained + 0.2, (p_trained, p_untrained)
