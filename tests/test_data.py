"""Tests for semrec.data: bundled MovieLens, generic format validation, synthetic world, splits, tf.data."""
import os

import numpy as np
import pandas as pd
import pytest

from semrec.data import (MOVIELENS_DIR, DataError, ItemFeatures, SyntheticConfig, load_generic, make_synthetic,
                         make_tf_dataset, temporal_split, time_periods, user_histories)


def _data_rows(path):
  with open(path, encoding="utf-8") as f:
    import csv
    return sum(1 for _ in csv.reader(f)) - 1


def test_movielens_row_counts_match_files(movielens):
  assert len(movielens.interactions) == _data_rows(os.path.join(MOVIELENS_DIR, "ratings.csv")) == 100_004
  assert len(movielens.items) == _data_rows(os.path.join(MOVIELENS_DIR, "movies.csv")) == 9_125
  assert movielens.num_users == 671
  assert movielens.interactions["item_id"].nunique() == 9_066
  # links.csv has no header row: every line is a movie.
  with open(os.path.join(MOVIELENS_DIR, "links.csv")) as f:
    assert sum(1 for _ in f) == movielens.items["imdb_id"].ne("").sum()
  assert os.path.exists(os.path.join(MOVIELENS_DIR, "README.txt"))


def test_movielens_contract(movielens):
  inter = movielens.interactions
  assert inter["timestamp"].dtype == np.int64
  assert inter["label"].dtype == np.float32
  assert set(np.unique(inter["label"])) == {0.0, 1.0}
  assert (np.diff(inter["timestamp"].to_numpy()) >= 0).all()
  # label is rating >= 3.5.
  np.testing.assert_array_equal(inter["label"].to_numpy(), (inter["rating"] >= 3.5).astype(np.float32))
  texts = movielens.item_texts()
  assert texts[0].startswith("Toy Story (1995) | Adventure, Animation")
  assert movielens.items["year"].iloc[0] == 1995


def test_temporal_split_has_warm_and_cold(movielens):
  split = temporal_split(movielens, train_fraction=0.8)
  assert len(split.train) + len(split.test) == len(movielens.interactions)
  assert split.train["timestamp"].max() < split.cutoff <= split.test["timestamp"].min()
  assert len(split.cold_items) > 0 and len(split.warm_items) > 0
  assert len(split.test_cold) > 0 and len(split.test_warm) > 0
  # Cold items never occur in training.
  assert not split.train["item_id"].isin(split.cold_items).any()
  assert len(split.test_cold) + len(split.test_warm) == len(split.test)


def test_time_periods_are_ordered_and_complete(movielens):
  periods = time_periods(movielens.interactions, 4)
  assert sum(len(p) for p in periods) == len(movielens.interactions)
  for a, b in zip(periods[:-1], periods[1:]):
    assert a["timestamp"].max() < b["timestamp"].min()


def test_synthetic_is_deterministic(tmp_path):
  cfg = dict(num_items=40, num_users=10, num_topics=3, num_days=4, impressions_per_user_per_day=3, seed=7)
  a = make_synthetic(SyntheticConfig(**cfg, output_dir=str(tmp_path / "a")))
  b = make_synthetic(SyntheticConfig(**cfg, output_dir=str(tmp_path / "b")))
  pd.testing.assert_frame_equal(a.interactions, b.interactions)
  pd.testing.assert_frame_equal(a.items.drop(columns=["image_path", "audio_path"]),
                                b.items.drop(columns=["image_path", "audio_path"]))
  with open(a.items["image_path"][0], "rb") as fa, open(b.items["image_path"][0], "rb") as fb:
    assert fa.read() == fb.read()
  c = make_synthetic(SyntheticConfig(**{**cfg, "seed": 8}, output_dir=str(tmp_path / "c")))
  assert not a.interactions.equals(c.interactions)


def test_synthetic_has_all_modalities(synthetic_small):
  ds = synthetic_small
  assert all(ds.has_modality(m) for m in ("text", "image", "audio"))
  assert ds.item_topics.shape == (ds.num_items,)
  assert os.path.exists(ds.items["audio_path"][0])
  assert set(np.unique(ds.interactions["label"])) <= {0.0, 1.0}
  # Items are uploaded day by day, so a time split has cold items.
  assert len(temporal_split(ds).cold_items) > 0


def _purity(labels, topics):
  total = 0
  for c in np.unique(labels):
    total += np.bincount(topics[labels == c]).max()
  return total / len(topics)


def test_synthetic_topics_are_recoverable(synthetic_small):
  """Topics can be recovered from the content alone: mean image colour and title words."""
  from PIL import Image
  from sklearn.cluster import KMeans
  ds = synthetic_small
  colours = np.stack([np.asarray(Image.open(p), dtype=np.float32).mean(axis=(0, 1)) for p in ds.items["image_path"]])
  k = int(ds.item_topics.max()) + 1
  labels = KMeans(k, n_init=10, random_state=0).fit_predict(colours)
  assert _purity(labels, ds.item_topics) > 0.95
  # Random assignment is far less pure.
  rnd = np.random.default_rng(12345).integers(0, k, len(labels))
  assert _purity(rnd, ds.item_topics) < 0.6
  # Users click their preferred topics more often than others.
  inter = ds.interactions
  item_topic = dict(zip(ds.items["item_id"], ds.item_topics))
  users = {u: i for i, u in enumerate(sorted(inter["user_id"].unique()))}
  pref = ds.user_topics[inter["user_id"].map(users).to_numpy(), inter["item_id"].map(item_topic).to_numpy()]
  liked = inter["label"].to_numpy() > 0
  assert pref[liked].mean() > pref[~liked].mean() + 0.1


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return str(path)


