"""The bad-input catalogue (issue 14): each case runs the CLI in-process and asserts the exit code and the
first line of the message. docs/bad-input.md lists the same cases (``test_docs_list_every_case``).

Data and config cases fail in validation, before any stage (and before any model is built); artefact
cases damage one file of a tiny hand-made run directory; serving cases call real serving signatures.
Regenerate the docs table with ``python tests/test_bad_input.py`` after adding a case.
"""
import json
import os
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from semrec.cli import main

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "bad-input.md")

ITEMS = "item_id,title\na,Alpha\nb,Beta\nc,Gamma\n"
INTER = "user_id,item_id,timestamp,label\nu1,a,10,1\nu1,b,20,0\nu2,c,30,1\n"


def _generic(inter=INTER, items=ITEMS, *flags):
  """argv builder: `semrec run` on a generic dataset written to the case's folder."""
  def build(tmp):
    (tmp / "i.csv").write_text(inter)
    (tmp / "items.csv").write_text(items)
    return ["run", "--dataset", "generic", "--interactions", str(tmp / "i.csv"), "--items", str(tmp / "items.csv"),
            "--run-dir", str(tmp / "run"), *[f.format(tmp=tmp) for f in flags]]
  return build


def _config(yaml_text, *flags):
  """argv builder: `semrec run --config <file>` (MovieLens unless the file says otherwise)."""
  def build(tmp):
    (tmp / "c.yaml").write_text(yaml_text)
    return ["run", "--config", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), *flags]
  return build


def _argv(*args):
  return lambda tmp: [a.format(tmp=tmp) for a in args]


