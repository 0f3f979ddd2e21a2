"""Tests for semrec.towers.evaluation: hand-made rankings with Recall/NDCG derived by hand."""
import numpy as np
import pytest

from semrec.data import Queries
from semrec.towers import evaluate_scores, query_metrics

ITEMS = np.array(["a", "b", "c", "d", "e"], dtype=object)
# One score row for every query: order b (0.9), c (0.5), d (0.5, tied with c: c is listed first), e, a.
SCORES = np.array([0.1, 0.9, 0.5, 0.5, 0.3])


def _queries(targets, exclude, cold=None, candidates=None):
  q = len(targets)
  obj = lambda xs: [np.array(x, dtype=object) for x in xs]  # noqa: E731
  return Queries(user_ids=np.array([f"u{i}" for i in range(q)], dtype=object), histories=obj(exclude),
                 targets=obj(targets), timestamps=np.zeros(q, np.int64), exclude=obj(exclude),
                 cold=np.zeros(q, bool) if cold is None else np.array(cold), candidates=candidates)


def _score_fn(rows):
  return np.tile(SCORES, (len(rows), 1))


def test_single_target_with_and_without_exclusion():
  q = _queries([["d"]], [["b"]])
  # Exclusion on: b removed -> c (rank 0), d (rank 1). Recall@1 = 0, Recall@2 = 1, NDCG@2 = 1/log2(3) = .63093.
  m = evaluate_scores(_score_fn, q, ITEMS, ks=(1, 2), ndcg_ks=(2, 5))["overall"]
  assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0 and m["queries"] == 1
  assert m["ndcg@2"] == pytest.approx(0.63093, abs=1e-5)
  # Exclusion off: b, c, d -> rank 2. Recall@2 = 0, NDCG@5 = 1/log2(4) = 0.5.
  m = evaluate_scores(_score_fn, q, ITEMS, ks=(2, 5), ndcg_ks=(2, 5), exclude_history=False)["overall"]
  assert m["recall@2"] == 0.0 and m["recall@5"] == 1.0 and m["ndcg@2"] == 0.0 and m["ndcg@5"] == 0.5


def test_multi_target_recall_is_hits_over_targets():
  # Targets {a, e}, nothing excluded: ranks e = 3, a = 4. Recall@4 = 1/2, Recall@5 = 1.
  # NDCG@5 = (1/log2(5) + 1/log2(6)) / (1 + 1/log2(3)) = (.430677 + .386853) / 1.630930 = .501266.
  per = query_metrics(_score_fn, _queries([["a", "e"]], [[]]), ITEMS, ks=(4, 5), ndcg_ks=(5,))
  assert per["rank"].tolist() == [[4, 3]]
  assert per["recall@4"].tolist() == [0.5] and per["recall@5"].tolist() == [1.0]
  assert per["ndcg@5"][0] == pytest.approx(0.501266, abs=1e-6)


def test_candidates_restrict_the_ranking():
  # Candidates {a, d, e}: order d, e, a -> a has rank 2 (Recall@2 = 0, Recall@3 = 1); e rank 1.
  q = _queries([["a"], ["e"]], [[], []], candidates=np.array(["a", "d", "e"], dtype=object))
  per = query_metrics(_score_fn, q, ITEMS, ks=(2, 3), ndcg_ks=(3,))
  assert per["rank"][:, 0].tolist() == [2, 1]
  # A target outside the candidates can never be found.
  per = query_metrics(_score_fn, _queries([["b"]], [[]]), ITEMS, candidates=["a", "e"], ks=(5,), ndcg_ks=(5,))
  assert per["recall@5"].tolist() == [0.0]


def test_repeated_target_is_a_miss_only_with_exclusion():
  q = _queries([["b"]], [["b", "c"]])  # the user had b before; b is also the target
  assert evaluate_scores(_score_fn, q, ITEMS, ks=(5,), ndcg_ks=(5,))["overall"]["recall@5"] == 0.0
  off = evaluate_scores(_score_fn, q, ITEMS, ks=(1,), ndcg_ks=(1,), exclude_history=False)["overall"]
  assert off["recall@1"] == 1.0 and off["ndcg@1"] == 1.0


def test_warm_and_cold_slices_and_batching():
  # Query 0 (warm): target b, rank 0. Query 1 (cold): target a, rank 4. Query 2 (cold): target c, rank 1.
  q = _queries([["b"], ["a"], ["c"]], [[], [], []], cold=[False, True, True])
  out = evaluate_scores(_score_fn, q, ITEMS, ks=(2,), ndcg_ks=(2,), batch_size=2)
  assert out["overall"]["recall@2"] == pytest.approx(2 / 3) and out["overall"]["queries"] == 3
  assert out["warm"] == {"recall@2": 1.0, "ndcg@2": 1.0, "queries": 1}
  assert out["cold"]["recall@2"] == 0.5 and out["cold"]["ndcg@2"] == pytest.approx(0.5 / np.log2(3))
  only_warm = evaluate_scores(_score_fn, q.subset([0]), ITEMS, ks=(2,), ndcg_ks=(2,))
  assert set(only_warm) == {"overall", "warm"}


def test_bad_scores_and_targets_raise():
  q = _queries([["d"]], [[]])
  with pytest.raises(ValueError, match="NaN"):
    evaluate_scores(lambda r: np.full((len(r), 5), np.nan), q, ITEMS)
  with pytest.raises(ValueError, match="shape"):
    evaluate_scores(lambda r: np.zeros((len(r), 4)), q, ITEMS)
  with pytest.raises(ValueError, match="target item 'zz'"):
    evaluate_scores(_score_fn, _queries([["zz"]], [[]]), ITEMS)
