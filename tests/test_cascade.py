"""The cascade: candidate sources, their merge, the ranker trained on candidates, the final list."""
import numpy as np
import pandas as pd
import pytest

from semrec.data import ItemFeatures, Queries, RecDataset, make_split
from semrec.ranking.cascade import build_sources
from semrec.ranking.candidates import (ScoreSource, SourceResult, candidate_recall, catalogue_index,
                                       fresh_item_filter, merge_candidates, removed_items, top_k_rows)


def _result(name, rows, scores=None):
  rows = np.asarray(rows, np.int64)
  return SourceResult(name, rows, np.asarray(scores if scores is not None else -rows, np.float32))


# ------------------------------------------------------------------------------------------- merge / top-k


def test_merge_quotas_then_round_robin_with_dedupe():
  # a: [1, 2, 3, 4]; b: [2, 5, 6, -1] (b returned only three items). Quotas a=1, b=2, total 5:
  # quotas -> 1 (a), then b's first two not taken: 2, 5; round-robin by rank: rank 0: 1, 2 taken; rank 1: 2
  # taken, 5 taken; rank 2: 3 (a) added, 6 (b) added -> [1, 2, 5, 3, 6].
  a = _result("a", [[1, 2, 3, 4]], [[0.9, 0.8, 0.7, 0.6]])
  b = _result("b", [[2, 5, 6, -1]], [[3.0, 2.0, 1.0, 0.0]])
  m = merge_candidates([a, b], total=5, quotas={"a": 1, "b": 2})
  assert m.rows.tolist() == [[1, 2, 5, 3, 6]]
  # Ranks / scores of every merged candidate in every source (-1 / 0 where absent).
  assert m.ranks[0].tolist() == [[0, -1], [1, 0], [-1, 1], [2, -1], [-1, 2]]
  np.testing.assert_allclose(m.scores[0, :, 1], [0, 3, 2, 0, 1])
  assert m.sources == ("a", "b")


def test_merge_pads_when_sources_have_fewer_items_than_total():
  m = merge_candidates([_result("a", [[3, -1]]), _result("b", [[3, 4]])], total=5)
  assert m.rows.tolist() == [[3, 4, -1, -1, -1]]
  assert (m.ranks[0, 2:] == -1).all()


def test_merge_rejects_bad_arguments():
  with pytest.raises(ValueError, match="unknown sources"):
    merge_candidates([_result("a", [[1]])], total=2, quotas={"zz": 1})
  with pytest.raises(ValueError, match="unique"):
    merge_candidates([_result("a", [[1]]), _result("a", [[2]])], total=2)
  with pytest.raises(ValueError, match="at least one"):
    merge_candidates([], total=2)


def test_top_k_rows_ties_to_lower_row_and_pads_non_finite():
  s = np.array([[1.0, 3.0, 3.0, -np.inf], [-np.inf, -np.inf, 2.0, -np.inf]])
  rows, scores = top_k_rows(s, 3)
  assert rows.tolist() == [[1, 2, 0], [2, -1, -1]]
  np.testing.assert_allclose(scores, [[3, 3, 1], [2, 0, 0]])


def test_candidate_recall_by_slice():
  rows = np.array([[0, 1], [2, 3], [4, 5]])
  targets = [np.array([1]), np.array([9]), np.array([4, 7])]
  r = candidate_recall(rows, targets, cold=np.array([False, False, True]))
  assert r == {"overall": pytest.approx((1 + 0 + 0.5) / 3), "warm": 0.5, "cold": 0.5}


def _queries(histories, targets, times, candidates=None, exclude=None):
  return Queries(np.array([f"u{i}" for i in range(len(histories))], dtype=object),
                 [np.array(h, dtype=object) for h in histories], [np.array(t, dtype=object) for t in targets],
                 np.asarray(times, np.int64), [np.array(h, dtype=object) for h in (exclude or histories)],
                 np.zeros(len(histories), bool), candidates)