# (case id, what is wrong, argv builder, exit code, regex of the first line of the message)
DATA_CASES = [
    ("data-missing-column", "interactions without a timestamp column",
     _generic("user_id,item_id,label\nu1,a,1\n"), 1, r"Error: .*i\.csv: missing column\(s\) \['timestamp'\]"),
    ("data-timestamp-word", "a timestamp that is neither a number nor an ISO-8601 date",
     _generic("user_id,item_id,timestamp,label\nu1,a,10,1\nu2,b,yesterday,1\n"), 1,
     r"Error: .*i\.csv: row 2, column 'timestamp': expected a number, got 'yesterday'"),
    ("data-timestamp-1e30", "a timestamp outside the int64 range",
     _generic("user_id,item_id,timestamp,label\nu1,a,10,1\nu2,b,1e30,1\n"), 1,
     r"Error: .*i\.csv: row 2, column 'timestamp': timestamp '1e30' is outside the int64 range"),
    ("data-timestamp-inf", "an infinite timestamp",
     _generic("user_id,item_id,timestamp,label\nu1,a,inf,1\n"), 1,
     r"Error: .*i\.csv: row 1, column 'timestamp': expected a number, got 'inf'"),
    ("data-like-7", "`like` = 7", _generic("user_id,item_id,timestamp,label,like\nu1,a,10,1,7\n"), 1,
     r"Error: .*i\.csv: row 1, column 'like': expected 0 or 1, got '7'"),
    ("data-label-2", "`label` = 2", _generic("user_id,item_id,timestamp,label\nu1,a,10,2\n"), 1,
     r"Error: .*i\.csv: row 1, column 'label': expected 0 or 1, got '2'"),
    ("data-no-positive-label", "every label 0", _generic("user_id,item_id,timestamp,label\nu1,a,10,0\nu2,b,20,0\n"),
     1, r"Error: .*i\.csv: no positive interaction in 2 rows \(every label is 0\)"),
    ("data-no-positive-rating", "every rating below the positive threshold",
     _generic("user_id,item_id,timestamp,rating\nu1,a,10,1\nu2,b,20,3\n"), 1,
     r"Error: .*i\.csv: no positive interaction in 2 rows \(every rating is below positive_threshold=3\.5\)"),
    ("data-empty-file", "an empty interactions file", _generic(""), 1, r"Error: .*i\.csv: file is empty"),
    ("data-header-only", "a header and no rows", _generic("user_id,item_id,timestamp,label\n"), 1,
     r"Error: .*i\.csv: file has a header but no rows"),
    ("data-unknown-item", "an interaction naming an item not in the catalogue",
     _generic("user_id,item_id,timestamp,label\nu1,a,10,1\nu1,zzz,11,1\n"), 1,
     r"Error: .*i\.csv: row 2, column 'item_id': unknown item 'zzz'"),
    ("data-duplicate-item", "the same item twice in the items table",
     _generic(INTER, "item_id,title\na,Alpha\na,Again\n"), 1,
     r"Error: .*items\.csv: row 2, column 'item_id': duplicate item 'a'"),
    ("data-empty-id", "an empty user id", _generic("user_id,item_id,timestamp,label\n,a,10,1\n"), 1,
     r"Error: .*i\.csv: row 1, column 'user_id': empty id"),
    ("data-empty-text", "every item's text empty", _generic(INTER, "item_id,title\na,\nb,\nc, \n"), 1,
     r"Error: .*items\.csv: column 'title': every item's text is empty"),
    ("data-missing-text-column", "--text-columns naming a column the items table lacks",
     _generic(INTER, ITEMS, "--text-columns", "title,plot"), 1, r"Error: .*items\.csv: missing column\(s\) \['plot'\]"),
    ("data-bad-quality", "a non-numeric quality value",
     _generic(INTER, "item_id,title,score\na,A,1\nb,B,high\nc,C,2\n", "--quality-columns", "score"), 1,
     r"Error: .*items\.csv: row 2, column 'score': expected a number, got 'high'"),
    ("data-not-a-table", "a binary file given as Parquet", lambda tmp: _parquet_garbage(tmp), 1,
     r"Error: .*i\.parquet: cannot be read as a table"),
    ("data-one-timestamp", "every interaction at one instant (no train/test cutoff possible)",
     _generic("user_id,item_id,timestamp,label\nu1,a,10,1\nu2,b,10,1\nu3,c,10,1\n"), 1,
     r"Error: .*cutoff 10 leaves an empty train or test set"),
    ("data-too-few-periods", "fewer distinct times than ranking.num_periods",
     _generic("user_id,item_id,timestamp,label\n" + "".join(f"u{i},{'abc'[i % 3]},{10 + i // 40},1\n"
                                                            for i in range(120))), 1,
     r"Error: cannot cut 120 interactions into 10 non-empty periods .*ranking\.num_periods"),
    ("data-generic-without-items", "--dataset generic without --items",
     _argv("run", "--dataset", "generic"), 2, r"Error: --dataset generic needs --interactions and --items"),
]


def _parquet_garbage(tmp):
  (tmp / "i.parquet").write_bytes(b"PAR1 this is not parquet")
  (tmp / "items.csv").write_text(ITEMS)
  return ["run", "--dataset", "generic", "--interactions", str(tmp / "i.parquet"), "--items",
          str(tmp / "items.csv"), "--run-dir", str(tmp / "run")]


