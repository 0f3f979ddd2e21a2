"""Cluster IDs: k-means fitting, in-graph assignment, trainable table, topic purity on the synthetic world."""
import numpy as np
import pytest
import semrec  # noqa: F401  (before tensorflow)
import tensorflow as tf
from absl.testing import parameterized

from semrec.data import DataError
from semrec.sid.kmeans import (ClusterIdEmbedding, ClusterIdLayer, fit_cluster_granularities, fit_kmeans,
                               nearest_centroid)


def title_features(ds):
  """Bag-of-words of the synthetic titles, L2-normalised: real content features, no topic labels."""
  from sklearn.feature_extraction.text import CountVectorizer
  x = CountVectorizer(binary=True).fit_transform(ds.items["title"]).toarray().astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def purity(labels, topics):
  """Fraction of items whose cluster's majority topic is their own topic."""
  total = 0
  for c in np.unique(labels):
    total += np.bincount(topics[labels == c]).max()
  return total / len(labels)


def random_purity(labels, topics, seed=0, repeats=20):
  """Purity of random assignments with the same cluster sizes."""
  rng = np.random.default_rng(seed)
  return float(np.mean([purity(rng.permutation(labels), topics) for _ in range(repeats)]))


class FitKMeansTest(tf.test.TestCase, parameterized.TestCase):

  def test_centroids_shape_and_recovery(self):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 10
    x = np.concatenate([c + rng.normal(size=(30, 8)) for c in centers]).astype(np.float32)
    cents = fit_kmeans(x, 4, seed=0)
    self.assertEqual(cents.shape, (4, 8))
    self.assertEqual(cents.dtype, np.float32)
    # Every true centre is recovered (nearest fitted centroid within noise).
    d = np.sqrt(((centers[:, None] - cents[None]) ** 2).sum(-1)).min(1)
    self.assertLess(d.max(), 1.0)

  def test_sample_size(self):
    x = np.random.default_rng(1).normal(size=(200, 3)).astype(np.float32)
    self.assertEqual(fit_kmeans(x, 5, sample_size=50).shape, (5, 3))
    with self.assertRaisesRegex(ValueError, "sample_size=3 is smaller than k=5"):
      fit_kmeans(x, 5, sample_size=3)

  def test_bad_input(self):
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    with self.assertRaisesRegex(ValueError, "k=11 clusters is larger than the number of items"):
      fit_kmeans(x, 11)
    with self.assertRaisesRegex(DataError, "empty"):
      fit_kmeans(np.zeros((0, 3)), 2)
    bad = x.copy()
    bad[4, 1] = np.nan
    with self.assertRaisesRegex(DataError, "row 4 \\(item 'movie_4'\\)"):
      fit_kmeans(bad, 2, item_ids=[f"movie_{i}" for i in range(10)])


class ClusterIdLayerTest(tf.test.TestCase, parameterized.TestCase):

  def test_matches_numpy_and_round_trips(self):
    rng = np.random.default_rng(0)
    cents = rng.normal(size=(6, 4)).astype(np.float32)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    layer = ClusterIdLayer(cents)
    ids = layer(x)
    self.assertEqual(ids.dtype, tf.int32)
    self.assertAllEqual(ids, nearest_centroid(x, cents))
    self.assertEmpty(layer.trainable_weights)
    clone = ClusterIdLayer.from_config(layer.get_config())
    clone.set_weights(layer.get_weights())
    self.assertAllEqual(clone(x), ids)

  def test_inside_saved_keras_model(self):
    rng = np.random.default_rng(0)
    cents = rng.normal(size=(5, 3)).astype(np.float32)
    inp = tf.keras.Input([3])
    model = tf.keras.Model(inp, ClusterIdEmbedding(5, 2)(ClusterIdLayer(cents)(inp)))
    x = rng.normal(size=(8, 3)).astype(np.float32)
    path = self.get_temp_dir() + "/m.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    self.assertAllClose(loaded(x), model(x))

  def test_input_slice_and_width_errors(self):
    cents = np.eye(2, dtype=np.float32)
    layer = ClusterIdLayer(cents, input_slice=(3, 5))
    x = np.array([[9, 9, 9, 1, 0], [9, 9, 9, 0, 1]], np.float32)
    self.assertAllEqual(layer(x), [0, 1])
    with self.assertRaisesRegex(ValueError, "wrong embedding width 4; the centroids expect 2"):
      ClusterIdLayer(cents)(np.zeros((1, 4), np.float32))

  def test_embedding(self):
    emb = ClusterIdEmbedding(7, 3)
    ids = tf.constant([[0, 6], [2, 2]])
    with tf.GradientTape() as tape:
      out = emb(ids)
      loss = tf.reduce_sum(out)
    self.assertEqual(out.shape, (2, 2, 3))
    self.assertEqual(len(emb.trainable_weights), 1)
    grad = tf.convert_to_tensor(tape.gradient(loss, emb.embeddings))
    self.assertAllClose(grad[2], [2.0, 2.0, 2.0])  # id 2 used twice
    clone = ClusterIdEmbedding.from_config(emb.get_config())
    clone.set_weights(emb.get_weights())
    self.assertAllClose(clone(ids), out)
    with self.assertRaises(tf.errors.InvalidArgumentError):
      emb(tf.constant([7]))


@pytest.fixture(scope="module")
def synthetic_features(synthetic_small):
  return title_features(synthetic_small), np.asarray(synthetic_small.item_topics)


def test_cluster_ids_are_topic_pure(synthetic_features):
  x, topics = synthetic_features
  layers = fit_cluster_granularities(x, ks=(8, 16), seed=0)
  assert sorted(layers) == ["k16", "k8"]
  for name, layer in layers.items():
    labels = layer(x).numpy()
    p, r = purity(labels, topics), random_purity(labels, topics)
    assert p > 0.85, (name, p)
    assert p > r + 0.3, (name, p, r)


def test_per_modality_clustering(synthetic_features):
  x, topics = synthetic_features
  noise = np.random.default_rng(0).normal(size=(len(x), 5)).astype(np.float32)
  xx = np.concatenate([x, noise], axis=1)
  layers = fit_cluster_granularities(xx, ks=(8,), modality_slices={"text": (0, x.shape[1]),
                                                                    "noise": (x.shape[1], xx.shape[1])})
  assert sorted(layers) == ["noise_k8", "text_k8"]
  p_text = purity(layers["text_k8"](xx).numpy(), topics)
  p_noise = purity(layers["noise_k8"](xx).numpy(), topics)
  assert p_text > 0.9 and p_text > p_noise + 0.3
  with pytest.raises(ValueError, match="outside the embedding width"):
    fit_cluster_granularities(xx, ks=(4,), modality_slices={"bad": (0, 999)})