def test_source_removes_history_and_non_candidates_and_returns_fewer_than_k():
  index = catalogue_index(["a", "b", "c", "d"])
  q = _queries([["a"], []], [["b"], ["c"]], [5, 5], candidates=np.array(["a", "b", "c"], dtype=object))
  removed = removed_items(q, np.arange(2), index)
  assert removed.tolist() == [[True, False, False, True], [False, False, False, True]]
  src = ScoreSource("s", lambda queries, rows: np.tile([4.0, 3.0, 2.0, 1.0], (len(rows), 1)))
  res = src.retrieve(q, 3, index)
  # query 0: a (history) and d (non-candidate) removed -> b, c and a pad; a query with no history keeps a.
  assert res.rows.tolist() == [[1, 2, -1], [0, 1, 2]]


def test_fresh_filter_window_and_empty_window():
  first_seen = np.array([0, 10, 20, np.iinfo(np.int64).max])  # d never seen in train
  q = _queries([["a"]], [["d"]], [20])
  assert fresh_item_filter(first_seen, 0)(q, np.arange(1)).tolist() == [[False, False, True, True]]
  assert fresh_item_filter(first_seen, 10)(q, np.arange(1)).tolist() == [[False, True, True, True]]
  # Empty fresh set (every item seen long before): the source returns nothing, all padding.
  q_late = _queries([["a"]], [["b"]], [10_000])
  src = ScoreSource("fresh", lambda queries, rows: np.zeros((len(rows), 4)),
                    item_filter=fresh_item_filter(first_seen[:3].tolist() + [5], 0))
  assert (src.retrieve(q_late, 2, catalogue_index(["a", "b", "c", "d"])).rows == -1).all()
  with pytest.raises(ValueError, match="fresh window"):
    fresh_item_filter(first_seen, -1)


# ------------------------------------------------------------------------------------------ the tiny world


def _world(num_users=60, seq_len=8, seed=0):
  """Three topics; 10 warm items per topic; one new item per topic that appears only as users' last (test)
  item. Every user reads only its topic; its next item after a warm item is the next warm item of the topic
  (cyclic), so transitions are informative for warm items and the new items have no train interaction."""
  rng = np.random.default_rng(seed)
  warm = [f"w{t}_{j}" for t in range(3) for j in range(10)]
  new = [f"new{t}" for t in range(3)]
  items = warm + new
  topic = np.array([t for t in range(3) for _ in range(10)] + [0, 1, 2])
  content = np.eye(3)[topic] * 3.0 + 0.3 * rng.normal(size=(len(items), 3))
  rows = []
  for u in range(num_users):
    t = u % 3
    start = rng.integers(10)
    seq = [f"w{t}_{(start + j) % 10}" for j in range(seq_len - 1)] + [f"new{t}"]
    rows += [(f"u{u}", it, pos) for pos, it in enumerate(seq)]
  inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
  inter["label"] = np.float32(1.0)
  ds = RecDataset("tiny", inter, pd.DataFrame({"item_id": items, "title": items}))
  sid = np.stack([topic, np.arange(len(items)) % 4, np.zeros(len(items), int)], axis=1).astype(np.int32)
  feats = ItemFeatures(np.array(items, dtype=object), {"sid": sid, "content": content.astype(np.float32)})
  return ds, feats


def test_training_pairs_never_label_the_positive_history_or_future_items():
  from semrec.ranking.cascade import (CascadeConfig, build_sources, candidate_stage, training_queries,
                                      training_slots, user_future_items)
  ds, feats = _world()
  split = make_split(ds, "leave_one_out")
  cfg = CascadeConfig(candidates=12, per_source=8, hard_negatives=6, random_negatives=3, mode="unigram")
  tq = training_queries(split, cfg.queries_per_user, cfg.max_train_queries)
  index = catalogue_index(feats.item_ids)
  stage = candidate_stage(build_sources(split, feats.item_ids, feats.arrays["content"], training=True), tq,
                          index, cfg)
  future = user_future_items(split)
  merged, pairs, labels = training_slots(stage.merged, tq, index, future, cfg)
  assert len(pairs) and labels.sum() == len(tq)  # one positive per training query
  valid_test = {t for q in ("valid", "test") for ts in split.queries(q).targets for t in ts}
  assert "new0" in valid_test
  for (q, s), y in zip(pairs, labels):
    item = feats.item_ids[merged.rows[q, s]]
    if y == 1:
      assert item == tq.targets[q][0]
      continue
    assert item != tq.targets[q][0]
    assert item not in set(tq.histories[q])
    assert item not in future.get(tq.user_ids[q], set())  # the user's validation / test items
    assert item in set(split.train_items)  # items seen only in validation / test never enter training