CONFIG_CASES = [
    ("config-codebook-string", "`codebook_size: \"sixteen\"`", _config("sid:\n  codebook_size: sixteen\n"),
     1, r"Error: .*c\.yaml: sid\.codebook_size: Value 'sixteen' of type 'str' could not be converted to Integer"),
    ("config-seed-string", "`seed: abc`", _config("seed: abc\n"), 1,
     r"Error: .*c\.yaml: seed: Value 'abc' of type 'str' could not be converted to Integer"),
    ("config-negative-cluster-k", "a negative k in `cluster_ks`",
     _config("sid:\n  cluster_ks: [64, -3]\n"), 1, r"Error: .*c\.yaml: sid\.cluster_ks\[1\]: -3 must be >= 1"),
    ("config-train-fraction", "`train_fraction: 1.5`", _config("data:\n  train_fraction: 1.5\n"), 1,
     r"Error: .*c\.yaml: data\.train_fraction: 1\.5 must be < 1\.0 \(allowed: \(0\.0, 1\.0\)\)"),
    ("config-production-mode", "`production_mode: nonsense`", _config("ranking:\n  production_mode: nonsense\n"), 1,
     r"Error: .*c\.yaml: ranking\.production_mode: 'nonsense' is not one of \["),
    ("config-unknown-key", "a misspelt key", _config("sid:\n  modle: {}\n"), 1,
     r"Error: .*c\.yaml: sid: unknown config key 'modle' \(known: cluster_ks, codebook_size, "),
    ("config-old-key", "a key of the config before issue 27 (`sid.model`)",
     _config("sid:\n  model:\n    codebook_size: 64\n"), 1, r"Error: .*c\.yaml: sid: unknown config key 'model'"),
    ("config-yaml-syntax", "invalid YAML", _config("sid: [unclosed\n"), 1, r"Error: .*c\.yaml: cannot be read as YAML"),
    ("config-not-mapping", "a YAML list instead of a mapping", _config("- a\n- b\n"), 1,
     r"Error: .*c\.yaml: expected a mapping of config sections, got list"),
    ("config-data-type", "`data.type: csv`", _config("data:\n  type: csv\n"), 1,
     r"Error: .*c\.yaml: data\.type: 'csv' is not one of \['movielens', 'synthetic', 'generic'\]"),
    ("config-section-scalar", "a section given as a number", _config("sid: 5\n"), 1,
     r"Error: .*c\.yaml: sid: expected a mapping of SidStageConfig fields, got 5"),
    ("config-zero-budget", "a zero table budget", _config("ranking:\n  budgets: [0]\n"), 1,
     r"Error: .*c\.yaml: ranking\.budgets\[0\]: 0 must be >= 1"),
    ("config-modality", "an unknown modality", _config("encoder:\n  modalities: [text, smell]\n"), 1,
     r"Error: .*c\.yaml: encoder\.modalities\[1\]: 'smell' is not one of \['text', 'image', 'audio'\]"),
    ("config-variant", "an unknown production retriever", _config("retrieval:\n  production_variant: nope\n"), 1,
     r"Error: .*c\.yaml: retrieval\.production_variant: 'nope' is not one of \["),
    ("config-index-kind", "an unknown index kind", _config("retrieval:\n  index_kind: faiss\n"), 1,
     r"Error: .*c\.yaml: retrieval\.index_kind: 'faiss' is not one of \['auto', 'scann', 'brute_force'\]"),
    ("config-one-period", "`num_periods: 1`", _config("ranking:\n  num_periods: 1\n"), 1,
     r"Error: .*c\.yaml: ranking\.num_periods: 1 must be >= 2"),
    ("config-sid-mode", "an unknown SID mode", _config("sid:\n  mode: foo\n"), 1,
     r"Error: .*c\.yaml: sid\.mode: 'foo' is not one of \['rqvae', 'rqkmeans'\]"),
    ("config-spm-budget", "an SPM table budget below L*K+1",
     _config("sid:\n  codebook_size: 64\nranking:\n  modes: [spm]\n  budgets: [100]\n"), 1,
     r"Error: .*c\.yaml: ranking\.budgets: 100 rows is too small for SPM: it needs >= L\*K\+1 = 193"),
    ("config-seed-flag", "`--seed abc`", _argv("run", "--seed", "abc"), 2, r"Error: Invalid value for '--seed'"),
    ("config-codebook-vs-catalogue", "a codebook larger than the catalogue",
     _generic(INTER, ITEMS, "--config", "{tmp}/k.yaml"), 1,
     r"Error: sid\.(model\.)?codebook_size=256 exceeds the catalogue \(3 items\)"),
]


def _case_params(cases):
  return [pytest.param(c, id=c[0]) for c in cases]


def _invoke(argv, debug=False):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return CliRunner().invoke(main, (["--debug"] if debug else []) + argv)


def _first_error_line(result) -> str:
  lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
  return lines[0] if lines else f"<no Error: line; stderr={result.stderr[-500:]!r}; exc={result.exception!r}>"


