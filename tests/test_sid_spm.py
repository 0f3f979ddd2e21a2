"""Tests for sid.spm: SentencePiece over SIDs and exact in-graph segmentation."""
import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from semrec.sid.spm import CHAR_BASE, SidSpm, SpmSegmenter, piece_key, sid_to_string, train_sid_spm

L, K = 4, 12
VOCAB = 400


def _corpus(n=3000, seed=0):
  """Hierarchical, popularity-skewed SIDs: c_{l+1} mostly follows c_l; zipf impressions."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, K + 1) ** 1.2
  p /= p.sum()
  codes = np.zeros((n, L), np.int64)
  codes[:, 0] = rng.choice(K, size=n, p=p)
  for l in range(1, L):
    codes[:, l] = (codes[:, l - 1] * 5 + rng.choice(K, size=n, p=p)) % K
  weights = rng.zipf(1.6, size=n).clip(1, 5000)
  return codes, weights


def _all_sids():
  return np.array(list(itertools.product(range(K), repeat=L)), np.int32)  # 12^4 = 20,736 SIDs


class SidSpmTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.codes, cls.weights = _corpus()
    cls.spm = train_sid_spm(cls.codes, cls.weights, vocab_size=VOCAB, codebook_size=K)

  def test_vocabulary(self):
    sp = self.spm
    self.assertLessEqual(sp.vocab_size, VOCAB)
    lengths = sp.piece_lengths()
    self.assertEqual(int((lengths == 1).sum()), L * K)  # every (level, code) is a piece
    self.assertGreater(int((lengths > 1).sum()), 50)  # and frequent combinations became pieces
    self.assertLessEqual(int(lengths.max()), L)  # max piece length L
    self.assertEqual(sp.processor.id_to_piece(sp.unk_id), "<unk>")
    self.assertEqual(sid_to_string([1, 0], K), chr(CHAR_BASE + 1) + chr(CHAR_BASE + K))

  def test_head_items_use_fewer_pieces(self):
    counts = np.array([len(p) for p in self.spm.segment(self.codes)])
    head = self.weights >= np.quantile(self.weights, 0.95)
    tail = self.weights <= np.quantile(self.weights, 0.5)
    self.assertLess(counts[head].mean(), counts[tail].mean())
    top = int(np.argmax(self.weights))
    self.assertEqual(counts[top], 1)  # the most-watched SID is a single piece

  def test_in_graph_parity_all_sids(self):
    sids = _all_sids()
    seen = {tuple(r) for r in self.codes.tolist()}
    unseen = np.array([tuple(r) not in seen for r in sids.tolist()])
    self.assertGreater(int(unseen.sum()), 10_000)
    seg = SpmSegmenter(L, K, max_pieces=VOCAB, spm=self.spm)
    got = seg(tf.constant(sids)).numpy()
    ref = self.spm.segment_padded(sids)
    self.assertEqual(got.dtype, np.int32)
    self.assertAllEqual(got, ref)  # 100% identical on 20,736 SIDs (>= 10,000 unseen in training)

  def test_parity_leading_dims_and_padding(self):
    seg = SpmSegmenter(L, K, max_pieces=VOCAB, spm=self.spm)
    sids = np.concatenate([self.codes[:5], -np.ones((1, L), np.int64)]).reshape(2, 3, L)
    got = seg(tf.constant(sids)).numpy()
    self.assertEqual(got.shape, (2, 3, L))
    self.assertAllEqual(got.reshape(-1, L)[:5], self.spm.segment_padded(self.codes[:5]))
    self.assertAllEqual(got[1, 2], [-1] * L)

  @parameterized.parameters((1.0,), (0.5,))
  def test_parity_with_ties(self, step):
    # Scores rounded to multiples of `step` make many segmentations tie exactly in float32;
    # the in-graph Viterbi must break them like sentencepiece (earliest start wins).
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self.spm.model_proto)
    for p in proto.pieces:
      if p.type == sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL:
        p.score = -step * max(1.0, np.round(-p.score / step / 4.0))
    tied = SidSpm(proto.SerializeToString(), L, K)
    sids = _all_sids()
    seg = SpmSegmenter(L, K, max_pieces=VOCAB, spm=tied)
    self.assertAllEqual(seg(tf.constant(sids)).numpy(), tied.segment_padded(sids))

  def test_saved_model_fresh_process(self):
    tmp = self.get_temp_dir()
    seg = SpmSegmenter(L, K, max_pieces=VOCAB, spm=self.spm)

    class Serving(tf.Module):

      def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

      @tf.function(input_signature=[tf.TensorSpec([None, L], tf.int32, name="sid")])
      def serve(self, sid):
        return {"pieces": self.segmenter(sid)}

    module = Serving(seg)
    export_dir = os.path.join(tmp, "segmenter", "1")
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    sids = _all_sids()
    np.save(os.path.join(tmp, "sids.npy"), sids)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        fn = tf.saved_model.load({export_dir!r}).signatures["serving_default"]
        out = fn(sid=tf.constant(np.load({os.path.join(tmp, 'sids.npy')!r})))["pieces"].numpy()
        np.save({os.path.join(tmp, 'pieces.npy')!r}, out)
        print("pieces", out.shape, out[:2].tolist())
        try:
          fn(sid=tf.constant([[0, 1, 2, {K}]], tf.int32))
          print("NO ERROR")
        except tf.errors.InvalidArgumentError as e:
          print("ERROR", "codes must be in" in str(e))
        """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    self.assertEqual(res.returncode, 0, res.stderr[-2000:])
    self.assertIn("ERROR True", res.stdout)
    self.assertAllEqual(np.load(os.path.join(tmp, "pieces.npy")), self.spm.segment_padded(sids))

  def test_save_load(self):
    d = os.path.join(self.get_temp_dir(), "spm")
    self.spm.save(d)
    self.assertEqual(sorted(os.listdir(d)), ["sid_spm.json", "sid_spm.model"])
    again = SidSpm.load(d)
    self.assertEqual(again.model_proto, self.spm.model_proto)
    self.assertEqual(again.segment(self.codes[:50]), self.spm.segment(self.codes[:50]))

  def test_segmenter_weights_round_trip(self):
    seg = SpmSegmenter(L, K, max_pieces=VOCAB, spm=self.spm)
    seg.build((None, L))
    clone = SpmSegmenter.from_config(seg.get_config())
    clone.build((None, L))
    clone.set_weights(seg.get_weights())
    self.assertEqual(len(clone.trainable_weights), 0)
    sids = _all_sids()[::7]
    self.assertAllEqual(clone(tf.constant(sids)).numpy(), self.spm.segment_padded(sids))

  def test_piece_key(self):
    # (start=1, codes (2, 3)) with L=4, K=12: (1*4 + 1) * 12^4 + 2*12 + 3
    self.assertEqual(piece_key(1, [2, 3], L, K), 5 * 12 ** 4 + 27)

  def test_deterministic_training(self):
    again = train_sid_spm(self.codes, self.weights, vocab_size=VOCAB, codebook_size=K)
    self.assertEqual(again.model_proto, self.spm.model_proto)


class SpmBadInputTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    codes, weights = _corpus(500)
    cls.spm = train_sid_spm(codes, weights, vocab_size=100, codebook_size=K)

  def test_python_errors_name_the_item(self):
    with self.assertRaisesRegex(ValueError, r"item 'm2' \(row 1\) has code 12 at level 3, outside \[0, 12\)"):
      self.spm.segment([[0, 1, 2, 3], [0, 1, 2, 12]], item_ids=["m1", "m2"])
    with self.assertRaisesRegex(ValueError, "row 0 has code -1"):
      self.spm.segment([[0, -1, 2, 3]])
    with self.assertRaisesRegex(ValueError, "L=4 levels per SID, got 3"):
      self.spm.segment([[0, 1, 2]])

  def test_train_errors(self):
    codes, weights = _corpus(50)
    with self.assertRaisesRegex(ValueError, "L\\*K \\+ 1 = 49"):
      train_sid_spm(codes, weights, vocab_size=48, codebook_size=K)
    with self.assertRaisesRegex(ValueError, "codebook_size is required"):
      train_sid_spm(codes, weights, vocab_size=100)
    bad = weights.astype(float)
    bad[7] = -1
    with self.assertRaisesRegex(ValueError, r"weights of item 'x7' \(row 7\) is -1.0"):
      train_sid_spm(codes, bad, vocab_size=100, codebook_size=K, item_ids=[f"x{i}" for i in range(50)])
    with self.assertRaisesRegex(ValueError, "outside \\[0, 8\\)"):
      train_sid_spm(codes, weights, vocab_size=100, codebook_size=8)

  def test_graph_errors(self):
    seg = SpmSegmenter(L, K, max_pieces=100, spm=self.spm)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "codes must be in \\[0, 12\\)"):
      seg(tf.constant([[0, 1, 2, 12]]))
    with self.assertRaisesRegex(ValueError, "num_levels=4, got 5"):
      seg(tf.constant([[0, 1, 2, 3, 4]]))
    empty = SpmSegmenter(L, K, max_pieces=100)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "empty piece table"):
      empty(tf.constant([[0, 1, 2, 3]]))

  def test_vocab_must_cover_all_characters(self):
    # A model whose vocabulary lacks a (level, code) character is refused (it would emit <unk>).
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(self.spm.model_proto)
    for p in proto.pieces:
      if p.piece == chr(CHAR_BASE + 3):
        p.piece = chr(CHAR_BASE + L * K + 5)  # a character outside the SID alphabet
    with self.assertRaisesRegex(ValueError, "outside the SID alphabet"):
      SidSpm(proto.SerializeToString(), L, K)


if __name__ == "__main__":
  tf.test.main()
