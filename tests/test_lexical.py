"""LexicalEncoder (TF-IDF + truncated SVD) and the content mix's lexical channel."""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from semrec.encoders import EncodeError, LexicalEncoder, LexicalEncoderConfig
from semrec.towers.score_blocks import ContentBlock

# Two topics, each twice: tf-idf rows span a 2-d space, so with L = 2 the SVD basis spans exactly the
# catalogue's rows and cosines to catalogue items are those of the (projected) tf-idf vectors.
CORPUS = ["red apple", "red apple", "blue car car", "blue car car"]


class LexicalEncoderTest(tf.test.TestCase):

  def _encoder(self):
    return LexicalEncoder(LexicalEncoderConfig(dim=2)).fit(CORPUS, item_ids=["a", "b", "c", "d"])

  def test_vocabulary_idf_and_unit_rows(self):
    enc = self._encoder()
    self.assertAllEqual(enc.vocabulary, ["apple", "blue", "car", "red"])
    # Every term is in 2 of 4 items: idf = ln((1 + 4) / (1 + 2)) + 1.
    self.assertAllClose(enc.idf, [math.log(5 / 3) + 1] * 4)
    y = enc.encode(CORPUS)
    self.assertEqual(y.shape, (4, 2))
    self.assertAllClose(np.linalg.norm(y, axis=1), [1.0] * 4, atol=1e-6)
    self.assertAllClose(y @ y.T, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], atol=1e-6)

  def test_new_text_golden_cosines(self):
    # "red car": tf-idf (apple, blue, car, red) = (0, 0, 1, 1) / sqrt(2) (equal idf cancels).
    # "red apple" unit: (1, 0, 0, 1) / sqrt(2)        -> dot .5
    # "blue car car" (sublinear tf 1 + ln 2 = c): (0, 1, c, 0) / sqrt(1 + c^2) -> dot c / sqrt(2 (1 + c^2))
    # The SVD basis spans those two (orthogonal) rows; the projection's norm is sqrt(.5^2 + dot^2), and
    # the cosine after projection is dot / that norm: .6347 and .7728.
    enc = self._encoder()
    c = 1 + math.log(2)
    d1, d3 = 0.5, c / math.sqrt(2 * (1 + c * c))
    norm = math.hypot(d1, d3)
    got = enc.encode(["red car"]) @ enc.encode(["red apple", "blue car car"]).T
    self.assertAllClose(got[0], [d1 / norm, d3 / norm], atol=1e-5)
    self.assertAllClose(got[0], [0.6347, 0.7728], atol=1e-4)

  def test_unknown_words_and_empty_text_give_zero_rows(self):
    y = self._encoder().encode(["", "zebra xylophone", "RED Apple!"])
    self.assertAllClose(y[:2], np.zeros((2, 2)))
    self.assertAllClose(np.linalg.norm(y[2]), 1.0, atol=1e-6)  # lower-cased, punctuation dropped

  def test_save_load_round_trip(self):
    enc = self._encoder()
    import tempfile
    path = tempfile.mkdtemp() + "/sub/lex.npz"
    enc.save(path)
    back = LexicalEncoder.load(path)
    self.assertEqual(back.config, enc.config)
    self.assertAllClose(back.encode(["red car", "blue apple"]), enc.encode(["red car", "blue apple"]))

  def test_bad_input_names_the_item(self):
    with self.assertRaisesRegex(EncodeError, r"item 'b', field 'text': expected a string, got NoneType"):
      LexicalEncoder().fit(["red apple", None], item_ids=["a", "b"])
    with self.assertRaisesRegex(ValueError, "no vocabulary term"):
      LexicalEncoder().fit(["", "!"])
    with self.assertRaisesRegex(ValueError, "not fitted"):
      LexicalEncoder().encode(["red"])
    with self.assertRaisesRegex(ValueError, "dim"):
      LexicalEncoderConfig(dim=0)


