"""Tests for semrec.data.split.make_split: the three protocols on hand-made logs (docs/protocols.md)."""
import re

import numpy as np
import pandas as pd
import pytest

from semrec.data import SPLITS, DataError, RecDataset, make_split


def _dataset(rows, items=None, name="tiny"):
  """rows: (user, item, timestamp[, label]) in dataset order."""
  df = pd.DataFrame([(r[0], r[1], r[2], r[3] if len(r) > 3 else 1.0) for r in rows],
                    columns=["user_id", "item_id", "timestamp", "label"])
  df["timestamp"] = df["timestamp"].astype(np.int64)
  df["label"] = df["label"].astype(np.float32)
  ids = items or sorted(set(df["item_id"]))
  return RecDataset(name, df, pd.DataFrame({"item_id": ids, "title": ids}))


def _ids(arrays):
  return [list(a) for a in arrays]


# User a: 4 positives, a tie at t=2 where the dataset lists i9 before i3 (i3 is then the later one), and the
# row (a, i1, 1) twice. User b: 2 positives, user c: 1 -> train only. User d: 3 positives and a negative
# (label 0) between its validation and test items; its test item "new" appears nowhere else.
LOG = [("a", "i1", 1), ("a", "i1", 1), ("c", "i5", 1), ("b", "i1", 2), ("a", "i9", 2), ("a", "i3", 2),
       ("b", "i2", 3), ("d", "i2", 3), ("a", "i4", 4), ("d", "i3", 4), ("d", "i4", 5), ("d", "i9", 6, 0.0),
       ("d", "new", 7)]


@pytest.fixture
def loo():
  return make_split(_dataset(LOG), "leave_one_out")


def test_leave_one_out_targets_and_train(loo):
  # a: positives in order i1, i9, i3 (tie at t=2 kept in dataset order), i4 -> valid i3, test i4.
  # d: positives i2, i3, i4, new -> valid i4, test new; the negative i9 (after the valid item) is not train.
  train = loo.train
  assert sorted(map(tuple, train[["user_id", "item_id"]].to_numpy().tolist())) == sorted(
      [("a", "i1"), ("a", "i9"), ("c", "i5"), ("b", "i1"), ("b", "i2"), ("d", "i2"), ("d", "i3")])
  assert loo.info["duplicates_dropped"] == 1 and loo.info["users_train_only"] == 2
  valid, test = loo.queries("valid"), loo.queries("test")
  assert list(valid.user_ids) == ["a", "d"] and _ids(valid.targets) == [["i3"], ["i4"]]
  assert _ids(valid.histories) == [["i1", "i9"], ["i2", "i3"]]
  assert list(test.user_ids) == ["a", "d"] and _ids(test.targets) == [["i4"], ["new"]]
  # Test history = every earlier positive, including the validation item; exclude adds the negative i9.
  assert _ids(test.histories) == [["i1", "i9", "i3"], ["i2", "i3", "i4"]]
  assert _ids(test.exclude) == [["i1", "i9", "i3"], ["i2", "i3", "i4", "i9"]]
  assert test.timestamps.tolist() == [4, 7]
  # i4 is trained by nobody (a's and d's i4 are targets) -> cold; "new" too.
  assert valid.cold.tolist() == [False, True] and test.cold.tolist() == [True, True]
  assert loo.cold_items.tolist() == ["i4", "new"]
  assert loo.train_sequences()["a"].tolist() == ["i1", "i9"]


def test_one_interaction_user_is_train_only(loo):
  assert "c" in set(loo.train["user_id"])
  for stage in ("valid", "test"):
    assert "c" not in set(loo.queries(stage).user_ids) and "b" not in set(loo.queries(stage).user_ids)


def test_history_truncation_keeps_full_exclusion(loo):
  test = loo.queries("test")
  padded = test.padded_histories(2)
  assert padded.tolist() == [["i9", "i3"], ["i3", "i4"]]  # most recent 2, most recent last
  assert len(test.exclude[0]) == 3
  assert test.padded_histories(5)[0].tolist() == ["", "", "i1", "i9", "i3"]


