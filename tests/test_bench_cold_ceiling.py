"""Tests for the helpers of benchmarks/bench_cold_ceiling.py on hand-made tiny cases."""
import json

import numpy as np
import pandas as pd
import pytest

from semrec.benchmarks.bench_cold_ceiling import _train_pairs, lexical_vectors, linear_transfer, representations
from semrec.benchmarks.bench_retrieval import merge_reports
from semrec.towers import evaluate_baselines


def test_train_pairs_are_every_next_item_step_left_padded():
  # Sequences u1: x y z, u2: y z. With H = 2 (padding row = N = 3): [3, x] -> y, [x, y] -> z, [3, y] -> z.
  class FakeSplit:
    def train_sequences(self):
      return {"u1": np.array(["x", "y", "z"], dtype=object), "u2": np.array(["y", "z"], dtype=object)}

  hist, target = _train_pairs(FakeSplit(), pd.Index(["x", "y", "z"]), num_recent=2)
  assert hist.tolist() == [[3, 0], [0, 1], [3, 1]]
  assert target.tolist() == [1, 2, 2]


def test_lexical_vectors_are_unit_rows_and_share_words():
  v = lexical_vectors(["red filament spool", "red filament roll", "glass beaker"], dim=2)
  assert v.shape == (3, 2)
  np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
  assert v[0] @ v[1] > v[0] @ v[2]  # two filament titles are closer than filament vs beaker


def test_centred_rows_drop_the_shared_direction():
  # Unit rows (.995, +-.0995) have mean (.995, 0); centred and re-normalised they are (0, 1) and (0, -1).
  content = np.array([[1.0, 0.1], [1.0, -0.1]], np.float32)
  reps = representations(content, ["red filament", "glass beaker"], residual_dim=1)
  assert set(reps) == {"content_knn", "residual64_knn", "centred_knn", "lexical_knn", "centred+lexical_knn"}
  np.testing.assert_allclose(reps["centred_knn"], [[0.0, 1.0], [0.0, -1.0]], atol=1e-6)
  assert reps["centred+lexical_knn"].shape == (2, 2 + reps["lexical_knn"].shape[1])
  # Rank 1: both rows project onto the top direction (1, 0) up to sign, and keep their norm .995.
  np.testing.assert_allclose(np.abs(reps["residual64_knn"]), [[0.995], [0.995]], atol=1e-3)


def test_linear_transfer_with_beta_zero_is_content_knn(tiny_cold_items):
  ds, split = tiny_cold_items
  z = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
  lt = linear_transfer(split, ds.item_ids, z, decay=0.8, betas=(0.0,), lambdas=(1.0,))
  knn = evaluate_baselines(split, ds.item_ids, z, stage="test", names=("content_knn",), knn_decay=0.8,
                           ks=(10, 100))["content_knn"]
  assert lt["beta"] == 0.0 and lt["pairs"] > 0
  assert lt["test"]["overall"]["recall@10"] == pytest.approx(knn["overall"]["recall@10"])


def test_merge_reports_flattens_commands_of_merged_reports(tmp_path):
  seed_row = {"models": {"transition": {"overall": {"recall@10": 0.1}}, "v": {"overall": {"recall@10": 0.2}}},
              "served": {"variant": "v"}}
  paths = []
  for i, cmd in enumerate([["a", "b"], "c"]):
    p = tmp_path / f"r{i}.json"
    p.write_text(json.dumps({"command": cmd, "runs": {"movielens:leave_one_out": {
        "seeds": [i], "per_seed": [seed_row], "seconds": 1.0}}}))
    paths.append(str(p))
  out = merge_reports(paths)
  assert out["command"] == ["a", "b", "c"]
  assert out["runs"]["movielens:leave_one_out"]["seeds"] == [0, 1]