class ContentMixLexicalTest(tf.test.TestCase):
  """History h1, h2 (h2 most recent) and one candidate x, 2-d content and lexical rows:
  content  h1 (1, 0)  h2 (0, 1)  x (.6, .8)
  lexical  h1 (0, 1)  h2 (1, 0)  x (1, 0)
  """

  def _inputs(self):
    history = {"item_id": tf.constant([["h1", "h2"]]), "content": tf.constant([[[1.0, 0.0], [0.0, 1.0]]]),
               "lexical": tf.constant([[[0.0, 1.0], [1.0, 0.0]]])}
    item = {"item_id": tf.constant(["x"]), "content": tf.constant([[0.6, 0.8]]), "lexical": tf.constant([[1.0, 0.0]])}
    return history, item

  def _score(self, mix, history, item):
    q, c = mix.query_part({"history": history}).numpy(), mix.candidate_part(item).numpy()
    return float(np.max(q[0] @ c[0])) if q.ndim == 3 else float(q[0] @ c[0])

  def test_max_pooling_adds_the_lexical_cosine_per_history_item(self):
    # cos(content) + b cos(lexical) per slot: h1 .6 + b * 0, h2 .8 + b * 1; max over slots, times a.
    history, item = self._inputs()
    mix = ContentBlock(pooling="max", lexical=True, tunable_lexical=True)
    mix.apply({"alpha": 0.5})
    self.assertAllClose(self._score(mix, history, item), 0.5 * 1.8, atol=1e-6)  # b = 1 (default)
    mix.apply({"lexical_weight": 0.0})
    self.assertAllClose(self._score(mix, history, item), 0.5 * 0.8, atol=1e-6)
    self.assertEqual(mix.width(item), 4)

  def test_mean_pooling_pools_each_channel(self):
    # decay .8: u_c = norm(.8 (1, 0) + (0, 1)) = (.8, 1) / sqrt(1.64); cos(u_c, x) = 1.28 / sqrt(1.64) = .99951
    #           u_l = norm(.8 (0, 1) + (1, 0)) = (1, .8) / sqrt(1.64); cos(u_l, x) = 1 / sqrt(1.64) = .78087
    history, item = self._inputs()
    mix = ContentBlock(pooling="mean", lexical=True)
    mix.apply({"alpha": 0.5})
    self.assertAllClose(self._score(mix, history, item), 0.5 * (0.99951 + 0.78087), atol=1e-4)

  def test_without_lexical_the_feature_is_not_read(self):
    history, item = self._inputs()
    mix = ContentBlock(pooling="max")
    mix.apply({"alpha": 1.0})
    del history["lexical"], item["lexical"]
    self.assertAllClose(self._score(mix, history, item), 0.8, atol=1e-6)
    self.assertEqual(mix.keys, ("content",))

  def test_get_config_round_trip(self):
    mix = ContentBlock(pooling="max", lexical=True, name="m")
    back = ContentBlock.from_config(mix.get_config())
    self.assertTrue(back.lexical)
    self.assertEqual(back.pooling, "max")


def test_auto_lexical_is_tuned_saved_and_reloaded(tmp_path):
  """"auto" -> b chosen later; the saved model records "on" (b = 1) or "off" (b = 0, no lexical feature)."""
  from semrec.data import ItemFeatures
  from semrec.towers import RetrievalInputs, TwoTowerRetriever, load_retriever, save_retriever
  from tests.test_sequential import _seq_model
  rng = np.random.default_rng(0)
  ids = np.array([f"i{j:02d}" for j in range(12)], dtype=object)
  f = ItemFeatures(ids, {"content": rng.normal(size=(12, 6)).astype(np.float32),
                         "lexical": rng.normal(size=(12, 3)).astype(np.float32)})
  base = _seq_model(num_negatives=5).config
  cfg = dataclasses.replace(base, scores=dataclasses.replace(base.scores, content_mix=True, content_mix_lexical="auto"))
  model = TwoTowerRetriever(cfg)
  assert {"content", "lexical"} <= set(model.required_features())
  inputs = RetrievalInputs(f, model.required_features(), max_history=4)
  batch = next(iter(inputs.sequence_dataset({"u": list(ids[:6])}, 4, num_negatives=5)))
  model.compute_loss(batch)
  for b, saved in ((1.0, "on"), (0.0, "off")):
    model.score_blocks["content"].apply({"alpha": 0.5, "lexical_weight": b})
    save_retriever(model, str(tmp_path / saved))
    loaded = load_retriever(str(tmp_path / saved), batch)
    assert loaded.score_blocks.settings()["content"]["lexical_weight"] == (1.0 if saved == "on" else None)
    assert loaded.score_blocks["content"].alpha == 0.5
    assert ("lexical" in loaded.required_features()) == (saved == "on")
  fixed = TwoTowerRetriever(dataclasses.replace(cfg, scores=dataclasses.replace(cfg.scores, content_mix_lexical="on")))
  with pytest.raises(ValueError, match="auto"):
    fixed.score_blocks["content"].apply({"alpha": 0.5, "lexical_weight": 0.0})
  with pytest.raises(ValueError, match="content_mix_lexical"):
    dataclasses.replace(cfg.scores, content_mix_lexical="maybe")