@pytest.mark.parametrize("case", _case_params(DATA_CASES + CONFIG_CASES))
def test_bad_data_and_config_fail_before_any_stage(case, tmp_path):
  name, _, build, code, pattern = case
  (tmp_path / "k.yaml").write_text("sid:\n  codebook_size: 256\nranking:\n  num_periods: 2\n")
  res = _invoke(build(tmp_path))
  assert res.exit_code == code, (res.exit_code, res.output)
  assert re.match(pattern, _first_error_line(res)), _first_error_line(res)
  assert "Traceback" not in res.output
  assert not os.path.exists(tmp_path / "run" / "encode" / "_DONE.json")  # no stage ran


# ---------------------------------------------------------------------------------------------------
# Damaged artefacts: a tiny hand-made run directory (3 items, a 2-level RQ-KMeans with K=2), one file
# damaged per case; the command that reads it must name the file and the fix.
# ---------------------------------------------------------------------------------------------------
RUN_YAML = """data:
  type: generic
  interactions: {tmp}/i.csv
  items: {tmp}/items.csv
sid: {{mode: rqkmeans, num_levels: 2, codebook_size: 2, cluster_ks: [2]}}
ranking:
  num_periods: 2
"""


def _make_run(tmp):
  """encode + sid finished (as `semrec run` leaves them) for the generic INTER/ITEMS data."""
  from semrec.atomic import write_json
  from semrec.config import load_yaml
  from semrec.encoders.multimodal import EncodedBatch
  from semrec.encoders.store import _content_hash, shard_name, write_shard
  from semrec.pipeline import Run, RunConfig, write_config
  from semrec.sid import RQVAEConfig, train_sid_model
  (tmp / "i.csv").write_text(INTER)
  (tmp / "items.csv").write_text(ITEMS)
  (tmp / "run.yaml").write_text(RUN_YAML.format(tmp=tmp))
  run = Run(load_yaml(RunConfig, str(tmp / "run.yaml")), str(tmp / "run"))
  write_config(run)
  ids = np.array(["a", "b", "c"], object)
  x = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
  store = run.stage_dir("encode") + "/store"
  os.makedirs(store)
  shard = shard_name(0, 1)
  write_shard(os.path.join(store, shard), EncodedBatch(ids, x, np.ones((3, 1), np.float32), []))
  write_json(os.path.join(store, "manifest.json"), {
      "format": "semrec.embedding_store/1", "complete": True, "encoder": {"modality_order": ["text"], "dim": 4},
      "shards": [{"file": shard, "num_items": 3, "content_sha256": _content_hash(ids, x, np.ones((3, 1)))}]})
  run.mark_done("encode", {"num_items": 3, "dim": 4})
  model = train_sid_model(x, RQVAEConfig(mode="rqkmeans", num_levels=2, codebook_size=2, normalization="none"),
                          item_ids=ids)
  model.save(run.path("sid", "model"))
  model.table(x, ids, suffix=True).save(run.path("sid", "table"))
  run.mark_done("sid", {"mode": "rqkmeans", "num_levels": 2, "codebook_size": 2, "utilisation": [1.0, 1.0],
                        "unique_ratio": 1.0, "prefix_cosine": [0.0, 0.0, 1.0]})
  return run


def _damage(relpath, how="truncate"):
  def do(run_dir):
    path = os.path.join(run_dir, relpath)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2] if how == "truncate" else b"\x00" * len(data))
  return do


