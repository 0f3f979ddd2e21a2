"""Tests for sid.adapters (ItemRepresentation) and sid.budget."""
import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from semrec.sid import budget
from semrec.sid.adapters import ItemRepresentation, ItemRepresentationConfig
from semrec.sid.spm import train_sid_spm

L, K, D = 4, 4, 6


def _spm():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, K, size=(300, L))
  return train_sid_spm(codes, rng.integers(1, 50, size=300), vocab_size=40, codebook_size=K)


_SPM = None


def _get_spm():
  global _SPM
  if _SPM is None:
    _SPM = _spm()
  return _SPM


def _config(modes, **kw):
  args = dict(modes=modes, embedding_dim=3, num_levels=L, codebook_size=K, table_budget=1000, hash_buckets=64,
              content_dim=D)
  args.update(kw)
  return ItemRepresentationConfig(**args)


def _layer(modes, **kw):
  cfg = _config(modes, **kw)
  return ItemRepresentation(cfg, spm=_get_spm() if "spm" in cfg.modes else None)


def _features(lead):
  """Features for items a, b (sharing c1 c2), c, and a padding slot."""
  sid = np.array([[1, 2, 3, 0], [1, 2, 0, 3], [3, 3, 3, 3], [-1, -1, -1, -1]], np.int32)
  ids = np.array(["a", "b", "c", ""], object)
  content = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
  content[3] = 0.0
  if lead == "BH":  # [B=2, H=4]: the same 4 slots twice
    sid, ids, content = np.stack([sid, sid]), np.stack([ids, ids]), np.stack([content, content])
  return {"item_id": tf.constant(ids.astype(str)), "sid": tf.constant(sid), "content": tf.constant(content)}


ALL = ("random_hash", "dense", "unigram", "bigram", "prefix", "spm")


class ItemRepresentationTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.product(mode=ALL, lead=("B", "BH"))
  def test_shapes_and_padding(self, mode, lead):
    layer = _layer((mode,))
    out = layer(_features(lead))
    expected = (4, 3) if lead == "B" else (2, 4, 3)
    self.assertEqual(tuple(out.shape), expected)
    self.assertEqual(out.dtype, tf.float32)
    out = out.numpy().reshape(-1, 4, 3)
    self.assertAllEqual(out[:, 3], np.zeros((out.shape[0], 3)))  # padding slot -> zeros
    self.assertGreater(np.abs(out[:, 0]).sum(), 0.0)
    self.assertNotAllClose(out[:, 0], out[:, 2])  # different items differ

  def test_combiners(self):
    modes = ("unigram", "random_hash", "dense")
    cat = _layer(modes, combiner="concat")
    tot = _layer(modes, combiner="sum")
    feats = _features("B")
    cat(feats), tot(feats)
    tot.set_weights(cat.get_weights())
    self.assertEqual(cat.output_dim, 9)
    self.assertEqual(tot.output_dim, 3)
    c = cat(feats).numpy()
    self.assertAllClose(tot(feats).numpy(), c[:, 0:3] + c[:, 3:6] + c[:, 6:9])

  def test_unigram_and_bigram_exact_ids(self):
    # unigram row = level * K + code: [1, 2, 3, 0] -> [1, 4+2, 8+3, 12+0].
    feats = _features("B")
    ids = _layer(("unigram",)).lookup_ids(feats)["unigram"].numpy()
    self.assertAllEqual(ids[0], [1, 6, 11, 12])
    self.assertAllEqual(ids[3], [-1, -1, -1, -1])
    # bigram (exact space 2 * K^2 = 32 <= budget): (1,2) -> 1*4+2 = 6; (3,0) -> 16 + 12 = 28.
    ids = _layer(("bigram",)).lookup_ids(feats)["bigram"].numpy()
    self.assertAllEqual(ids[0], [6, 28])
    # prefix (exact space 4+16+64+256 = 340): (1) -> 1, (1,2) -> 4+6, (1,2,3) -> 20+27, (1,2,3,0) -> 84+108.
    ids = _layer(("prefix",)).lookup_ids(feats)["prefix"].numpy()
    self.assertAllEqual(ids[0], [1, 10, 47, 192])

  @parameterized.parameters(
      ("unigram", 1000, [True, True, False, False]),
      ("bigram", 1000, [True, False]),
      ("prefix", 1000, [True, True, False, False]),
      ("prefix", 50, [True, True, False, False]),   # hashed into 50 rows: shared prefixes still share
      ("bigram", 20, [True, False]),                # hashed (exact space 32 > 20)
  )
  def test_shared_prefix_shares_embeddings(self, mode, table_budget, shared):
    layer = _layer((mode,), table_budget=table_budget)
    feats = _features("B")
    out = layer(feats).numpy()
    ids = layer.lookup_ids(feats)[mode].numpy()
    self.assertEqual(list(ids[0] == ids[1]), shared)
    self.assertTrue(np.all(ids[:3] < layer.config.table_budget))
    # a - b = sum of a's unshared rows - b's unshared rows (the shared rows cancel).
    table = layer._tables[mode].embeddings.numpy()  # pylint: disable=protected-access
    own = [j for j, s in enumerate(shared) if not s]
    self.assertAllClose(out[0] - out[1], table[ids[0, own]].sum(0) - table[ids[1, own]].sum(0), atol=1e-6)

  def test_spm_shared_prefix(self):
    # Items whose SPM pieces overlap share those rows; the output is the sum of the piece rows.
    layer = _layer(("spm",))
    feats = _features("B")
    out = layer(feats).numpy()
    pieces = layer.lookup_ids(feats)["spm"].numpy()
    self.assertAllEqual(pieces[:3], _get_spm().segment_padded(feats["sid"].numpy()[:3]))
    table = layer._tables["spm"].embeddings.numpy()  # pylint: disable=protected-access
    for r in range(3):
      p = pieces[r][pieces[r] >= 0]
      self.assertAllClose(out[r], table[p].sum(0), atol=1e-6)

  @parameterized.parameters(("unigram",), ("bigram", "prefix"), ("spm", "random_hash"), ALL)
  def test_config_round_trip(self, *modes):
    layer = _layer(tuple(modes), combiner="concat")
    feats = _features("BH")
    expected = layer(feats).numpy()
    cfg = layer.get_config()
    self.assertEqual(cfg["config"]["modes"], list(modes))
    clone = ItemRepresentation.from_config(cfg)
    clone.build(None)  # an "spm" clone has an empty piece table until its weights are restored
    clone.set_weights(layer.get_weights())
    self.assertAllClose(clone(feats).numpy(), expected)
    # Through the Keras registry too (package "semrec").
    ser = tf.keras.utils.serialize_keras_object(layer)
    again = tf.keras.utils.deserialize_keras_object(ser)
    self.assertIsInstance(again, ItemRepresentation)
    self.assertEqual(again.config, layer.config)

  def test_trains_in_functional_model(self):
    tf.keras.utils.set_random_seed(0)  # unseeded, SGD(0.5) diverged to NaN on some initialisations
    layer = _layer(("unigram", "random_hash"), combiner="sum")
    inputs = {"item_id": tf.keras.Input((), dtype=tf.string, name="item_id"),
              "sid": tf.keras.Input((L,), dtype=tf.int32, name="sid")}
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(layer(inputs)))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    feats = _features("B")
    x = {"item_id": feats["item_id"], "sid": feats["sid"]}
    y = tf.constant([[1.0], [0.0], [1.0], [0.0]])
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=20, verbose=0)
    self.assertLess(model.evaluate(x, y, verbose=0), first)

  def test_keras_saved_model_round_trip(self):
    # A functional model with an spm + n-gram + hash representation saves and reloads (piece table in weights).
    layer = _layer(("spm", "bigram", "random_hash"), combiner="sum")
    inputs = {"item_id": tf.keras.Input((None,), dtype=tf.string, name="item_id"),
              "sid": tf.keras.Input((None, L), dtype=tf.int32, name="sid")}
    model = tf.keras.Model(inputs, layer(inputs))
    feats = _features("BH")
    x = {"item_id": feats["item_id"], "sid": feats["sid"]}
    expected = model(x).numpy()
    path = self.get_temp_dir() + "/rep_model"
    model.save(path, save_format="tf")
    again = tf.keras.models.load_model(path)
    self.assertAllClose(again(x).numpy(), expected)
    rep = [l for l in again.layers if isinstance(l, ItemRepresentation)]
    self.assertLen(rep, 1)
    self.assertAllEqual(rep[0].lookup_ids(x)["spm"].numpy(), layer.lookup_ids(x)["spm"].numpy())


class BadInputTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      (dict(modes=("unigram", "trigram")), "trigram"),
      (dict(modes=()), "at least one"),
      (dict(modes=("unigram", "unigram")), "duplicates"),
      (dict(combiner="mean"), "mean"),
      (dict(embedding_dim=0), "embedding_dim"),
      (dict(modes=("dense",), content_dim=-1), "content_dim"),
      (dict(modes=("spm",), table_budget=10), "L\\*K \\+ 1 = 17"),
  )
  def test_config_validation(self, kwargs, msg):
    with self.assertRaisesRegex(ValueError, msg):
      _config(**{"modes": "unigram", **kwargs})

  @parameterized.parameters(("unigram",), ("prefix",), ("spm",))
  def test_code_out_of_range(self, mode):
    layer = _layer((mode,))
    feats = _features("B")
    feats["sid"] = tf.constant([[1, 2, 3, K]], tf.int32)
    feats["item_id"] = tf.constant(["x"])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "'sid' codes must be in \\[0, 4\\)"):
      layer(feats)
    feats["sid"] = tf.constant([[1, -1, 3, 0]], tf.int32)  # partial -1 is not padding
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "'sid'"):
      layer(feats)

  def test_code_out_of_range_in_tf_function(self):
    layer = _layer(("bigram",))
    fn = tf.function(lambda s: layer({"sid": s}),
                     input_signature=[tf.TensorSpec([None, None], tf.int64)])
    self.assertEqual(fn(tf.constant([[0, 1, 2, 3]], tf.int64)).shape, (1, 3))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "sid.{0,2} codes must be in"):
      fn(tf.constant([[0, 1, 2, 9]], tf.int64))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "sid.{0,2} last dimension must be num_levels=4"):
      fn(tf.constant([[0, 1, 2]], tf.int64))

  def test_wrong_levels_static(self):
    with self.assertRaisesRegex(ValueError, "'sid' last dimension must be num_levels=4, got 3"):
      _layer(("unigram",))({"sid": tf.constant([[0, 1, 2]])})

  def test_missing_feature(self):
    with self.assertRaisesRegex(ValueError, "needs input feature 'item_id'"):
      _layer(("random_hash",))({"sid": tf.constant([[0, 1, 2, 3]])})
    with self.assertRaisesRegex(ValueError, "content_dim=6, got 5"):
      _layer(("dense",))({"content": tf.zeros([2, 5])})


class BudgetTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      # (mode, L, K, budget, rows, lookups)
      ("unigram", 4, 256, 65536, 1024, 4),
      ("bigram", 4, 256, 65536, 65536, 2),      # exact 2 * 256^2 = 131072 > budget: hashed
      ("bigram", 4, 16, 65536, 512, 2),         # exact 2 * 16^2
      ("bigram", 3, 16, 65536, 272, 2),         # (c1c2)(c3): 256 + 16
      ("prefix", 3, 16, 65536, 4368, 3),        # 16 + 256 + 4096
      ("prefix", 8, 2048, 65536, 65536, 8),     # hashed
      ("random_hash", 4, 256, 65536, 1000, 1),
      ("dense", 4, 256, 65536, 0, 0),
      ("spm", 4, 256, 8192, 8192, None),
  )
  def test_rows_and_lookups(self, mode, num_levels, k, table_budget, rows, lookups):
    self.assertEqual(budget.table_rows(mode, num_levels, k, table_budget, hash_buckets=1000), rows)
    self.assertEqual(budget.lookups_per_item(mode, num_levels), lookups)

  def test_spans(self):
    self.assertEqual(budget.ngram_spans("bigram", 5), [(0, 2), (2, 2), (4, 1)])
    self.assertEqual(budget.ngram_spans("prefix", 3), [(0, 1), (0, 2), (0, 3)])
    with self.assertRaisesRegex(ValueError, "spm"):
      budget.ngram_spans("spm", 3)

  def test_budget_table_and_bins(self):
    rows = budget.budget_table(4, 16, [100, 1000], spm_lookups={100: 3.5, 1000: 2.0})
    by = {(r["mode"], r["budget"]): r for r in rows}
    self.assertTrue(by[("bigram", 100)]["hashed"])
    self.assertFalse(by[("bigram", 1000)]["hashed"])
    self.assertEqual(by[("spm", 1000)]["lookups_per_item"], 2.0)
    bins = budget.popularity_bins(np.array([5, 1, 9, 3]), num_bins=2)
    self.assertAllEqual(bins, [0, 1, 0, 1])
    self.assertAllEqual(budget.pieces_per_item(np.array([[3, -1, -1], [1, 2, 3]])), [1, 3])


if __name__ == "__main__":
  tf.test.main()