def test_temporal_windows_see_only_earlier_data():
  # 20 rows, one per timestamp 0..19; train_fraction 0.8 -> cutoff 16; val_fraction 0.25 of the 16 pre-cutoff
  # rows -> valid_start = ts[12] = 12. Train = t < 12, valid = 12..15, test = 16..19.
  rows = [("u", f"i{t}", t) for t in range(20)]
  rows[13] = ("u", "i13", 13, 0.0)  # a negative in the window: excluded later, never a target or history
  rows[17] = ("v", "i1", 17)
  split = make_split(_dataset(rows), "temporal", train_fraction=0.8, val_fraction=0.25)
  assert split.info["cutoff"] == 16 and split.info["valid_start"] == 12
  assert split.train["timestamp"].max() == 11
  valid, test = split.queries("valid"), split.queries("test")
  assert _ids(valid.targets) == [["i12"], ["i14"], ["i15"]]
  assert list(valid.histories[1]) == [f"i{t}" for t in range(13) if t != 13]
  assert "i13" in list(test.exclude[0]) and "i13" not in list(test.histories[0])
  assert _ids(test.targets) == [["i16"], ["i1"], ["i18"], ["i19"]]
  assert test.user_ids.tolist() == ["u", "v", "u", "u"]
  assert len(test.histories[1]) == 0 and test.cold.tolist() == [True, False, True, True]
  assert list(test.histories[2])[-2:] == ["i15", "i16"]  # earlier test rows are history too


def test_temporal_equal_timestamps_are_not_history():
  rows = [("u", "a", 0), ("u", "b", 1), ("u", "c", 2), ("u", "d", 3), ("u", "e", 4), ("u", "f", 5), ("u", "g", 5)]
  test = make_split(_dataset(rows), "temporal", train_fraction=0.8, val_fraction=0.3).queries("test")  # cutoff 5
  assert _ids(test.targets) == [["f"], ["g"]] and list(test.histories[1]) == ["a", "b", "c", "d", "e"]


def _cold_log(num_items=20, num_users=6):
  rng = np.random.default_rng(1)
  rows = [(f"u{u}", f"i{i}", int(t)) for u in range(num_users)
          for t, i in enumerate(rng.choice(num_items, size=8, replace=False))]
  return _dataset(rows, items=[f"i{i}" for i in range(num_items + 1)])  # i20: a catalogue item never seen


def test_cold_items_disjoint_and_seeded():
  ds = _cold_log()
  split = make_split(ds, "cold_items", cold_fraction=0.4, seed=3)
  valid, test = split.queries("valid"), split.queries("test")
  held_valid, held_test = set(valid.candidates), set(test.candidates)
  assert not held_valid & held_test
  assert not set(split.train["item_id"]) & (held_valid | held_test)
  seen = set(ds.interactions["item_id"])
  assert len(held_valid) + len(held_test) == round(0.4 * len(seen)) and "i20" not in held_valid | held_test
  assert len(split.train) + sum(ds.interactions["item_id"].isin(held_valid | held_test)) == len(ds.interactions)
  for q, held in ((valid, held_valid), (test, held_test)):
    assert q.cold.all()
    for u, h, t in zip(q.user_ids, q.histories, q.targets):
      assert set(t) <= held and len(set(t)) == len(t)
      assert list(h) == list(split.train_sequences()[u])
  again = make_split(ds, "cold_items", cold_fraction=0.4, seed=3)
  assert list(again.queries("test").candidates) == list(test.candidates)
  other = make_split(ds, "cold_items", cold_fraction=0.4, seed=4)
  assert set(other.queries("test").candidates) != held_test
  assert split.candidates is test.candidates


def test_bad_arguments():
  ds = _dataset(LOG)
  with pytest.raises(ValueError, match="split must be one of"):
    make_split(ds, "random")
  with pytest.raises(ValueError, match="cold_fraction"):
    make_split(ds, "cold_items", cold_fraction=1.5)
  with pytest.raises(DataError, match="at least 2"):
    make_split(_dataset([("a", "i1", 1)]), "leave_one_out")