ITEMS = "item_id,title,score\na,Alpha,1.0\nb,Beta,2.0\n"
INTER = "user_id,item_id,timestamp,rating\nu1,a,10,4.0\nu2,b,20,2.0\n"


def test_generic_loads_csv_and_parquet(tmp_path):
  ds = load_generic(_write(tmp_path / "i.csv", INTER), _write(tmp_path / "items.csv", ITEMS),
                    text_columns=["title"], quality_columns=["score"])
  assert len(ds.interactions) == 2 and ds.items["score"].dtype == np.float32
  np.testing.assert_array_equal(ds.interactions["label"], [1.0, 0.0])
  pd.read_csv(tmp_path / "i.csv").to_parquet(tmp_path / "i.parquet")
  pd.read_csv(tmp_path / "items.csv").to_parquet(tmp_path / "items.parquet")
  ds2 = load_generic(str(tmp_path / "i.parquet"), str(tmp_path / "items.parquet"), text_columns=["title"],
                     quality_columns=["score"])
  pd.testing.assert_frame_equal(ds.interactions, ds2.interactions)


@pytest.mark.parametrize("inter,items,pattern", [
    ("user_id,item_id,rating\nu1,a,4\n", ITEMS, r"i\.csv: missing column\(s\) \['timestamp'\]"),
    ("user_id,item_id,timestamp,rating\nu1,a,10,4\nu2,b,yesterday,3\n", ITEMS,
     r"i\.csv: row 2, column 'timestamp': expected a number, got 'yesterday'"),
    ("", ITEMS, r"i\.csv: file is empty"),
    ("user_id,item_id,timestamp,rating\n", ITEMS, r"i\.csv: file has a header but no rows"),
    ("user_id,item_id,timestamp,rating\nu1,a,10,4\nu1,zzz,11,4\n", ITEMS,
     r"i\.csv: row 2, column 'item_id': unknown item 'zzz'"),
    (INTER, "item_id,title\na,Alpha\nb,Beta\n", r"items\.csv: missing column\(s\) \['score'\]"),
    (INTER, "item_id,title,score\na,Alpha,1\na,Again,2\n", r"items\.csv: row 2, column 'item_id': duplicate item 'a'"),
    (INTER, "item_id,title,score\na,Alpha,1\nb,Beta,high\n", r"items\.csv: row 2, column 'score'"),
    ("user_id,item_id,timestamp,label\nu1,a,10,2\n", ITEMS, r"row 1, column 'label': expected 0 or 1"),
])
def test_generic_bad_files_name_file_row_column(tmp_path, inter, items, pattern):
  with pytest.raises(DataError, match=pattern):
    load_generic(_write(tmp_path / "i.csv", inter), _write(tmp_path / "items.csv", items),
                 text_columns=["title"], quality_columns=["score"])


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="file not found"):
    load_generic(str(tmp_path / "nope.csv"), _write(tmp_path / "items.csv", ITEMS))


def test_user_histories_are_causal():
  inter = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "item_id": ["a", "b", "c", "a"],
                        "timestamp": [1, 2, 3, 1], "label": [1.0, 0.0, 1.0, 1.0]})
  h = user_histories(inter, max_len=2)
  np.testing.assert_array_equal(h, [["", ""], ["", "a"], ["", "a"], ["", ""]])
  h_all = user_histories(inter, max_len=2, positives_only=False)
  np.testing.assert_array_equal(h_all[2], ["a", "b"])


def test_item_features_gather_and_tf_dataset():
  feats = ItemFeatures(np.array(["a", "b"], dtype=object), {"sid": np.array([[1, 2], [3, 4]], np.int32)})
  out = feats.gather(np.array([["b", ""]], dtype=object))
  np.testing.assert_array_equal(out["sid"], [[[3, 4], [0, 0]]])
  with pytest.raises(DataError, match="unknown item 'zz'"):
    feats.index_of(["zz"])
  assert feats.index_of(["zz"], allow_unknown=True)[0] == -1
  ds = make_tf_dataset({"item_id": np.array(["a", "b", "a"], dtype=object), "x": np.arange(3.0)}, batch_size=2)
  batches = list(ds.as_numpy_iterator())
  assert batches[0]["item_id"].tolist() == [b"a", b"b"] and len(batches) == 2


def test_generic_text_columns_are_found_when_not_named(tmp_path):
  """A public log whose item text column is ``text`` (not ``title``) loads without --text-columns."""
  from semrec.data.generic import DataError, auto_text_columns, load_generic
  pd.DataFrame({"user_id": [0, 0, 1], "item_id": [0, 1, 1], "timestamp": [0, 1, 0]}).to_csv(tmp_path / "i.csv",
                                                                                           index=False)
  pd.DataFrame({"item_id": [0, 1], "text": ["red shoe", "blue hat"], "price": [1.0, 2.0]}).to_csv(
      tmp_path / "t.csv", index=False)
  ds = load_generic(str(tmp_path / "i.csv"), str(tmp_path / "t.csv"))
  assert tuple(ds.text_columns) == ("text",)
  assert list(ds.items["text"]) == ["red shoe", "blue hat"]
  # Named columns win, in TEXT_COLUMN_NAMES order; else every non-numeric column but the id and media paths.
  assert auto_text_columns(pd.DataFrame(columns=["item_id", "description", "title"])) == ("title", "description")
  frame = pd.DataFrame({"item_id": [1], "blurb": ["x"], "image_path": ["a.png"], "score": [3.0]})
  assert auto_text_columns(frame) == ("blurb",)
  with pytest.raises(DataError, match="no text column"):
    auto_text_columns(pd.DataFrame({"item_id": [1], "score": [3.0]}))