def test_training_queries_come_from_the_train_log_only():
  from semrec.ranking.cascade import training_queries
  ds, _ = _world()
  split = make_split(ds, "leave_one_out")
  tq = training_queries(split, queries_per_user=2, max_queries=1000)
  train_pairs = set(zip(split.train_positives["user_id"], split.train_positives["item_id"]))
  for u, h, t in zip(tq.user_ids, tq.histories, tq.targets):
    assert (u, t[0]) in train_pairs and all((u, i) in train_pairs for i in h)
  assert len(tq) == 2 * ds.interactions["user_id"].nunique()
  # Default: max_queries spread over the users (60 users, 120 queries -> the last 2 positions of each).
  spread = training_queries(split, max_queries=120)
  assert len(spread) == 120 and pd.Series(spread.user_ids).value_counts().eq(2).all()


def test_transition_source_leaves_the_training_query_own_transition_out():
  from semrec.ranking.cascade import leave_own_transition_out
  from semrec.towers.baselines import TransitionBaseline
  ds, feats = _world(num_users=3)
  split = make_split(ds, "leave_one_out")
  base = TransitionBaseline().fit(split, feats.item_ids)
  # One user per topic, so the transition w0_a -> w0_b of user u0 is counted once: out of sample it is 0.
  seq = split.train_sequences()["u0"]
  q = _queries([seq[:1]], [[seq[1]]], [1])
  full = base.scores(q, np.arange(1))
  loo = leave_own_transition_out(base)(q, np.arange(1))
  col = catalogue_index(feats.item_ids).get_loc(seq[1])
  n = len(feats.item_ids)
  assert full[0, col] - loo[0, col] == n + 1
  np.testing.assert_array_equal(np.delete(full[0], col), np.delete(loo[0], col))


def test_fresh_source_is_the_only_way_to_the_new_item_and_the_ranked_list_finds_it():
  from semrec.ranking.cascade import (CascadeConfig, build_sources, candidate_stage, evaluate_cascade,
                                      train_cascade)
  ds, feats = _world()
  split = make_split(ds, "leave_one_out")
  index = catalogue_index(feats.item_ids)
  cfg = CascadeConfig(candidates=12, per_source=6, hard_negatives=6, random_negatives=2, mode="unigram",
                      max_epochs=2, embedding_dim=8, batch_size=64)
  test = split.queries("test")
  assert all(t[0].startswith("new") for t in test.targets)
  keep = lambda sources: [s for s in sources if s.name != "content_knn"]  # noqa: E731  (kNN would find them too)
  serve = keep(build_sources(split, feats.item_ids, feats.arrays["content"]))
  stage = candidate_stage(serve, test, index, cfg)
  recall = {r.name: candidate_recall(r.rows, [index.get_indexer(t) for t in test.targets])["overall"]
            for r in stage.results}
  assert recall == {"fresh_items": 1.0, "transition": 0.0, "popularity": 0.0}
  cascade = train_cascade(split, feats, 4, keep(build_sources(split, feats.item_ids, feats.arrays["content"],
                                                              training=True)),
                          candidate_stage(serve, split.queries("valid"), index, cfg), cfg, progress=False)
  out = evaluate_cascade(cascade, stage, feats.item_ids, ks=(5, 10))
  assert out["candidate_recall"]["merged"]["overall"] == 1.0
  assert out["final"]["overall"]["recall@10"] == 1.0  # every new item is in its user's final top 10
  # Without the fresh-item source no list can reach the new items.
  no_fresh = candidate_stage([s for s in serve if s.name != "fresh_items"], test, index, cfg)
  assert candidate_recall(no_fresh.merged.rows, [index.get_indexer(t) for t in test.targets])["overall"] == 0.0