_RUN_ARGS = ["--config", "{tmp}/run.yaml", "--run-dir", "{tmp}/run"]
ARTEFACT_CASES = [
    ("artefact-shard", "a truncated embedding shard", _damage("encode/store/shard-00000-of-00001.npz"),
     ["train-ranker", *_RUN_ARGS], 1,
     r"Error: .*shard-00000-of-00001\.npz: damaged embedding shard .*; run `semrec encode --force`"),
    ("artefact-store-manifest", "a truncated embedding-store manifest", _damage("encode/store/manifest.json"),
     ["train-ranker", *_RUN_ARGS], 1, r"Error: .*store/manifest\.json: damaged embedding store manifest"),
    ("artefact-sid-table", "a truncated SID table", _damage("sid/table/table.npz"), ["train-ranker", *_RUN_ARGS], 1,
     r"Error: .*table\.npz: damaged SID table .*; run `semrec sid train --force`"),
    ("artefact-sid-weights", "a zeroed sid/model/weights.npz", _damage("sid/model/weights.npz", "zero"),
     ["export", *_RUN_ARGS], 1, r"Error: .*weights\.npz: damaged SID model weights .*semrec sid train --force"),
    ("artefact-done-json-run", "a truncated _DONE.json, then `semrec run`", _damage("sid/_DONE.json"),
     ["run", *_RUN_ARGS], 1, r"Error: .*sid/_DONE\.json: damaged stage record .*--force"),
    ("artefact-done-json-evaluate", "a truncated _DONE.json, then `semrec evaluate`", _damage("sid/_DONE.json"),
     ["evaluate", "--run-dir", "{tmp}/run"], 1, r"Error: .*sid/_DONE\.json: damaged stage record"),
]


@pytest.mark.parametrize("case", _case_params(ARTEFACT_CASES))
def test_damaged_artefacts_are_named(case, tmp_path):
  name, _, damage, argv, code, pattern = case
  _make_run(tmp_path)
  damage(str(tmp_path / "run"))
  res = _invoke([a.format(tmp=tmp_path) for a in argv])
  assert res.exit_code == code, (res.exit_code, res.output)
  assert re.match(pattern, _first_error_line(res)), _first_error_line(res)
  assert "Traceback" not in res.output


def test_force_recovers_from_a_damaged_done_record(tmp_path):
  """Issue item 5: `--force` recomputes a stage whose _DONE.json is damaged, instead of failing on it."""
  run = _make_run(tmp_path)
  _damage("sid/_DONE.json")(run.run_dir)
  argv = ["sid", "train", "--force", "--config", str(tmp_path / "run.yaml"), "--run-dir", run.run_dir]
  res = _invoke(argv)
  assert res.exit_code == 0, res.output
  record = json.load(open(run.path("sid", "_DONE.json")))
  assert record["num_levels"] == 2 and record["codebook_size"] == 2


def test_debug_flag_shows_the_traceback(tmp_path):
  run = _make_run(tmp_path)
  _damage("sid/_DONE.json")(run.run_dir)
  argv = ["evaluate", "--run-dir", run.run_dir]
  assert "Traceback" not in _invoke(argv).output
  res = _invoke(argv, debug=True)
  assert res.exit_code == 1 and "Traceback" in res.output and "CorruptArtefactError" in res.output



# ---------------------------------------------------------------------------------------------------
# Exports and serving: `semrec verify-export` on damaged export folders, and serving signatures fed
# malformed requests (the message names the input).
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
  """A base directory with one real export (a SID assigner, content [B, 4] -> sid [B, 2])."""
  from semrec.export import export_sid_assigner
  from semrec.sid import SidAssigner
  base = tmp_path_factory.mktemp("exports") / "models"
  assigner = SidAssigner(input_dim=4, num_levels=2, codebook_size=2, name="sid_assigner")
  export_sid_assigner(str(base), assigner, np.eye(4, dtype=np.float32))
  return base


def _copy_export(export_base, tmp):
  import shutil
  dst = tmp / "models"
  shutil.copytree(export_base, dst)
  return dst


def _staging(base):
  os.makedirs(base / "sid_assigner" / ".staging-1234")


def _truncate_pb(base):
  _damage("sid_assigner/1/saved_model.pb")(str(base))


