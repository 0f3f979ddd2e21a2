"""The quality vector's new-item rule (towers/quality.py) and the one post-hoc tuner (towers/tuning.py)."""
import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)

import numpy as np
import pandas as pd
import pytest

from semrec.towers.quality import QualityConfig, QualityVector
from semrec.towers.tuning import choose_point, tune_quality_weights


def _buried_cold_case():
  """Items A, B (warm, popular: f = +1) and C (new: f = -1); k = 1; 1-d towers so q.p is easy to read.

  base q.p per query (rows A, B, C):
    q0 target A: [0.5, 0.0, 0.6]  -> C outranks A at w = 0 (miss); w >= 0.5: A = 0.5 + w > C = 0.6 - w (hit)
    q1 target B: [0.0, 0.5, 0.6]  -> same for B
    q2 target C: [0.5, 0.5, 0.6]  -> C on top at w = 0 (hit); w >= 0.5 buries C under A and B (miss)
  Unconstrained, w = 0.5 or 1 wins (recall 2/3 vs 1/3) at the price of the only cold query.
  """
  p = np.eye(3, dtype=np.float32)
  q = np.array([[0.5, 0.0, 0.6], [0.0, 0.5, 0.6], [0.5, 0.5, 0.6]], np.float32)
  f = np.array([[1.0], [1.0], [-1.0]], np.float32)
  return q, p, f, np.array([0, 1, 2]), np.array([False, False, True])


def test_unconstrained_search_buries_the_cold_item():
  q, p, f, t, cold = _buried_cold_case()
  w, info = tune_quality_weights(q, p, f, t, k=1, grid=(0.0, 0.5, 1.0), cold=cold, max_cold_drop=None)
  assert w[0] == 0.5
  assert info["recall"] == pytest.approx(2 / 3) and info["cold_recall"] == 0.0 and info["warm_recall"] == 1.0
  assert info["baseline_recall"] == pytest.approx(1 / 3) and info["baseline_cold_recall"] == 1.0


def test_search_respects_the_cold_constraint():
  q, p, f, t, cold = _buried_cold_case()
  w, info = tune_quality_weights(q, p, f, t, k=1, grid=(0.0, 0.5, 1.0), cold=cold, max_cold_drop=0.1)
  assert w[0] == 0.0  # every w > 0 drops cold recall from 1 to 0 (> 10%)
  assert info["cold_recall"] == 1.0 and info["cold_floor"] == pytest.approx(0.9)
  assert info["rejected_by_cold_constraint"] >= 1 and info["cold_queries"] == 1


def test_constraint_without_cold_queries_is_vacuous_and_bad_args_raise():
  q, p, f, t, _ = _buried_cold_case()
  w, info = tune_quality_weights(q, p, f, t, k=1, grid=(0.0, 0.5, 1.0))
  assert w[0] == 0.5 and info["cold_recall"] is None and info["cold_floor"] is None
  with pytest.raises(ValueError, match="max_cold_drop"):
    tune_quality_weights(q, p, f, t, k=1, cold=np.zeros(3, bool), max_cold_drop=1.5)
  with pytest.raises(ValueError, match="cold"):
    tune_quality_weights(q, p, f, t, k=1, cold=np.zeros(2, bool))


def test_one_tuner_picks_the_best_point_of_a_hand_made_table():
  # Content-block grid points (b, pooling, a) in grid order, their validation selection scores and cold Recall.
  objective = {(0, "mean", 0.0): 0.30, (0, "mean", 0.5): 0.36, (0, "max", 0.5): 0.41, (1, "max", 0.5): 0.39,
               (1, "mean", 1.0): 0.41, (1, "max", 4.0): 0.12}
  cold = {(0, "mean", 0.0): 0.20, (0, "mean", 0.5): 0.22, (0, "max", 0.5): 0.10, (1, "max", 0.5): 0.19,
          (1, "mean", 1.0): 0.18, (1, "max", 4.0): 0.30}
  # No floor: the highest score, .41, first in grid order -> (0, max, .5) (not the tied later one, nor the
  # worst, (1, max, 4)).
  assert choose_point(objective) == ((0, "max", 0.5), 0)
  # Floor .9 x .20 = .18: (0, max, .5) is refused (cold .10 < .18; one refusal); the running best goes
  # .30 -> .36 -> .39 -> .41 at (1, mean, 1) whose cold .18 meets the floor exactly.
  assert choose_point(objective, cold, 0.18) == ((1, "mean", 1.0), 1)
  # Quality search objective (Recall@k, NDCG@10): compared lexicographically.
  assert choose_point({"w0": (0.5, 0.2), "w1": (0.5, 0.3), "w2": (0.4, 0.9)}) == ("w1", 0)
  with pytest.raises(ValueError, match="cold floor"):
    choose_point({"a": 1.0}, {"a": 0.0}, 0.5)


def test_new_items_get_the_smoothed_prior_and_full_freshness():
  # Item a: 2 train interactions (labels 1, 0) first seen at t=0; b: 1 at t=50; c: none (new). now = 100.
  train = pd.DataFrame({"user_id": ["u", "v", "u"], "item_id": ["a", "a", "b"], "timestamp": [0, 10, 50],
                        "label": [1, 0, 1]})
  items = pd.DataFrame({"item_id": ["a", "b", "c"]})
  qv = QualityVector.fit(train, items, reference_time=100, config=QualityConfig(freshness_tau_seconds=100.0))
  assert qv.new_item_policy == "prior"
  raw = dict(zip(qv.feature_names, qv.raw.T))
  p0 = 2 / 3  # global positive rate; prior count a + b = 10
  np.testing.assert_allclose(raw["positive_rate"], [(1 + 10 * p0) / 12, (1 + 10 * p0) / 11, p0], rtol=1e-6)
  np.testing.assert_allclose(raw["log_count"], np.log1p([2, 1, 0]), rtol=1e-6)
  # freshness = exp(-age / tau), age since first seen: a 100 s, b 50 s, c 0 (new)
  np.testing.assert_allclose(raw["freshness"], np.exp(-np.array([1.0, 0.5, 0.0])), rtol=1e-6)
  f = qv.features()
  j = qv.feature_names.index("freshness")
  assert f[2, j] > f[1, j] > f[0, j]  # the new item is the freshest, not zeroed away
  np.testing.assert_allclose(qv.gather(["unknown"])[0], f[2], rtol=1e-6)  # unknown ids = new items