def test_query_with_no_history_gets_candidates_and_a_score():
  from semrec.ranking.cascade import CascadeFeaturizer
  ds, feats = _world()
  split = make_split(ds, "leave_one_out")
  index = catalogue_index(feats.item_ids)
  from semrec.ranking.cascade import CascadeConfig, build_sources, candidate_stage
  q = _queries([[]], [["w0_1"]], [3])
  stage = candidate_stage(build_sources(split, feats.item_ids, feats.arrays["content"]), q, index,
                          CascadeConfig(candidates=40, per_source=5))
  # Catalogue (33) smaller than the candidate count (40): every item once, the rest padding.
  rows = stage.merged.rows[0]
  assert len(set(rows[rows >= 0])) == (rows >= 0).sum() <= 33
  assert (rows[rows >= 0].size >= 5) and (rows[-1] == -1)
  ex = CascadeFeaturizer(feats, split.train).examples(stage.merged, q)
  assert np.isfinite(ex.context).all() and (ex.last == -1).all()


def test_list_source_drops_removed_items_and_maps_ids():
  from semrec.ranking.candidates import history_list_source

  class Gen:  # a duck-typed history source (as semrec.generative.GenerativeSource)
    name = "gen"

    def retrieve(self, histories, k):
      assert histories.shape == (2, 3) and histories[0, -1] == "a"  # most recent last, "" padding
      ids = np.array([["a", "c", "zz", "b"], ["d", "", "b", "a"]], dtype=object)[:, :k]
      return ids, np.array([[4.0, 3.0, 2.0, 1.0], [9.0, 0.0, 8.0, 7.0]])[:, :k]

  index = catalogue_index(["a", "b", "c", "d"])
  q = _queries([["a"], []], [["b"], ["c"]], [5, 5], candidates=np.array(["a", "b", "c"], dtype=object))
  res = history_list_source(Gen(), index, max_history=3, max_k=4).retrieve(q, 5, index)
  # query 0: a (history) removed, zz unknown -> c, b; query 1: d not a candidate, "" padding -> b, a.
  assert res.rows.tolist() == [[2, 1, -1, -1, -1], [1, 0, -1, -1, -1]]
  np.testing.assert_allclose(res.scores[:, :2], [[3.0, 1.0], [8.0, 7.0]])


def test_explicit_negatives_between_previous_positive_and_request():
  from semrec.ranking.cascade import (CascadeConfig, explicit_negative_rows, merge_candidates, training_queries,
                                      training_slots)
  # u0: a+ @0, x- @1, b+ @2, y- @3, c+ @4, d+ @5, e+ @6; leave_one_out keeps a..d (+ x, y) for training
  # (e = test, d = validation is the second to last positive: train = a, x, b, y, c).
  rows = [("u0", "a", 0, 1.0), ("u0", "x", 1, 0.0), ("u0", "b", 2, 1.0), ("u0", "y", 3, 0.0), ("u0", "c", 4, 1.0),
          ("u0", "d", 5, 1.0), ("u0", "e", 6, 1.0)]
  inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "label"])
  items = ["a", "b", "c", "d", "e", "x", "y"]
  split = make_split(RecDataset("t", inter, pd.DataFrame({"item_id": items, "title": items})), "leave_one_out")
  index = catalogue_index(items)
  tq = training_queries(split, queries_per_user=5)
  assert [t[0] for t in tq.targets] == ["b", "c"]
  # b @2: previous positive a @0 -> x @1; c @4: previous positive b @2 -> y @3.
  explicit = explicit_negative_rows(split, tq, index)
  assert [index[r].tolist() for r in explicit] == [["x"], ["y"]]
  empty = SourceResult("none", np.full((2, 1), -1, np.int64), np.zeros((2, 1), np.float32))
  cfg = CascadeConfig(candidates=2, per_source=1, hard_negatives=0, random_negatives=0, explicit_negatives=1)
  merged, pairs, labels = training_slots(merge_candidates([empty], total=2), tq, index, {}, cfg, explicit)
  got = {(int(q), items[merged.rows[q, s]], float(y)) for (q, s), y in zip(pairs, labels)}
  assert got == {(0, "b", 1.0), (0, "x", 0.0), (1, "c", 1.0), (1, "y", 0.0)}