EXPORT_CASES = [
    ("export-empty-dir", "verify-export on an empty directory", None, "empty", 1,
     r"Error: verify-export: .*: no model directory \(<name>/<version>/\) to verify"),
    ("export-missing-dir", "verify-export on a path that does not exist", None, "missing", 2,
     r"Error: Invalid value for 'EXPORT_DIR'"),
    ("export-staging-leftover", "a leftover .staging-* folder after a kill", _staging, "copy", 1,
     r"Error: verify-export: 0 error\(s\), 1 warning\(s\) in .*: sid_assigner: leftover \.staging-1234/"),
    ("export-truncated-pb", "a truncated saved_model.pb", _truncate_pb, "copy", 1,
     r"Error: verify-export: 1 error\(s\), .*sid_assigner v1: .*saved_model\.pb"),
    ("export-version-dir", "a version directory instead of the base", None, "version", 1,
     r"Error: verify-export: .* is a SavedModel version directory"),
]


@pytest.mark.parametrize("case", _case_params(EXPORT_CASES))
def test_verify_export_names_the_problem(case, tmp_path, export_base):
  name, _, damage, where, code, pattern = case
  base = {"empty": tmp_path, "missing": tmp_path / "nope"}.get(where)
  if where in ("copy", "version"):
    base = _copy_export(export_base, tmp_path)
    if damage:
      damage(base)
    if where == "version":
      base = base / "sid_assigner" / "1"
  res = _invoke(["verify-export", "--structure-only", str(base)])
  assert res.exit_code == code, (res.exit_code, res.output)
  assert re.match(pattern, _first_error_line(res)), _first_error_line(res)


def test_verify_export_relative_path_loads_in_fresh_process(tmp_path, export_base, monkeypatch):
  """Issue item 2: a relative EXPORT_DIR is resolved before the child processes (other cwd) start."""
  base = _copy_export(export_base, tmp_path)
  monkeypatch.chdir(tmp_path)
  res = _invoke(["verify-export", "--no-saved-model-cli", os.path.relpath(base, tmp_path)])
  assert res.exit_code == 0, res.output
  assert "| sid_assigner | 1 |" in res.output and "| ok |" in res.output


def _ranker_module():
  from semrec.ranking import Ranker, RankerConfig
  from semrec.ranking.serving import RankerServingModule
  from semrec.sid import ItemRepresentationConfig
  rep = ItemRepresentationConfig(modes=("unigram",), embedding_dim=4, num_levels=2, codebook_size=4)
  model = Ranker(RankerConfig(item_representation=rep, history_length=2, hidden_units=(4,), num_cross_layers=0))
  return RankerServingModule(model, 2, 4), model.config.context_dim


def _ranker_request(c):
  return {"candidate_item_id": np.array(["a", "b", "c"]), "candidate_sid": np.zeros((3, 2), np.int32),
          "last_item_id": np.array(["a"]), "last_sid": np.zeros((1, 2), np.int32),
          "history_item_id": np.array([["a", "b"]]), "history_sid": np.zeros((1, 2, 2), np.int32),
          "context": np.zeros((1, c), np.float32)}


SERVING_CASES = [
    ("serve-ranker-sid-batch", "candidate_sid rows != candidate_item_id rows",
     {"candidate_sid": np.zeros((5, 2), np.int32)}, r"candidate_sid: leading shape must equal the shape of "
                                                     r"candidate_item_id"),
    ("serve-ranker-sid-levels", "3 SID levels for an L=2 model", {"candidate_sid": np.zeros((3, 3), np.int32)},
     r"candidate_sid: each item needs L=2 SID codes"),
    ("serve-ranker-code-range", "a code >= K", {"history_sid": np.full((1, 2, 2), 4, np.int32)},
     r"history_sid: codes must be in \[0, 4\)"),
    ("serve-ranker-user-batch", "2 user rows for 3 candidates",
     {"last_item_id": np.array(["a", "b"]), "last_sid": np.zeros((2, 2), np.int32)},
     r"last_item_id: batch size must be 1 or the number of candidates"),
    ("serve-ranker-context-width", "a context one column short", "context-short", r"context: width must be C="),
    ("serve-ranker-history-shape", "history codes for 1 item, ids for 2", {"history_sid": np.zeros((1, 1, 2), np.int32)},
     r"history_sid: leading shape must equal the shape of history_item_id"),
]


