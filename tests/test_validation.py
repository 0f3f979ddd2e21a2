"""Up-front validation of data (issue 14 item 4) and configs (item 6)."""
import numpy as np
import pandas as pd
import pytest

from semrec.data import DataError, DataWarning, load_generic

ITEMS = "item_id,title\na,Alpha\nb,Beta\n"


def _load(tmp_path, inter, items=ITEMS, suffix="csv"):
  ip, tp = tmp_path / f"i.{suffix}", tmp_path / "items.csv"
  if isinstance(inter, pd.DataFrame):
    inter.to_parquet(ip)
  else:
    ip.write_text(inter)
  tp.write_text(items)
  return load_generic(str(ip), str(tp), text_columns=["title"])


def test_iso_dates_become_epoch_seconds(tmp_path):
  # 2016-01-02 = 16802 days * 86400 = 1451692800; +02:00 at 03:04:05 is 01:04:05 UTC = +3845 s.
  ds = _load(tmp_path, "user_id,item_id,timestamp,label\nu,a,2016-01-02,1\nu,b,2016-01-02T03:04:05+02:00,0\n"
                       "v,a,1451692801,1\n")
  assert ds.interactions["timestamp"].tolist() == [1451692800, 1451692801, 1451692800 + 3845]
  assert ds.interactions["timestamp"].dtype == np.int64


def test_parquet_timestamp_column(tmp_path):
  df = pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "label": [1, 0],
                     "timestamp": pd.to_datetime(["1970-01-01T00:00:10", "1970-01-02T00:00:00"])})
  ds = _load(tmp_path, df, suffix="parquet")
  assert ds.interactions["timestamp"].tolist() == [10, 86400]


def test_fractional_timestamps_are_floored_with_a_warning(tmp_path):
  with pytest.warns(DataWarning, match="2 fractional timestamp"):
    ds = _load(tmp_path, "user_id,item_id,timestamp,label\nu,a,12.7,1\nu,b,-0.5,0\n")
  assert sorted(ds.interactions["timestamp"].tolist()) == [-1, 12]


@pytest.mark.parametrize("inter,pattern", [
    ("user_id,item_id,timestamp,label\nu,a,10,1\nu,b,1e30,1\n",
     r"i\.csv: row 2, column 'timestamp': timestamp '1e30' is outside the int64 range"),
    ("user_id,item_id,timestamp,label\nu,a,inf,1\n", r"row 1, column 'timestamp': expected a number, got 'inf'"),
    ("user_id,item_id,timestamp,label,like\nu,a,10,1,7\n", r"row 1, column 'like': expected 0 or 1, got '7'"),
    ("user_id,item_id,timestamp,label\nu,a,10,0\nu,b,11,0\n", r"i\.csv: no positive interaction in 2 rows \(every label"),
    ("user_id,item_id,timestamp,rating\nu,a,10,1\n", r"every rating is below positive_threshold=3\.5"),
])
def test_bad_values_are_refused(tmp_path, inter, pattern):
  with pytest.raises(DataError, match=pattern):
    _load(tmp_path, inter)


def test_duplicates_are_reported_and_the_last_row_kept(tmp_path):
  with pytest.warns(DataWarning, match=r"2 duplicate interaction row\(s\).*first at row 1"):
    ds = _load(tmp_path, "user_id,item_id,timestamp,label\nu,a,10,0\nu,a,10,0\nu,a,10,1\nu,b,10,0\n")
  # Three (u, a, 10) rows collapse to the last one (label 1); (u, b, 10) stays.
  assert ds.interactions[["item_id", "label"]].values.tolist() == [["a", 1.0], ["b", 0.0]]


def test_all_empty_text_column_is_refused(tmp_path):
  with pytest.raises(DataError, match=r"items\.csv: column 'title': every item's text is empty"):
    _load(tmp_path, "user_id,item_id,timestamp,label\nu,a,10,1\n", items="item_id,title\na,\nb, \n")


# ---------------------------------------------------------------------------------------------------
# Configs: semrec.config loads through OmegaConf's schema and validates on one path, naming the dotted field.
# ---------------------------------------------------------------------------------------------------
import dataclasses  # noqa: E402
from typing import Optional, Sequence, Tuple  # noqa: E402

from semrec.config import ConfigError, from_dict, merge, setting, to_dict, validate  # noqa: E402