def test_epoch_mean_loss_averages_the_batches_not_the_last_one():
  from semrec.ranking.training import EpochMeanLoss
  cb = EpochMeanLoss()
  assert np.isnan(cb.mean)
  cb.on_epoch_begin(0)
  for b, loss in enumerate((0.2, 0.4, 1e-6)):  # a tiny remainder batch last
    cb.on_train_batch_end(b, {"loss": loss})
  assert cb.mean == pytest.approx((0.2 + 0.4 + 1e-6) / 3)
  cb.on_epoch_begin(1)
  cb.on_train_batch_end(0, {"loss": 0.5})
  assert cb.mean == pytest.approx(0.5)


def test_build_sources_orders_equal_counts_by_the_seed():
  """Popularity's equal counts follow the run's seed, not catalogue order (issue 26: baselines used seed 0)."""
  ds, _ = _world()
  extra = [f"z{j}" for j in range(30)]  # never interacted: 33 zero-count items with the 3 new ones
  ds = RecDataset("tiny", ds.interactions, pd.concat([ds.items, pd.DataFrame({"item_id": extra, "title": extra})]))
  ids = ds.items["item_id"].to_numpy().astype(object)
  split = make_split(ds, "leave_one_out")
  q = split.queries("test")
  tails = []
  for seed in (0, 1):
    pop = [s for s in build_sources(split, ids, None, seed=seed) if s.name == "popularity"][0]
    order = np.argsort(-pop.score_fn(q, np.arange(1))[0], kind="stable")
    assert set(ids[order[:30]]) == set(ids[:30])  # the 30 counted warm items first under any seed
    tails.append(order[30:])
  assert not np.array_equal(tails[0], tails[1])  # the zero-count items: a seed-dependent order


def test_training_catalogue_horizon_and_filter_conjunction():
  from semrec.ranking.candidates import all_of, available_item_filter
  first_seen = np.array([0, 10, 20, 35, np.iinfo(np.int64).max])  # e: never seen in train
  q = _queries([["a"], ["a"]], [["b"], ["c"]], [10, 20])
  # Horizon 10: at t=10 the items first seen by 20 exist (a, b, c); at t=20 those by 30 (still not d at 35);
  # e (never seen in train) at neither.
  assert available_item_filter(first_seen, 10)(q, np.arange(2)).tolist() == [
      [True, True, True, False, False], [True, True, True, False, False]]
  assert available_item_filter(first_seen, 15)(q, np.arange(2))[1].tolist() == [True, True, True, True, False]
  fresh_and_available = all_of(fresh_item_filter(first_seen, 0), available_item_filter(first_seen, 10), None)
  # Fresh at t (not seen before t) and available by t + 10: t=10 -> b (10), c (20); t=20 -> c only.
  assert fresh_and_available(q, np.arange(2)).tolist() == [[False, True, True, False, False],
                                                           [False, False, True, False, False]]
  assert all_of(None, None) is None
  with pytest.raises(ValueError, match="horizon"):
    available_item_filter(first_seen, -1)


def test_training_sources_and_random_negatives_stay_inside_the_horizon():
  from semrec.ranking.candidates import available_item_filter, first_seen_times
  from semrec.ranking.cascade import (CascadeConfig, candidate_stage, evaluation_horizon, training_queries,
                                      training_slots, user_future_items)
  ds, feats = _world()
  assert evaluation_horizon(make_split(ds, "leave_one_out")) == 1  # positions 0..7: valid at 6, test at 7
  # Topic 2's users start 100 time units later, so its items do not exist yet for the other users' requests.
  late = ds.interactions["user_id"].str[1:].astype(int) % 3 == 2
  inter = ds.interactions.assign(timestamp=ds.interactions["timestamp"] + np.where(late, 100, 0))
  split = make_split(RecDataset("tiny", inter, ds.items), "leave_one_out")
  index = catalogue_index(feats.item_ids)
  first = first_seen_times(split.train, index)
  cfg = CascadeConfig(candidates=12, per_source=8, hard_negatives=4, random_negatives=6, mode="unigram")
  tq = training_queries(split, cfg.queries_per_user, cfg.max_train_queries)
  sources = build_sources(split, feats.item_ids, feats.arrays["content"], training=True, catalogue_horizon=0)
  stage = candidate_stage(sources, tq, index, cfg)
  limit = np.asarray(tq.timestamps, np.int64)
  for r in stage.results:  # horizon 0: no source returns an item first seen after the request
    q, s = np.nonzero(r.rows >= 0)
    assert (first[r.rows[q, s]] <= limit[q]).all(), r.name
  merged, pairs, labels = training_slots(stage.merged, tq, index, user_future_items(split), cfg,
                                         available=available_item_filter(first, 0))
  q, s = pairs[labels == 0, 0], pairs[labels == 0, 1]
  assert (first[merged.rows[q, s]] <= limit[q]).all()  # nor any negative, random ones included
  # Without the horizon the random negatives do reach later items (the check above can fail).
  merged2, pairs2, labels2 = training_slots(stage.merged, tq, index, user_future_items(split), cfg)
  q2, s2 = pairs2[labels2 == 0, 0], pairs2[labels2 == 0, 1]
  assert (first[merged2.rows[q2, s2]] > limit[q2]).any()