@pytest.mark.parametrize("case", _case_params(SERVING_CASES))
def test_ranker_signature_names_the_input(case):
  import tensorflow as tf
  name, _, change, pattern = case
  module, c = _ranker_module()
  request = _ranker_request(c)
  request.update({"context": np.zeros((1, c - 1), np.float32)} if change == "context-short" else change)
  with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
    module.serve({k: tf.constant(v) for k, v in request.items()})


def test_every_input_batch_is_checked_against_the_first():
  """Issue item 7: [4] vs [6] inputs fail naming the input, not with TF's 'Incompatible shapes: [4] vs. [6]'."""
  import tensorflow as tf
  from semrec.export.serving_module import ServingModule
  module = ServingModule(lambda f: tf.cast(f["user"], tf.float32)[:, None] + f["history"],
                         {"user": tf.TensorSpec([None], tf.int32), "history": tf.TensorSpec([None, 3], tf.float32)})
  ok = module.serve({"user": tf.constant([1, 2]), "history": tf.zeros([2, 3])})
  assert ok["output_0"].shape == (2, 3)
  with pytest.raises(tf.errors.InvalidArgumentError, match="history: batch size \\(dimension 0\\) must equal that "
                                                           "of user"):
    module.serve({"user": tf.constant([1, 2, 3, 4]), "history": tf.zeros([6, 3])})


def test_sid_assigner_rejects_nan_and_wrong_width(export_base):
  import tensorflow as tf
  served = tf.saved_model.load(str(export_base / "sid_assigner" / "1")).signatures["serving_default"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="content: NaN/inf values"):
    served(content=tf.constant(np.full((2, 4), np.nan, np.float32)))
  with pytest.raises(tf.errors.InvalidArgumentError, match="content: dimension 1 must be 4"):
    served(content=tf.constant(np.zeros((2, 5), np.float32)))


# ---------------------------------------------------------------------------------------------------
# The docs table (docs/bad-input.md) lists every case.
# ---------------------------------------------------------------------------------------------------
ALL_CASES = ([(c[0], c[1], c[3], c[4]) for c in DATA_CASES + CONFIG_CASES] +
             [(c[0], c[1], c[4], c[5]) for c in ARTEFACT_CASES + EXPORT_CASES] +
             [(c[0], c[1], "InvalidArgumentError", c[3]) for c in SERVING_CASES])


def test_catalogue_has_at_least_40_cases_and_docs_list_them():
  assert len(ALL_CASES) >= 40
  text = open(DOCS).read()
  missing = [c[0] for c in ALL_CASES if f"`{c[0]}`" not in text]
  assert not missing, f"docs/bad-input.md lacks {missing}: regenerate with `python tests/test_bad_input.py`"


def markdown_table() -> str:
  rows = ["| case | input | exit code | first line of the message (regex) |", "| --- | --- | --- | --- |"]
  for name, what, code, pattern in ALL_CASES:
    rows.append(f"| `{name}` | {what} | {code} | `{pattern.replace('|', '&#124;')}` |")
  return "\n".join(rows) + "\n"


if __name__ == "__main__":
  print(markdown_table())


# ---------------------------------------------------------------------------------------------------
# Issue 14, item 1: a changed config recomputes exactly what its section feeds (docs/config.md's table),
# and a rerun never deletes an exported model version: recomputed models are added as new versions.
# The stage functions below stand in for training (the orchestration under test is the real one:
# run_stages, STAGES' sections / prerequisites / keep rules, the export layout's versioning).
# ---------------------------------------------------------------------------------------------------
EXPORTS = {"retrieval": ("candidate_tower", "query_tower", "retrieval_brute_force", "retrieval_scann"),
           "index": ("scann_index",), "ranking": ("ranker",), "export": ("sid_assigner",)}
PIPELINE = ("encode", "sid", "retrieval", "index", "ranking", "export")