@dataclasses.dataclass
class _Inner:
  codebook_size: int = setting(16, min=2)
  hidden_dims: Tuple[int, ...] = setting((8, 4), min=1)
  rate: float = 0.5
  whiten_dim: Optional[int] = setting(8, min=1)

  def cross_checks(self):
    return [("hidden_dims", f"needs at most codebook_size={self.codebook_size} layers")] if len(
        self.hidden_dims) > self.codebook_size else []


@dataclasses.dataclass
class _Outer:
  inner: _Inner = dataclasses.field(default_factory=_Inner)
  fraction: float = setting(0.8, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
  mode: str = setting("a", choices=("a", "b"))
  seed: int = 0
  flag: bool = False


@pytest.mark.parametrize("data,message", [
    ({"inner": {"codebook_size": "sixteen"}},
     "inner.codebook_size: Value 'sixteen' of type 'str' could not be converted to Integer"),
    ({"seed": "abc"}, "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ({"seed": 1.5}, "seed: Value '1.5' of type 'float' could not be converted to Integer"),
    ({"flag": "maybe"}, "flag: Value 'maybe' is not a valid bool (type str)"),
    ({"inner": {"hidden_dims": [8, "x"]}}, "inner.hidden_dims[1]: expected an integer, got 'x'"),
    ({"inner": {"hidden_dims": 8}}, "inner.hidden_dims: Invalid value assigned: int is not a"),
    ({"inner": {"nope": 1}}, "inner: unknown config key 'nope' (known: codebook_size, hidden_dims, rate, whiten_dim)"),
    ({"inner": 5}, "inner: expected a mapping of _Inner fields, got 5"),
])
def test_from_dict_names_the_field(data, message):
  with pytest.raises(ConfigError) as e:
    from_dict(_Outer, data)
  assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("data,message", [
    ({"fraction": 1.5}, "fraction: 1.5 must be < 1.0 (allowed: (0.0, 1.0))"),
    ({"fraction": 0}, "fraction: 0.0 must be > 0.0 (allowed: (0.0, 1.0))"),
    ({"mode": "nonsense"}, "mode: 'nonsense' is not one of ['a', 'b']"),
    ({"inner": {"hidden_dims": [8, -3]}}, "inner.hidden_dims[1]: -3 must be >= 1"),
    ({"inner": {"whiten_dim": 0}}, "inner.whiten_dim: 0 must be >= 1"),
    ({"inner": {"codebook_size": 1}}, "inner.codebook_size: 1 must be >= 2"),
    ({"inner": {"rate": float("nan")}}, "inner.rate: nan is not a finite number"),
    ({"inner": {"codebook_size": 2, "hidden_dims": [4, 4, 4]}}, "inner.hidden_dims: needs at most codebook_size=2"),
])
def test_validate_checks_ranges_choices_and_cross_field_rules(data, message):
  cfg = from_dict(_Outer, data)  # loading checks types only: ranges are validate's
  with pytest.raises(ConfigError) as e:
    validate(cfg)
  assert str(e.value).startswith(message), str(e.value)


def test_validate_checks_the_types_of_a_config_built_in_python():
  with pytest.raises(ConfigError, match=r"^inner\.codebook_size: Value 'x'"):
    validate(_Outer(inner=_Inner(codebook_size="x")))


def test_valid_config_round_trips_converts_and_merges_layers():
  cfg = from_dict(_Outer, {"inner": {"hidden_dims": [3, 2], "rate": 1, "whiten_dim": None}, "fraction": 0.5})
  validate(cfg)
  assert cfg.inner.hidden_dims == (3, 2) and isinstance(cfg.inner.rate, float)  # YAML list -> tuple, 1 -> 1.0
  assert cfg.inner.whiten_dim is None and cfg.inner.codebook_size == 16  # unset keys keep the defaults
  assert from_dict(_Outer, to_dict(cfg)) == cfg
  # Later layers win key by key; a list is replaced whole.
  layered = merge(_Outer, {"seed": 1, "inner": {"hidden_dims": [5], "rate": 2.0}}, {"inner": {"rate": 3.0}})
  assert (layered.seed, layered.inner.hidden_dims, layered.inner.rate) == (1, (5,), 3.0)


@dataclasses.dataclass
class _Library:
  """A library config with hints OmegaConf cannot hold (Sequence): built directly from the mapping."""
  widths: Sequence[int] = (4,)
  inner: _Inner = dataclasses.field(default_factory=_Inner)


@dataclasses.dataclass
class _Moved:
  inner: _Inner = dataclasses.field(default_factory=_Inner)
  seed: int = 0
  MOVED_KEYS = {"rate": "inner.rate"}  # a key an older file had at the top level


def test_moved_keys_of_older_files_load_at_their_new_place():
  assert from_dict(_Moved, {"rate": 2.0, "seed": 1}) == _Moved(inner=_Inner(rate=2.0), seed=1)
  assert from_dict(_Moved, {"rate": 2.0, "inner": {"rate": 3.0}}).inner.rate == 3.0  # the new place wins


def test_library_configs_outside_omegaconf_still_load_and_refuse_unknown_keys():
  cfg = from_dict(_Library, {"widths": [2, 3], "inner": {"codebook_size": 4}})
  assert cfg.widths == (2, 3) and cfg.inner == _Inner(codebook_size=4)
  with pytest.raises(ConfigError, match=r"^_Library: unknown config key\(s\) \['width'\]"):
    from_dict(_Library, {"width": [2]})


# ---------------------------------------------------------------------------------------------------
# Damaged artefacts (issue 14 item 5): the error names the file and what to do.
# ---------------------------------------------------------------------------------------------------
from semrec.atomic import CorruptArtefactError, read_json, write_json  # noqa: E402


def _truncate(path, keep=0.5):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * keep)])