def test_fresh_scorer_is_the_one_that_finds_validation_new_items():
  from semrec.ranking.cascade import choose_fresh_scorer
  ds, feats = _world(num_users=240)
  split = make_split(ds, "cold_items")  # validation targets: held-out items without a train interaction
  valid = split.queries("valid")
  ids = feats.item_ids
  index = catalogue_index(ids)
  assert int(np.sum(valid.cold)) >= 100

  def good(queries, rows):  # an oracle: each query's own target first
    out = np.zeros((len(rows), len(ids)))
    for i, r in enumerate(rows):
      out[i, index.get_indexer(queries.targets[r])] = 1.0
    return out

  bad = lambda queries, rows: -good(queries, rows)  # noqa: E731
  name, recall = choose_fresh_scorer(split, ids, {"content_knn": bad, "tower": good}, k=1)
  assert name == "tower" and recall["tower"] == 1.0 and recall["content_knn"] == 0.0
  # Too few new-item targets on validation: content kNN, no measurement.
  assert choose_fresh_scorer(split, ids, {"content_knn": bad, "tower": good}, min_cold_queries=10 ** 6) == (
      "content_knn", {})


def test_fresh_share_draws_queries_whose_target_is_a_new_item():
  from semrec.ranking.candidates import first_seen_times
  from semrec.ranking.cascade import fresh_target_share, training_queries
  ds, feats = _world(num_users=90)
  # User u starts at 10 u: an item's first train interaction is its earliest user's, anywhere in that sequence.
  users = ds.interactions["user_id"].str[1:].astype(int).to_numpy()
  inter = ds.interactions.assign(timestamp=ds.interactions["timestamp"] + 10 * users)
  split = make_split(RecDataset("tiny", inter, ds.items), "leave_one_out")
  first = first_seen_times(split.train, catalogue_index(feats.item_ids))
  index = catalogue_index(feats.item_ids)

  def new_share(q):
    rows = index.get_indexer(np.array([t[0] for t in q.targets], dtype=object))
    return np.mean(first[rows] == np.asarray(q.timestamps))

  plain = training_queries(split, queries_per_user=1, max_queries=40)
  mixed = training_queries(split, queries_per_user=1, max_queries=40, fresh_share=0.5)
  assert len(plain) == len(mixed) == 40
  assert new_share(mixed) >= 0.5 > new_share(plain)
  assert fresh_target_share(split) == 0.0  # leave-one-out here: every validation target is a train item


def test_rank_blend_golden_and_the_two_ends():
  from semrec.ranking.candidates import MergedCandidates
  from semrec.ranking.cascade import rank_blend
  # One query, 4 slots (the last padding); source 0 ranked slots 2, 0 (ranks 0, 1) and not slot 1.
  rows = np.array([[5, 6, 7, -1]])
  ranks = np.array([[[1], [-1], [0], [-1]]], np.int32)
  merged = MergedCandidates(rows, ranks, np.zeros((1, 4, 1), np.float32), ("s",))
  p = np.array([[0.9, 0.5, 0.1, -np.inf]])  # ranker ranks: slot 0 -> 0, slot 1 -> 1, slot 2 -> 2
  w0 = rank_blend(p, merged, 0, 0.0)
  np.testing.assert_allclose(w0[0, :3], -np.log1p([0, 1, 2]), rtol=1e-6)
  assert w0[0, 3] == -np.inf
  w1 = rank_blend(p, merged, 0, 1.0)  # the source's order; slot 1 (not returned) gets rank M = 4
  np.testing.assert_allclose(w1[0, :3], -np.log1p([1, 4, 0]), rtol=1e-6)
  half = rank_blend(p, merged, 0, 0.5)
  np.testing.assert_allclose(half[0, :3], -0.5 * (np.log1p([0, 1, 2]) + np.log1p([1, 4, 0])), rtol=1e-6)
  assert list(np.argsort(-half[0, :3])) == [0, 2, 1]


