"""SidTable (suffix, tokens, save/load) and SID health metrics."""
import os

import numpy as np
import pytest
import semrec  # noqa: F401

from semrec.data import DataError
from semrec.sid import SidTable, compute_suffix, format_health_table, plot_code_usage, sid_health
from semrec.sid.table import level_letter


def test_tokens_and_parse():
  t = SidTable(["m1", "m2"], np.array([[12, 200, 7], [0, 1, 2]]), codebook_size=256)
  assert t.token_string(0) == "<a_12><b_200><c_7>"
  assert t.tokens()[1] == "<a_0><b_1><c_2>"
  assert SidTable.parse_tokens("<a_12><b_200><c_7><s_3>") == [12, 200, 7]
  assert [level_letter(i) for i in (0, 2, 25, 26)] == ["a", "c", "z", "aa"]
  np.testing.assert_array_equal(t.lookup(["m2"]), [[0, 1, 2]])
  with pytest.raises(DataError, match="unknown item id 'zz'"):
    t.lookup(["zz"])


def test_suffix_is_deterministic_and_unique():
  codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4], [5, 5]])
  ids = ["d", "b", "x", "a", "c", "q"]
  suffix = compute_suffix(codes, ids)
  # Group [1, 2] = {d, b, a} ordered by id: a -> 0, b -> 1, d -> 2; group [3, 4] = {x, c}: c -> 0, x -> 1.
  np.testing.assert_array_equal(suffix, [2, 1, 1, 0, 0, 0])
  # Independent of row order.
  perm = np.array([5, 3, 1, 0, 4, 2])
  np.testing.assert_array_equal(compute_suffix(codes[perm], np.array(ids)[perm]), suffix[perm])
  t = SidTable(ids, codes, 8).with_suffix()
  assert t.unique_ratio() == pytest.approx(3 / 6)
  assert len(np.unique(t.full_codes(), axis=0)) == 6
  assert t.token_string(0) == "<a_1><b_2><s_2>"


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 16, size=(50, 3))
  t = SidTable([f"i{k}" for k in range(50)], codes, 16,
               cluster_ids={"k10": rng.integers(0, 10, 50), "k4": rng.integers(0, 4, 50)}).with_suffix()
  t.save(str(tmp_path / "table"))
  t.save(str(tmp_path / "table"))  # overwrite
  u = SidTable.load(str(tmp_path / "table"))
  np.testing.assert_array_equal(u.codes, t.codes)
  np.testing.assert_array_equal(u.suffix, t.suffix)
  np.testing.assert_array_equal(u.cluster_ids["k10"], t.cluster_ids["k10"])
  assert list(u.item_ids) == list(t.item_ids) and u.codebook_size == 16
  assert sorted(os.listdir(tmp_path)) == ["table"]
  with pytest.raises(FileNotFoundError, match="missing manifest.json"):
    SidTable.load(str(tmp_path / "nope"))


def test_table_bad_input():
  with pytest.raises(DataError, match="item 'b' has out-of-range codes \\[1, 9\\]"):
    SidTable(["a", "b"], np.array([[0, 1], [1, 9]]), 8)
  with pytest.raises(DataError, match="duplicate item ids"):
    SidTable(["a", "a"], np.array([[0, 1], [1, 2]]), 8)
  with pytest.raises(DataError, match="codes must be"):
    SidTable(["a"], np.array([0, 1]), 8)


def test_health_metrics_hand_case(tmp_path):
  # 8 items, K=4, L=2. Level 1 uses codes {0, 1} -> utilisation 0.5; shares 5/8 and 3/8.
  codes = np.array([[0, 0], [0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 1]])
  # Content: items sharing more of the prefix are closer.
  base = {0: np.array([1.0, 0, 0, 0]), 1: np.array([0, 1.0, 0, 0])}
  x = np.stack([base[c1] + 0.3 * np.eye(4)[c2] for c1, c2 in codes]).astype(np.float32)
  x[1] += 0.01  # duplicates (0, 1) are not identical
  h = sid_health(codes, x, 4, reconstructions=x + 0.1)
  lv1, lv2 = h["levels"]
  assert lv1["utilisation"] == 0.5 and lv1["dead_codes"] == 2 and lv1["used_codes"] == 2
  assert lv1["largest_code_share"] == pytest.approx(5 / 8)
  p = np.array([5, 3]) / 8
  assert lv1["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
  assert lv2["utilisation"] == 1.0
  assert h["unique_ratio"] == pytest.approx(6 / 8)
  assert h["collision_groups"] == {"1": 4, "2": 2} and h["max_collision_group"] == 2
  assert h["items_in_collisions"] == pytest.approx(4 / 8)
  assert h["reconstruction"]["mse"] == pytest.approx(0.04, rel=1e-4)
  rows = h["prefix_table"]
  assert [r["prefix_length"] for r in rows] == [0, 1, 2]
  # Level 1: groups of 5 and 3 -> 10 + 3 = 13 pairs (all enumerated); level 2: 2 pairs.
  assert rows[1]["pairs"] == 13 and rows[1]["groups"] == 2 and rows[1]["mean_subtrie_size"] == 4.0
  assert rows[2]["pairs"] == 2 and rows[2]["groups"] == 6
  assert h["prefix_cosine_strictly_rising"]
  md = format_health_table(h)
  assert "| 1 | 50.0% | 2 / 4 | 2 |" in md and "random pairs" in md and "strictly rising" in md
  png = plot_code_usage(codes, 4, str(tmp_path / "usage.png"), title="t")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_health_samples_pairs_for_big_groups():
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 2, size=(3000, 2))
  x = rng.normal(size=(3000, 8)).astype(np.float32)
  h = sid_health(codes, x, 2, max_pairs=1000)
  assert all(r["pairs"] == 1000 for r in h["prefix_table"])
  assert h["prefix_table"][1]["pairs_total"] > 1000


def test_health_bad_input():
  codes = np.zeros((4, 2), int)
  x = np.ones((4, 3), np.float32)
  with pytest.raises(DataError, match="empty"):
    sid_health(np.zeros((0, 2), int), np.zeros((0, 3)), 2)
  bad = x.copy()
  bad[2, 0] = np.nan
  with pytest.raises(DataError, match="row 2 \\(item 'c'\\)"):
    sid_health(codes, bad, 2, item_ids=["a", "b", "c", "d"])
  with pytest.raises(ValueError, match="K=8 is larger than the number of items N=4"):
    sid_health(codes, x, 8)
  with pytest.raises(DataError, match="wrong embedding width 5"):
    sid_health(codes, x, 2, reconstructions=np.ones((4, 5)))
  with pytest.raises(DataError, match="out-of-range"):
    sid_health(codes + 3, x, 2)
