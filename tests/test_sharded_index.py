"""Sharded top-k index (semrec.towers.sharded_index): per-hash-shard indexes, merged top-k == one exact index."""
import numpy as np
import pytest

from semrec.towers import ShardedIndex, brute_force_top_k, build_index, build_sharded_index, merge_top_k, shard_of


def _data(n=600, d=8, q=40, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32), np.asarray([f"item{i}" for i in range(n)], object),
          rng.normal(size=(q, d)).astype(np.float32))


def test_shard_of_is_stable_and_spreads():
  ids = [f"item{i}" for i in range(600)]
  a = shard_of(ids, 3)
  np.testing.assert_array_equal(a, shard_of(list(reversed(ids)), 3)[::-1])  # depends on the id, not the order
  assert set(a.tolist()) == {0, 1, 2} and np.bincount(a).min() > 150
  with pytest.raises(ValueError, match="num_shards"):
    shard_of(ids, 0)


def test_merge_top_k_by_hand():
  # shard A: (0.9, a1), (0.1, a2); shard B: (0.5, b1), (0.4, b2) -> top 3: a1, b1, b2.
  s, i = merge_top_k([np.array([[0.9, 0.1]]), np.array([[0.5, 0.4]])],
                     [np.array([["a1", "a2"]], object), np.array([["b1", "b2"]], object)], 3)
  assert i.tolist() == [["a1", "b1", "b2"]]
  np.testing.assert_allclose(s, [[0.9, 0.5, 0.4]])


@pytest.mark.parametrize("kind", ["brute_force", "scann"])
def test_sharded_top_k_equals_single_exact_index(kind, tmp_path):
  """3 hash shards: the merged top-10 equals one brute-force index's top-10 (ScaNN per shard made exact:
  every leaf searched, every candidate reordered with exact scores)."""
  x, ids, q = _data()
  exact = {"num_leaves": 4, "num_leaves_to_search": 4, "reorder": 600} if kind == "scann" else {}
  sharded = build_sharded_index(x, ids, 3, kind=kind, k=10, **exact)
  assert [s.kind for s in sharded.shards] == [kind] * 3 and len(sharded) == 600
  scores, got = sharded.search(q, 10)
  ref_scores, rows = brute_force_top_k(q, x, 10)
  assert (got == ids[rows]).all()
  np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
  # Save / load round trip answers the same.
  again = ShardedIndex.load(sharded.save(str(tmp_path / "idx")))
  assert (again.search(q, 10)[1] == got).all()


def test_sharded_scann_approximate_recall_close_to_one_index():
  """Approximate ScaNN (2 of 8 leaves searched): the merged shards' recall@10 against exact is at least one
  index's minus 0.1 (each shard probes its own tree, so recall does not collapse with sharding). ScaNN's
  multi-threaded tree training makes the small shards' recall vary between builds (.54-.64 seen against one
  index's .64), so the sharded figure is the mean of three builds."""
  x, ids, q = _data(n=2000, d=16, q=50, seed=1)
  _, rows = brute_force_top_k(q, x, 10)
  truth = ids[rows]

  def recall(found):
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), truth.tolist())])

  params = dict(kind="scann", k=10, num_leaves=8, num_leaves_to_search=2, reorder=40)
  one = recall(build_index(x, ids, **params).search(q, 10)[1])
  sharded = np.mean([recall(build_sharded_index(x, ids, 4, **params).search(q, 10)[1]) for _ in range(3)])
  assert one < 1.0  # the setting is approximate: the comparison is not between two exact searches
  assert sharded >= one - 0.1