def test_truncated_sid_table_is_named(tmp_path):
  from semrec.sid import SidTable
  SidTable(np.array(["a", "b"]), np.array([[0, 1], [1, 0]], np.int32), 2).save(str(tmp_path / "table"))
  _truncate(tmp_path / "table" / "table.npz")
  with pytest.raises(CorruptArtefactError, match=r"table\.npz: damaged SID table .*semrec sid train --force"):
    SidTable.load(str(tmp_path / "table"))


def test_truncated_sid_model_weights_are_named(tmp_path):
  from semrec.sid import RQVAEConfig, SidModel, train_sid_model
  x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
  model = train_sid_model(x, RQVAEConfig(mode="rqkmeans", num_levels=2, codebook_size=2, normalization="none"))
  model.save(str(tmp_path / "model"))
  _truncate(tmp_path / "model" / "weights.npz")
  with pytest.raises(CorruptArtefactError, match=r"weights\.npz: damaged SID model weights"):
    SidModel.load(str(tmp_path / "model"))


def test_truncated_embedding_shard_is_named(tmp_path):
  from semrec.encoders.store import read_shard, write_shard
  from semrec.encoders.multimodal import EncodedBatch
  path = str(tmp_path / "shard-00000-of-00001.npz")
  write_shard(path, EncodedBatch(np.array(["a"], object), np.ones((1, 3), np.float32), np.ones((1, 1), np.float32), []))
  assert read_shard(path).item_ids.tolist() == ["a"]
  _truncate(path)
  with pytest.raises(CorruptArtefactError, match=r"shard-00000-of-00001\.npz: damaged embedding shard .*"
                                                 r"semrec encode --force"):
    read_shard(path)


def test_strict_json_and_damaged_json(tmp_path):
  path = str(tmp_path / "m.json")
  write_json(path, {"auc": float("nan"), "x": [np.float32(np.inf), np.int64(3), 0.5]})
  # Strict JSON: NaN and inf are written as null, so a strict parser accepts the file.
  import json
  assert json.loads(open(path).read(), parse_constant=lambda c: pytest.fail(c)) == {"auc": None, "x": [None, 3, 0.5]}
  _truncate(path)
  with pytest.raises(CorruptArtefactError, match=r"m\.json: damaged stage record \(not valid JSON"):
    read_json(path, "stage record")


def test_quick_keeps_values_set_in_the_config_file(tmp_path, capsys):
  """Issue 14 item 6: `--quick` no longer silently overrides a codebook_size set in the file."""
  from semrec.cli import _build_config
  path = tmp_path / "c.yaml"
  path.write_text("sid:\n  codebook_size: 8\nseed: 5\n")
  cfg = _build_config(str(path), "synthetic", None, None, None, None, None, quick=True)
  assert cfg.sid.codebook_size == 8  # the file wins over the quick preset (16)
  assert cfg.sid.epochs == 2 and cfg.data.synthetic.num_items == 120  # the rest of the preset applies
  assert cfg.seed == 5 and cfg.data.type == "synthetic"
  assert "--quick keeps sid.codebook_size=8" in capsys.readouterr().err
  plain = _build_config(None, "synthetic", None, None, None, None, 9, quick=True)
  assert plain.sid.codebook_size == 16 and plain.seed == 9