def test_every_listed_split_kind_builds_its_protocol():
  # Each kind SPLITS lists builds its own protocol on LOG (train logs derived by hand):
  #   temporal: the rows before the validation window (t <= 3);
  #   leave_one_out: all but each user's last two positives (a: i1, i9; d: i2, i3; b and c: train only);
  #   cold_items (40%, seed 4): i1, i2 and i3 are held out, so none of their rows is train (d's negative i9 is).
  # The error for an unknown kind lists exactly SPLITS.
  ds = _dataset(LOG)
  want = {"temporal": {("a", "i1", 1), ("a", "i3", 2), ("a", "i9", 2), ("b", "i1", 2), ("b", "i2", 3), ("c", "i5", 1),
                       ("d", "i2", 3)},
          "leave_one_out": {("a", "i1", 1), ("a", "i9", 2), ("b", "i1", 2), ("b", "i2", 3), ("c", "i5", 1),
                            ("d", "i2", 3), ("d", "i3", 4)},
          "cold_items": {("a", "i4", 4), ("a", "i9", 2), ("c", "i5", 1), ("d", "i4", 5), ("d", "i9", 6),
                         ("d", "new", 7)}}
  for kind in SPLITS:
    split = make_split(ds, kind, cold_fraction=0.4, seed=4)
    assert split.kind == kind
    assert set(map(tuple, split.train[["user_id", "item_id", "timestamp"]].to_numpy().tolist())) == want[kind], kind
  with pytest.raises(ValueError, match=f"one of {re.escape(str(SPLITS))}"):
    make_split(ds, "random")


def test_implicit_generic_file_is_all_positives(tmp_path):
  from semrec.data import load_generic
  (tmp_path / "inter.csv").write_text("user_id,item_id,timestamp\nu,a,0\nu,b,1\nu,c,2\nv,a,5\n")
  (tmp_path / "items.csv").write_text("item_id,title\na,A\nb,B\nc,C\nd,D\n")
  ds = load_generic(str(tmp_path / "inter.csv"), str(tmp_path / "items.csv"))
  assert ds.interactions["label"].tolist() == [1.0, 1.0, 1.0, 1.0] and "rating" not in ds.interactions
  split = make_split(ds, "leave_one_out")
  assert _ids(split.queries("test").targets) == [["c"]] and split.info["users_train_only"] == 1
  # With a rating column the label is still derived from it (rating >= 3.5).
  (tmp_path / "rated.csv").write_text("user_id,item_id,timestamp,rating\nu,a,0,5\nu,b,1,2\n")
  assert load_generic(str(tmp_path / "rated.csv"), str(tmp_path / "items.csv")).interactions["label"].tolist() == [
      1.0, 0.0]


def _implicit_files(tmp_path, num_users=6, num_items=10):
  rng = np.random.default_rng(0)
  lines = ["user_id,item_id,timestamp"] + [f"u{u},i{i},{t}" for u in range(num_users)
                                           for t, i in enumerate(rng.choice(num_items, 5, replace=False))]
  (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
  (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},item {i}\n" for i in range(num_items)))
  return str(tmp_path / "inter.csv"), str(tmp_path / "items.csv")


def test_run_split_from_cli_flags(tmp_path):
  from semrec.cli import _build_config
  from semrec.pipeline import Run
  inter, items = _implicit_files(tmp_path)
  cfg = _build_config(None, "generic", inter, items, None, None, 0, False, "leave_one_out", True)
  assert cfg.data.split == "leave_one_out" and cfg.data.exclude_history is False
  run = Run(cfg, str(tmp_path / "run"))
  assert run.split.kind == "leave_one_out" and len(run.split.queries("test")) == 6
  # The protocol is its own config section: changing it re-runs retrieval but not encoding.
  before = {s: run.config_sections(s) for s in ("encode", "retrieval")}
  cfg.data.split = "cold_items"
  after = {s: run.config_sections(s) for s in ("encode", "retrieval")}
  assert before["encode"] == after["encode"] and before["retrieval"]["split"] != after["retrieval"]["split"]
  # Implicit data has no negative impressions: the impression-ranker sweep records a documented skip instead of
  # failing (the cascade ranking stage of `semrec run` trains on retrieval candidates instead).
  from semrec.pipeline.stages.ranking_sweep import stage_ranking_sweep
  assert stage_ranking_sweep(run)["skipped"].startswith("skipped: implicit feedback")
  default = _build_config(None, "generic", inter, items, None, None, 0, False, None, False)
  assert default.data.split == "temporal" and default.data.exclude_history is True
  from semrec.pipeline.config import DataConfig, RunConfig
  with pytest.raises(ValueError, match=r"^data\.split: 'random' is not one of"):
    RunConfig(data=DataConfig(split="random")).validate()
