"""ResidualQuantizer: shapes, straight-through gradients, the RQ-VAE loss, dead-code reset."""
import numpy as np
import semrec  # noqa: F401  (before tensorflow)
import tensorflow as tf
from absl.testing import parameterized

from semrec.sid.quantizer import ResidualQuantizer, nearest_code, rq_vae_loss


def _hand_quantizer():
  q = ResidualQuantizer(num_levels=2, codebook_size=2, dim=2, dead_code_window=0)
  q.set_codebooks(np.array([[[1.0, 0.0], [-2.0, 0.0]],     # level 1
                            [[0.0, 0.5], [0.0, -1.0]]]))   # level 2
  return q


class ResidualQuantizerTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters((1, 2, 3), (3, 16, 4), (4, 5, 1))
  def test_shapes_and_inference_path(self, levels, k, d):
    q = ResidualQuantizer(levels, k, d)
    z = tf.random.normal([7, d], seed=1)
    out = q(z)
    self.assertEqual(out["codes"].shape, (7, levels))
    self.assertEqual(out["codes"].dtype, tf.int32)
    self.assertEqual(out["quantized"].shape, (7, d))
    self.assertEqual(out["residuals"].shape, (7, levels, d))
    self.assertEqual(out["code_vectors"].shape, (7, levels, d))
    # The frozen path gives exactly the training-time codes.
    self.assertAllEqual(q.codes(z), out["codes"])
    # Quantized value is the sum of the chosen code vectors.
    self.assertAllClose(out["quantized"], tf.reduce_sum(out["code_vectors"], axis=1), atol=1e-6)

  def test_nearest_code_matches_brute_force(self):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(50, 6)).astype(np.float32)
    book = rng.normal(size=(9, 6)).astype(np.float32)
    brute = ((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
    self.assertAllEqual(nearest_code(tf.constant(r), tf.constant(book)), brute)

  def test_straight_through_gradient(self):
    q = _hand_quantizer()
    z = tf.constant([[1.5, 0.25], [-2.0, -1.0]])
    w = tf.constant([[3.0, -1.0], [0.5, 2.0]])
    with tf.GradientTape() as tape:
      tape.watch(z)
      out = q(z)
      y = tf.reduce_sum(out["quantized"] * w)
    # d quantized / d z is the identity under the straight-through estimator.
    self.assertAllClose(tape.gradient(y, z), w)

  def test_loss_matches_hand_computed_case(self):
    q = _hand_quantizer()
    z = tf.constant([[1.5, 0.25], [-2.0, -1.0]])
    out = q(z)
    # Item 1: level 1 picks [1, 0] (dist 0.3125 vs 12.3125), r2 = [0.5, 0.25] picks [0, 0.5]
    #   squared errors 0.3125 + 0.3125 = 0.625.
    # Item 2: level 1 picks [-2, 0] (dist 1 vs 10), r2 = [0, -1] picks [0, -1]: errors 1 + 0 = 1.
    self.assertAllEqual(out["codes"], [[0, 0], [1, 1]])
    self.assertAllClose(out["quantized"], [[1.0, 0.5], [-2.0, -1.0]])
    x = tf.constant([[1.0, 2.0], [0.0, 0.0]])
    x_hat = tf.constant([[0.0, 0.0], [1.0, 1.0]])
    losses = rq_vae_loss(x, x_hat, out["residuals"], out["code_vectors"], beta=0.25)
    # recon = mean(5, 2) = 3.5; commitment = 0.25 * mean(0.625, 1) = 0.203125;
    # codebook = mean(0.625, 1) = 0.8125; total = 4.515625.
    self.assertAllClose(losses["reconstruction"], 3.5)
    self.assertAllClose(losses["commitment"], 0.203125)
    self.assertAllClose(losses["codebook"], 0.8125)
    self.assertAllClose(losses["loss"], 4.515625)

  def test_loss_gradients_follow_stop_gradients(self):
    q = _hand_quantizer()
    z = tf.constant([[1.5, 0.25]])
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(z)
      out = q(z)
      losses = rq_vae_loss(tf.zeros([1, 2]), tf.zeros([1, 2]), out["residuals"], out["code_vectors"])
    g_book = tape.gradient(losses["codebook"], q.codebooks).numpy()
    # The codebook term moves only the chosen codes (level 1 code 0, level 2 code 0).
    self.assertNotAllClose(g_book[0, 0], [0.0, 0.0])
    self.assertAllClose(g_book[0, 1], [0.0, 0.0])
    self.assertAllClose(g_book[1, 1], [0.0, 0.0])
    # The commitment term reaches the encoder output z.
    self.assertNotAllClose(tape.gradient(losses["commitment"], z), [[0.0, 0.0]])

  def test_dead_code_reset_revives_codes(self):
    q = ResidualQuantizer(num_levels=1, codebook_size=3, dim=2, dead_code_window=2)
    # Code 2 sits far from all data: never chosen.
    q.set_codebooks(np.array([[[1.0, 0.0], [-1.0, 0.0], [100.0, 100.0]]]))
    z = tf.constant([[1.0, 0.1], [-1.0, 0.0], [0.0, 5.0], [1.0, -0.1]])
    for step in range(2):
      out = q(z)
      self.assertNotIn(2, out["codes"].numpy())
      n = q.update_usage_and_reset(out["codes"], out["residuals"], out["code_vectors"])
      self.assertEqual(int(n), 0 if step == 0 else 1)
    # Reset to the worst-served residual, [0, 5]; now that item uses code 2.
    self.assertAllClose(q.codebooks[0, 2], [0.0, 5.0])
    self.assertIn(2, q(z)["codes"].numpy())
    self.assertAllEqual(q.steps_since_used[0], [0.0, 0.0, 0.0])

  def test_config_round_trip(self):
    q = ResidualQuantizer(2, 4, 3, dead_code_window=7, name="rq")
    z = tf.random.normal([5, 3], seed=2)
    q(z)
    q2 = ResidualQuantizer.from_config(q.get_config())
    q2(z)
    q2.set_weights(q.get_weights())
    self.assertEqual(q2.dead_code_window, 7)
    self.assertAllEqual(q2.codes(z), q.codes(z))

  def test_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, "codebook_size"):
      ResidualQuantizer(2, 1, 3)
    q = ResidualQuantizer(2, 4, 3)
    with self.assertRaisesRegex(ValueError, "wrong latent width 5"):
      q(tf.zeros([2, 5]))
    with self.assertRaisesRegex(ValueError, "codebooks must have shape"):
      q.set_codebooks(np.zeros([2, 4, 5]))