def test_choose_blend_keeps_the_ranker_unless_a_source_is_better_on_validation():
  from semrec.ranking.candidates import MergedCandidates
  from semrec.ranking.cascade import CascadeStage, choose_blend
  ids = np.array(["a", "b", "c", "d"], dtype=object)
  q = _queries([["x"], ["x"]], [["b"], ["c"]], [1, 1], exclude=[[], []])
  rows = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
  # Source "good" ranks each query's target first; "bad" ranks it last.
  good = np.array([[[1], [0], [2], [3]], [[1], [2], [0], [3]]], np.int32)
  bad = 3 - good
  merged = MergedCandidates(rows, np.concatenate([good, bad], axis=2), np.zeros((2, 4, 2), np.float32),
                            ("good", "bad"))
  stage = CascadeStage(q, [], merged)
  weak = np.array([[0.9, 0.1, 0.2, 0.3], [0.9, 0.3, 0.1, 0.2]])  # the ranker puts "a" first, target later
  name, w, table = choose_blend(weak, stage, ids, ["good", "bad"])
  assert name == "good" and w == 0.75 and table["None@0.0"] < table["good@0.75"]  # 0.75: first to put it first
  strong = np.array([[0.1, 0.9, 0.2, 0.3], [0.1, 0.3, 0.9, 0.2]])  # the ranker is already perfect: tie -> ranker
  assert choose_blend(strong, stage, ids, ["good", "bad"])[:2] == (None, 0.0)


def test_evaluate_list_equals_evaluate_scores_on_list_scores():
  """The list metrics are evaluate_scores' over "list scores, every other item below" (ties by catalogue row)."""
  from semrec.ranking.cascade import evaluate_list
  from semrec.towers.evaluation import evaluate_scores
  rng = np.random.default_rng(3)
  ids = np.array([f"i{j}" for j in range(30)], dtype=object)
  Q, L = 40, 12
  hist = [list(rng.choice(ids, size=3, replace=False)) for _ in range(Q)]
  rows = np.full((Q, L), -1, np.int64)
  scores = np.zeros((Q, L))
  for q in range(Q):  # lists never hold a history item; full length (L >= every K)
    allowed = [j for j in range(30) if ids[j] not in hist[q]]
    n = L
    rows[q, :n] = rng.choice(allowed, size=n, replace=False)
    scores[q, :n] = rng.integers(0, 4, size=n)  # many ties
  targets = [list(rng.choice(ids, size=int(rng.integers(1, 3)), replace=False)) for _ in range(Q)]
  queries = _queries(hist, targets, np.ones(Q))
  queries.cold = rng.random(Q) < 0.3

  def score_fn(qrows):
    out = np.full((len(qrows), 30), -10.0)
    for i, q in enumerate(qrows):
      ok = rows[q] >= 0
      out[i, rows[q][ok]] = scores[q][ok]
    return out

  want = evaluate_scores(score_fn, queries, ids, ks=(1, 5, 10), ndcg_ks=(5, 10))
  got = evaluate_list(rows, scores, queries, ids, ks=(1, 5, 10), ndcg_ks=(5, 10))
  assert got.keys() == want.keys()
  for s in want:
    for k, v in want[s].items():
      assert got[s][k] == pytest.approx(v), (s, k)
  # A short list (padding): a target outside it is a miss at any K, not found by the catalogue's order.
  short = np.array([[0, 1, -1, -1]])
  one = _queries([[]], [["i2"]], [1])
  assert evaluate_list(short, np.array([[2.0, 1.0, 0.0, 0.0]]), one, ids, ks=(4,), ndcg_ks=(4,))[
      "overall"]["recall@4"] == 0.0