def _exporting_registry(calls):
  from semrec.export import serving_layout as sl
  from semrec.pipeline import export_dir

  def make(stage):
    def fn(run):
      calls.append(stage)
      paths = {}
      for name in EXPORTS.get(stage, ()):
        _, path = sl.next_version_dir(export_dir(run), name)
        os.makedirs(path)
        open(os.path.join(path, "saved_model.pb"), "w").close()
        paths[name] = path
      first = next(iter(paths.values()), None)
      return {"retrieval": {"production": {"exports": paths}}, "ranking": {"production": {"export": first}},
              "index": {"searcher_export": first}, "export": {"sid_assigner": first}}.get(stage, {})
    return fn
  return {s: make(s) for s in PIPELINE}


def _versions(run_dir):
  base = os.path.join(run_dir, "export", "models")
  return {(n, int(v)) for n in os.listdir(base) for v in os.listdir(os.path.join(base, n)) if v.isdigit()}


@pytest.mark.parametrize("section,change,recomputed", [
    ("ranking", {"production_mode": "unigram"}, ["ranking"]),
    ("retrieval", {"top_k": 7}, ["retrieval", "index"]),
    ("sid", {"cluster_ks": (4,)}, ["sid", "retrieval", "index", "ranking", "export"]),
    ("export", {"base_path_prefix": "/models"}, []),  # only models.config (written by verify) changes
    ("seed", 3, list(PIPELINE)),
])
def test_changed_section_recomputes_what_it_feeds_and_keeps_every_export(tmp_path, section, change, recomputed):
  import dataclasses
  from semrec.pipeline import Run, RunConfig, run_stages
  calls = []
  registry = _exporting_registry(calls)
  cfg = RunConfig()
  run_stages(Run(cfg, str(tmp_path)), PIPELINE, registry, log=lambda m: None)
  before = _versions(tmp_path)
  assert len(before) == 7 and calls == list(PIPELINE)
  calls.clear()
  new = dataclasses.replace(cfg, **{section: change if section == "seed" else
                                    dataclasses.replace(getattr(cfg, section), **change)})
  run_stages(Run(new, str(tmp_path)), PIPELINE, registry, log=lambda m: None)
  assert calls == recomputed
  after = _versions(tmp_path)
  assert before <= after  # nothing a server could be serving disappeared
  added = {n for n, v in after - before}
  assert added == {n for s in recomputed for n in EXPORTS.get(s, ())}
  assert all(v == 2 for _, v in after - before)  # a recomputed model is a new version beside version 1


def test_verify_rechecks_the_files_it_reported(tmp_path, export_base):
  """Issue 14, item 7: a deleted export folder is not reported as verified from the cached result."""
  import shutil
  from semrec.pipeline import STAGES, Run, RunConfig
  from semrec.pipeline.stages.verify import _missing_exports
  run = Run(RunConfig(), str(tmp_path))
  shutil.copytree(export_base, run.path("export", "models"))
  run.mark_done("export", {"sid_assigner": run.path("export", "models", "sid_assigner", "1")})
  run.mark_done("verify", {"ok": True, "models": [{"name": "sid_assigner", "version": 1, "ok": True}]})
  assert STAGES.recheck(run, "verify") is None and _missing_exports(run) == []
  shutil.rmtree(run.path("export", "models", "sid_assigner"))
  assert STAGES.recheck(run, "verify") == ("the exports changed since they were verified (sid_assigner v1 missing "
                                           "or altered)")
  assert _missing_exports(run)[0].startswith("sid_assigner/1 (exported by the export stage) is missing from ")


@pytest.mark.parametrize("values,text", [
    ([0.434, 0.467, 0.393], "0.434 < 0.467 > 0.393"),  # the case: not a rising chain
    ([0.1, 0.2, 0.2], "0.100 < 0.200 = 0.200"),
    ([0.3, None, float("nan"), 0.5], "0.300 , n/a , 0.500"),  # None (no pair) left out, NaN shown as n/a
])
def test_headline_prints_the_true_relation(values, text):
  from semrec.pipeline.report import relation_chain
  assert relation_chain(values) == text
