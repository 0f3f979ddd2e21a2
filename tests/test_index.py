"""Retrieval indexes: ScaNN and brute force compared with a NumPy brute force."""
import os

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import parameterized

from semrec.towers import (IndexConfig, RetrievalIndex, brute_force_top_k, build_and_save_index, build_index,
                           dot_scores, index_report, multi_query_top_k)


def _clustered(n, dim=16, queries=50, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(20, dim))
  x = (centers[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
  q = (centers[rng.integers(0, 20, queries)] + 0.5 * rng.normal(size=(queries, dim))).astype(np.float32)
  return x, q


def _numpy_top_k(q, x, k):
  s = q @ x.T
  return np.argsort(-s, axis=1, kind="stable")[:, :k], np.sort(s, axis=1)[:, ::-1][:, :k]


class IndexTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 5, 20)
  def test_brute_force_matches_numpy(self, k):
    x, q = _clustered(300)
    scores, rows = brute_force_top_k(q, x, k, batch_size=7)  # odd chunking on purpose
    np_rows, np_scores = _numpy_top_k(q, x, k)
    self.assertAllClose(scores, np_scores, atol=1e-4)
    # rows agree wherever scores are not tied
    self.assertGreaterEqual(np.mean(rows == np_rows), 0.99)

  def test_dot_scores_of_multi_interest_queries_are_the_max_over_vectors(self):
    c = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    q = np.array([[[1, 0], [0, 2]], [[-1, 0], [-1, 0]]], np.float32)  # 2 users, K = 2
    # user 0: vector 1 scores 1, 0, 1; vector 2 scores 0, 2, 2 -> max 1, 2, 2; user 1: -1, 0, -1.
    self.assertAllClose(dot_scores(q, c), [[1, 2, 2], [-1, 0, -1]])
    self.assertAllClose(dot_scores(q[:, 0], c), q[:, 0] @ c.T)
    with self.assertRaisesRegex(ValueError, "queries must be"):
      dot_scores(np.zeros((1, 1, 1, 2)), c)

  @parameterized.parameters(1, 5, 20)
  def test_multi_interest_top_k_is_exact(self, k):
    x, q = _clustered(300, queries=60)
    q = q.reshape(20, 3, -1)  # 20 users with 3 vectors each
    scores, rows = brute_force_top_k(q, x, k, batch_size=7)
    dense = dot_scores(q, x)
    self.assertAllClose(scores, np.sort(dense, axis=1)[:, ::-1][:, :k], atol=1e-4)
    self.assertAllClose(np.take_along_axis(dense, rows, axis=1), scores, atol=1e-4)
    self.assertTrue(all(len(set(r)) == k for r in rows.tolist()))  # an item found by two vectors appears once
    index = build_index(x, np.arange(300).astype(str), kind="brute_force", k=k)
    self.assertAllEqual(index.search_rows(q, k)[1], rows)
    s2, r2 = multi_query_top_k(lambda v, kk: brute_force_top_k(v, x, kk), q, k)
    self.assertAllEqual(r2, rows)

  def test_scann_recall_against_numpy(self):
    x, q = _clustered(5000)
    index = build_index(x, np.arange(5000).astype(str), kind="scann", k=10)
    self.assertEqual(index.kind, "scann")
    self.assertEqual(index.params["num_leaves"], 71)  # round(sqrt(5000))
    _, rows = index.search_rows(q, 10)
    np_rows, _ = _numpy_top_k(q, x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), np_rows.tolist())])
    self.assertGreaterEqual(recall, 0.9)
    rep = index_report(index, q, k=10, repeats=1)
    self.assertAllClose(rep["recall@10"], recall)
    self.assertGreater(rep["index_batch_seconds"], 0)

  def test_auto_picks_brute_force_below_threshold(self):
    x, _ = _clustered(200)
    self.assertEqual(build_index(x).kind, "brute_force")
    self.assertEqual(build_index(x, brute_force_below=100, k=5).kind, "scann")

  @parameterized.parameters("scann", "brute_force")
  def test_save_load_roundtrip(self, kind):
    x, q = _clustered(2000)
    ids = np.array([f"item_{i}" for i in range(2000)], dtype=object)
    index = build_index(x, ids, kind=kind, k=5)
    path = os.path.join(self.get_temp_dir(), f"idx_{kind}")
    index.save(path)
    index.save(path)  # overwriting an existing index is atomic and works
    back = RetrievalIndex.load(path)
    s0, i0 = index.search(q, 5)
    s1, i1 = back.search(q, 5)
    self.assertAllEqual(i0, i1)
    self.assertAllClose(s0, s1)
    self.assertEqual(back.kind, kind)

  @parameterized.parameters("scann", "brute_force")
  def test_keras_layer_returns_same_ids(self, kind):
    x, q = _clustered(1500)
    ids = np.array([f"m{i}" for i in range(1500)], dtype=object)
    index = build_index(x, ids, kind=kind, k=5)
    layer = index.to_keras_layer(k=5)
    _, layer_ids = layer(tf.constant(q))
    _, np_ids = index.search(q, 5)
    agree = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(layer_ids.numpy().astype(str).tolist(),
                                                               np_ids.astype(str).tolist())])
    self.assertGreaterEqual(agree, 0.9 if kind == "scann" else 1.0)

  def test_build_and_save_index_reports_and_reloads(self):
    x, q = _clustered(3000)
    out = os.path.join(self.get_temp_dir(), "cli_index")
    rep = build_and_save_index(x, np.arange(3000).astype(str), out, kind="scann", k=10, queries=q)
    self.assertGreaterEqual(rep["recall@10"], 0.9)
    self.assertTrue(os.path.exists(os.path.join(out, "report.json")))
    self.assertEqual(RetrievalIndex.load(out).kind, "scann")

  def test_calibration_picks_the_fewest_leaves_that_reach_the_target(self):
    x, q = _clustered(10_000, dim=16, queries=240, seed=3)
    ids = np.arange(10_000).astype(str)
    index = build_index(x, ids, kind="scann", k=10, calibration_queries=q[:120])
    p = index.params
    self.assertEqual(p["num_leaves"], 100)  # round(sqrt(10000))
    table = {int(n): r for n, r in p["calibration"]["recall_by_leaves"].items()}
    # The grid: round(sqrt(2)^i) without repeats, 1 2 3 4 6 8 11 16 23 32 45 64 91, then every leaf (100);
    # the search stops at the first point reaching .97.
    grid = [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 100]
    self.assertEqual(list(table), grid[:len(table)])
    self.assertEqual(p["num_leaves_to_search"], min(n for n, r in table.items() if r >= 0.97))
    self.assertTrue(all(r < 0.97 for n, r in table.items() if n < p["num_leaves_to_search"]))
    # The held-out queries keep the served target, and the saved searcher searches the calibrated leaves by
    # default (whoever loads it with scann_ops_pybind.load_searcher gets them).
    self.assertGreaterEqual(index_report(index, q[120:], k=10, repeats=1)["recall@10"], 0.95)
    path = os.path.join(self.get_temp_dir(), "calibrated")
    index.save(path)
    config = RetrievalIndex.load(path).searcher.config()
    self.assertIn(f"max_spill_centers: {p['num_leaves_to_search']}", config)
    # A target of 1.0 that no grid point reaches below every leaf picks every leaf or the first exact one.
    strict = build_index(x, ids, kind="scann", k=10, calibration_queries=q[:120], target_recall=1.0)
    strict_table = {int(n): r for n, r in strict.params["calibration"]["recall_by_leaves"].items()}
    self.assertEqual(strict.params["num_leaves_to_search"],
                     next((n for n, r in strict_table.items() if r >= 1.0), 100))

  def test_multi_interest_calibration_and_reorder_rule(self):
    x, q = _clustered(4000, queries=120, seed=5)
    q = q.reshape(40, 3, -1)  # 40 users, K = 3 vectors
    index = build_index(x, np.arange(4000).astype(str), kind="scann", k=10, calibration_queries=q[:20])
    self.assertEqual(index.params["calibration"]["num_queries"], 20)
    _, exact = brute_force_top_k(q[20:], x, 10)
    _, rows = index.search_rows(q[20:], 10)
    self.assertGreaterEqual(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist())]), 0.95)
    cfg = IndexConfig()
    self.assertEqual((cfg.reorder_for(5), cfg.reorder_for(10), cfg.reorder_for(30)), (100, 100, 300))  # max(10k, 100)
    self.assertEqual(cfg.scann_params(10_000)["reorder"], 1000)  # k = 100 -> 10 x 100 rescored

  def test_build_and_save_index_calibrates_on_even_rows_and_measures_odd_rows(self):
    x, q = _clustered(3000, queries=101)
    out = os.path.join(self.get_temp_dir(), "split_index")
    rep = build_and_save_index(x, np.arange(3000).astype(str), out, kind="scann", k=10, queries=q, repeats=1)
    self.assertEqual(rep["queries"]["calibration"], 51)  # rows 0, 2, ..., 100
    self.assertEqual(rep["num_queries"], 50)  # rows 1, 3, ..., 99: measured, never calibrated on
    self.assertEqual(rep["params"]["calibration"]["num_queries"], 51)
    self.assertGreater(rep["speedup_vs_brute_force"], 0)

  def test_bad_input(self):
    x, q = _clustered(100)
    x[7, 3] = np.nan
    with self.assertRaisesRegex(ValueError, "item '7'"):
      build_index(x)
    x, q = _clustered(100)
    with self.assertRaisesRegex(ValueError, "duplicate"):
      build_index(x, ["a"] * 100)
    index = build_index(x)
    with self.assertRaisesRegex(ValueError, r"\[Q, 16\]"):
      index.search(np.zeros((2, 8), np.float32))
    with self.assertRaisesRegex(ValueError, "kind"):
      IndexConfig(kind="faiss")
    with self.assertRaisesRegex(ValueError, r"IndexConfig.target_recall must be in \(0, 1\], got 1.5"):
      IndexConfig(target_recall=1.5)
    with self.assertRaises(FileNotFoundError):
      RetrievalIndex.load(self.get_temp_dir() + "/nothing-here")


if __name__ == "__main__":
  tf.test.main()
