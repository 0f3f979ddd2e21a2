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


def _sweep(inter, items=ITEMS):
  """argv builder: `semrec experiment ranking` (the AUC sweep, the one stage that cuts time periods)."""
  build = _generic(inter, items)
  return lambda tmp: ["experiment", "ranking", *build(tmp)[1:]]


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
    ("data-too-few-periods", "fewer distinct times than ranking.num_periods (the AUC sweep, labelled data)",
     _sweep("user_id,item_id,timestamp,label\n" + "".join(f"u{i},{'abc'[i % 3]},{10 + i // 40},{i % 2}\n"
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
     r"Error: .*c\.yaml: sid: unknown config key 'modle' \(known: batch_size, cluster_ks, codebook_size, "),
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
    ("retrieval", {"top_k": 7}, ["retrieval", "index", "ranking"]),  # the cascade ranks retrieval's candidates
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


# ---------------------------------------------------------------------------------------------------
# Issue 26 (hostile probe, round 2): items 1-4 and 8-11. docs/bad-input.md, section "Issue 26", lists each
# case with its test. Item 1 (`semrec batch encode` crashed on every call) is tests/test_cli_smoke.py, which
# runs every command and subcommand.
# ---------------------------------------------------------------------------------------------------
SMALL_YAML = "sid:\n  mode: rqkmeans\n  num_levels: 2\n  codebook_size: 2\n  cluster_ks: [2]\nranking:\n  num_periods: 2\n"


def _write_log(tmp, rows, num_items, labels=None):
  """Generic files: rows [(user, item index, timestamp)], items i0..i{num_items-1} with two-word titles."""
  head = "user_id,item_id,timestamp" + (",label" if labels is not None else "")
  lines = [f"{u},i{i},{t}" + (f",{labels[r]}" if labels is not None else "") for r, (u, i, t) in enumerate(rows)]
  (tmp / "i.csv").write_text("\n".join([head] + lines) + "\n")
  words = ("red", "green", "blue", "fast", "slow", "old", "new")
  (tmp / "items.csv").write_text("item_id,title\n" + "".join(f"i{i},{words[i % 7]} {words[(3 * i + 1) % 7]} item\n"
                                                              for i in range(num_items)))
  (tmp / "k.yaml").write_text(SMALL_YAML)
  return ["--dataset", "generic", "--interactions", str(tmp / "i.csv"), "--items", str(tmp / "items.csv"),
          "--config", str(tmp / "k.yaml"), "--run-dir", str(tmp / "run")]


@pytest.mark.parametrize("split,pattern", [
    ("leave_one_out", r"Error: dataset .*: split 'leave_one_out' leaves no validation and no test queries: no user "
                      r"has the 3 positive interactions it needs \(train, validation, test\): 300 users, at most 1 "
                      r"positive\(s\) per user"),
    ("cold_items", r"Error: dataset .*: split 'cold_items' leaves no validation and no test queries: no user with a "
                   r"positive among the remaining \(training\) items also interacted positively with the held-out "
                   r"items"),
])
def test_split_with_no_evaluable_user_fails_before_encode(split, pattern, tmp_path):
  """Item 2: 300 users with one interaction each: no query can be built; one Error line naming why, before any
  stage (it was `cannot reshape array of size 0 into shape (0,newaxis)` after encode and sid)."""
  argv = ["run", *_write_log(tmp_path, [(f"u{u}", u % 50, u) for u in range(300)], 50), "--split", split]
  res = _invoke(argv)
  assert res.exit_code == 1, res.output
  assert re.match(pattern, _first_error_line(res)), _first_error_line(res)
  assert "reshape" not in res.output and not os.path.exists(tmp_path / "run" / "encode")


def _positional_run(tmp, labelled: bool):
  """A Run on a positional-timestamp log (the usual public sequential form): 300 users with 3-6 items each at
  timestamps 0, 1, 2, ... (6 distinct timestamps, so 10 equally-filled time periods are impossible)."""
  from semrec.config import load_yaml
  from semrec.pipeline import Run, RunConfig
  rng = np.random.default_rng(0)
  rows = [(f"u{u}", int(i), t) for u in range(300) for t, i in enumerate(rng.choice(60, rng.integers(3, 7),
                                                                                     replace=False))]
  labels = [int(r % 4 != 0) for r in range(len(rows))] if labelled else None
  _write_log(tmp, rows, 60, labels)
  (tmp / "c.yaml").write_text(f"data:\n  type: generic\n  interactions: {tmp}/i.csv\n  items: {tmp}/items.csv\n"
                              "  split: leave_one_out\nsid:\n  codebook_size: 8\n")
  return Run(load_yaml(RunConfig, str(tmp / "c.yaml")), str(tmp / "run"))


def test_positional_timestamps_pass_preflight_on_implicit_data(tmp_path):
  """Item 3: `semrec run --split leave_one_out` on an implicit log with positional timestamps is not blocked by
  the ranking periods check (no stage cuts periods on implicit data); the AUC sweep on the same log with labels
  still is, before any stage."""
  from semrec.data import DataError
  from semrec.pipeline import STAGE_ORDER, STAGES, preflight
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  implicit = _positional_run(tmp_path / "a", labelled=False)
  assert implicit.config.ranking.num_periods == 10 and implicit.dataset.interactions["timestamp"].nunique() == 6
  preflight(implicit, STAGE_ORDER)  # no error: the run goes ahead
  labelled = _positional_run(tmp_path / "b", labelled=True)
  sweep = "ranking-sweep" if "ranking-sweep" in STAGES.registry else "ranking"
  with pytest.raises(DataError, match=r"cannot cut \d+ interactions into 10 non-empty periods \(6 distinct "
                                      r"timestamps\): lower ranking\.num_periods"):
    preflight(labelled, ["encode", "sid", sweep])
  preflight(labelled, [s for s in STAGE_ORDER if s != sweep])  # the stages of `semrec run` cut no periods


class _FakeEncoder:
  """A deterministic stand-in for MultimodalEncoder (store tests without a model): item i -> [i, i^2] floats."""
  info = {"name": "fake", "dim": 2, "modality_order": ["text"]}

  def __init__(self):
    self.calls = 0

  def encode(self, contents):
    from semrec.encoders.multimodal import EncodedBatch
    self.calls += 1
    x = np.array([[float(c.item_id[1:]), float(c.item_id[1:]) ** 2] for c in contents], np.float32)
    return EncodedBatch(np.array([c.item_id for c in contents], object), x, np.ones((len(x), 1), np.float32), [])


def _tamper(shard_path):
  """Edits a shard as a user would with numpy: every array kept, the embeddings changed (finite)."""
  with np.load(shard_path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["embeddings"] = arrays["embeddings"] + 0.5
  np.savez(shard_path, **arrays)


def test_encode_resume_and_force_never_rebless_a_tampered_shard(tmp_path):
  """Item 4 (library): an edited shard is re-encoded on resume and on overwrite, never re-hashed as valid."""
  from semrec.data import RecDataset
  from semrec.encoders import EmbeddingStore, encode_corpus
  import pandas as pd
  ids = [f"i{i}" for i in range(6)]
  ds = RecDataset("t", pd.DataFrame({"user_id": ["u"] * 2, "item_id": ["i0", "i1"], "timestamp": [1, 2],
                                     "label": np.float32(1)}), pd.DataFrame({"item_id": ids, "title": ids}))
  enc, store = _FakeEncoder(), str(tmp_path / "store")
  encode_corpus(ds, enc, store, shard_size=3, progress=False)
  good = EmbeddingStore(store).load()
  shard = os.path.join(store, "shard-00000-of-00002.npz")
  for overwrite in (False, True):
    _tamper(shard)
    with pytest.raises(ValueError, match="do not match the manifest hash"):
      EmbeddingStore(store).load()
    done = []
    encode_corpus(ds, enc, store, shard_size=3, progress=False, overwrite=overwrite,
                  on_shard_done=lambda i, computed: done.append(computed))
    # Resume keeps the untouched shard 1 and re-encodes the edited shard 0; overwrite re-encodes both.
    assert done == ([True, True] if overwrite else [True, False])
    again = EmbeddingStore(store).load()  # the manifest hashes the recomputed content, not the edit
    np.testing.assert_array_equal(again.embeddings, good.embeddings)
    assert again.manifest["shards"] == good.manifest["shards"]


def test_encode_force_recomputes_from_the_items(tmp_path):
  """Item 4 (CLI): `semrec encode --force` after a shard was edited re-encodes it (the manifest keeps the hash
  of the true content); the forced stage's folder is cleared first (`run_stages(force=True)`)."""
  argv = ["encode", *_write_log(tmp_path, [("u1", 0, 10), ("u1", 1, 20), ("u2", 2, 30)], 3)]
  assert _invoke(argv).exit_code == 0
  store = tmp_path / "run" / "encode" / "store"
  manifest = json.load(open(store / "manifest.json"))
  with np.load(store / "shard-00000-of-00001.npz") as z:
    emb = z["embeddings"].copy()
  open(tmp_path / "run" / "encode" / "leftover.txt", "w").close()
  _tamper(str(store / "shard-00000-of-00001.npz"))
  res = _invoke(argv + ["--force"])
  assert res.exit_code == 0, res.output
  assert json.load(open(store / "manifest.json"))["shards"] == manifest["shards"]
  with np.load(store / "shard-00000-of-00001.npz") as z:
    np.testing.assert_allclose(z["embeddings"], emb, atol=1e-6)
  assert not os.path.exists(tmp_path / "run" / "encode" / "leftover.txt")


def test_production_variant_outside_the_sweep_fails_before_any_stage(tmp_path):
  """Item 9: a valid variant the comparison does not train is refused with the config, not after it."""
  argv = ["run", *_write_log(tmp_path, [("u1", 0, 10), ("u1", 1, 20), ("u2", 2, 30)], 3)]
  (tmp_path / "k.yaml").write_text(SMALL_YAML + "retrieval:\n  variants: [hashed_id]\n  production_variant: content\n")
  res = _invoke(argv)
  assert res.exit_code == 1
  assert re.match(r"Error: .*retrieval\.production_variant: 'content' is not among .*\['hashed_id'\]",
                  _first_error_line(res)), _first_error_line(res)
  assert not os.path.exists(tmp_path / "run" / "encode")


def test_preflight_refuses_an_untrained_production_variant(tmp_path):
  """Item 9, the preflight layer: a config built in code (not validated from a file) is checked too."""
  import dataclasses
  from semrec.config import ConfigError
  from semrec.pipeline import preflight
  run = _positional_run(tmp_path, labelled=False)
  run.config.retrieval = dataclasses.replace(run.config.retrieval, variants=("hashed_id",), production_variant="content")
  with pytest.raises(ConfigError, match=r"retrieval\.production_variant: 'content' is not among the variants"):
    preflight(run, ["retrieval"])


def test_cold_items_tie_is_warned(tmp_path):
  """Item 9: cold_items on a tiny catalogue leaves fewer candidates than the selection k: every model scores
  Recall@10 = 1.0 and the served variant would be a silent tie; preflight warns, naming the tie."""
  from semrec.config import load_yaml
  from semrec.data import DataWarning
  from semrec.pipeline import Run, RunConfig, preflight
  rows = [(f"u{u}", i, 10 * u + t) for u in range(8) for t, i in enumerate(((u + j) % 12 for j in range(6)))]
  _write_log(tmp_path, rows, 12)
  (tmp_path / "c.yaml").write_text(f"data:\n  type: generic\n  interactions: {tmp_path}/i.csv\n  items: "
                                   f"{tmp_path}/items.csv\n  split: cold_items\n  cold_fraction: 0.5\n"
                                   "sid:\n  codebook_size: 4\n")
  run = Run(load_yaml(RunConfig, str(tmp_path / "c.yaml")), str(tmp_path / "run"))
  with pytest.warns(DataWarning, match=r"split 'cold_items': the valid stage ranks only 3 and test stage ranks only "
                                       r"3 candidate items, not more than the selection cut-off k=10: every model "
                                       r"scores Recall@10 = 1\.0 there, so the served retriever is a tie"):
    preflight(run, ["retrieval"])


def test_tied_served_retriever_is_a_logged_warning(caplog):
  """Item 9, at the choice itself: variants tied for the best validation score are named in a warning."""
  import logging
  from semrec.towers import select_served
  with caplog.at_level(logging.WARNING, logger="semrec.towers.comparison"):
    served = select_served({"hashed_id": {"selection_score": 1.0}, "content": {"selection_score": 1.0},
                            "sid_spm_hashed": {"selection_score": 0.5}})
  assert served["variant"] == "hashed_id" and served["tied"] == ["hashed_id", "content"]
  assert re.search(r"served retriever: hashed_id, content tie for the best validation selection score \(1\.0000\); "
                   r"'hashed_id' is served by variant order, not by quality", caplog.text), caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="semrec.towers.comparison"):
    assert "tied" not in select_served({"a": {"selection_score": 0.2}, "b": {"selection_score": 0.1}})
  assert caplog.text == ""


def test_one_item_catalogue_gets_an_actionable_error(tmp_path):
  """Item 9: a 1-item catalogue is told to add items (it was told `set codebook_size <= 1`, which the config
  refuses)."""
  res = _invoke(["run", *_write_log(tmp_path, [("u1", 0, 10), ("u2", 0, 20), ("u3", 0, 30)], 1)])
  assert res.exit_code == 1
  assert re.match(r"Error: dataset .*: the catalogue has 1 item; SIDs, cluster IDs and retrieval need at least 2 "
                  r"items .*add items to the items table", _first_error_line(res)), _first_error_line(res)
  assert "<= 1" not in res.output


def test_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path):
  """Item 10: a run directory is locked; a second command on it gets one Error line naming the holder's pid.
  The lock is released when a command ends (here with an error) and a dead holder's lock is taken over."""
  import subprocess
  import sys
  from semrec.pipeline.run import LOCK_FILE, RunLock
  argv = ["run", *_write_log(tmp_path, [("u1", 0, 10), ("u2", 0, 20), ("u3", 0, 30)], 1)]
  run_dir = tmp_path / "run"
  with RunLock(str(run_dir)):
    res = _invoke(argv)
    assert res.exit_code == 1
    assert re.match(rf"Error: run directory .*run is in use by another semrec process \(pid {os.getpid()}, lock "
                    rf".*{re.escape(LOCK_FILE)}\): wait for it to finish or use another --run-dir",
                    _first_error_line(res)), _first_error_line(res)
  res = _invoke(argv)  # free again: this command fails later, on the 1-item catalogue, and releases the lock
  assert "the catalogue has 1 item" in _first_error_line(res)
  with RunLock(str(run_dir)):  # released by the failed command
    pass
  # A holder killed with SIGKILL (no cleanup) leaves its pid in the file; the kernel dropped its flock.
  code = ("import sys, os, signal; from semrec.pipeline.run import RunLock; RunLock(sys.argv[1]).acquire(); "
          "print(os.getpid(), flush=True); os.kill(os.getpid(), signal.SIGKILL)")
  proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=120)
  dead = int(proc.stdout.split()[0])
  assert open(run_dir / LOCK_FILE).read().strip() == str(dead)
  with RunLock(str(run_dir)):  # taken over
    assert open(run_dir / LOCK_FILE).read().strip() == str(os.getpid())


def _no_temp_files(folder):
  return [f for _, dirs, files in os.walk(folder) for f in files + dirs if ".tmp" in f]


@pytest.mark.parametrize("code", ["ENOSPC", "EIO"])
def test_disk_errors_name_the_file_and_leave_nothing_half_written(code, tmp_path, monkeypatch):
  """Item 10: an injected ENOSPC / EIO in the atomic writers is one ArtefactWriteError naming the file; the
  previous version is untouched and no temporary file is left."""
  import errno
  from semrec import atomic
  err = getattr(errno, code)

  def fail(*a, **k):
    raise OSError(err, os.strerror(err))

  path = str(tmp_path / "out" / "m.json")
  atomic.write_json(path, {"v": 1})
  with monkeypatch.context() as m:
    m.setattr(os, "fsync", fail)  # the write reaches the disk at fsync
    with pytest.raises(atomic.ArtefactWriteError, match=rf"{re.escape(path)}: cannot write \({code}: "):
      atomic.write_json(path, {"v": 2})
  assert json.load(open(path)) == {"v": 1}
  with monkeypatch.context() as m:  # np.savez fails part-way, after writing some bytes
    def partial(file, **arrays):
      open(file, "wb").write(b"PK\x03\x04 half")
      fail()
    m.setattr(np, "savez", partial)
    with pytest.raises(atomic.ArtefactWriteError, match=re.escape(str(tmp_path / "out" / "a.npz"))):
      atomic.save_npz(str(tmp_path / "out" / "a.npz"), x=np.zeros(3))
  assert not os.path.exists(tmp_path / "out" / "a.npz")
  with pytest.raises(atomic.ArtefactWriteError, match=re.escape(str(tmp_path / "out" / "d"))):
    with atomic.atomic_directory(str(tmp_path / "out" / "d")) as tmp:
      open(os.path.join(tmp, "f"), "w").close()
      fail()
  assert not os.path.exists(tmp_path / "out" / "d") and not _no_temp_files(tmp_path / "out")
  assert sorted(os.listdir(tmp_path / "out")) == ["m.json"]


def test_disk_full_during_a_run_is_one_error_line(tmp_path, monkeypatch):
  """Item 10 (CLI): disk full while `semrec run` writes its first artefact (config.yaml)."""
  import errno
  argv = ["run", *_write_log(tmp_path, [("u1", 0, 10), ("u1", 1, 20), ("u2", 2, 30)], 3)]

  def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  res = _invoke(argv)
  assert res.exit_code == 1
  assert re.match(r"Error: .*run/config\.yaml: cannot write \(ENOSPC: No space left on device\); nothing was "
                  r"written", _first_error_line(res)), _first_error_line(res)
  assert "Traceback" not in res.output and "rerun with --debug" not in res.output
  assert not os.path.exists(tmp_path / "run" / "config.yaml") and not _no_temp_files(tmp_path / "run")


def test_ranking_sweep_resumes_after_the_last_finished_configuration(tmp_path, monkeypatch):
  """Item 8: killed after configuration k of n, a rerun with the same checkpoint_dir trains only k+1..n (each
  finished configuration was recorded atomically on completion); a damaged record is retrained."""
  from semrec.ranking import daily_split, prepare_sequential, run_ranking_experiment
  from semrec.ranking import experiment as experiment_lib
  from tests.test_ranking_scaled import K, _config, _sids, _tiny_world
  world = _tiny_world(num_items=200, num_users=60, num_days=3, impressions_per_day=400)
  fi = world.item_features(_sids(world))
  data = prepare_sequential(world.dataset.interactions, fi, history_length=4,
                            split=daily_split(world.dataset.interactions, "day"))
  kw = dict(modes=("random_hash", "unigram"), budgets=(32, 64), seeds=(0, 1), use_history=(True,), codebook_size=K,
            base_config=_config(), embedding_dim=4, data=data, progress=False, checkpoint_dir=str(tmp_path / "ck"))
  # Plan: budget 64 then 32 (largest first); per budget seeds 0, 1; unigram's table (3 x 8 = 24 rows) is the
  # same at both budgets, so it runs once per seed -> n = 6 configurations.
  plan = experiment_lib._plan(kw["modes"], kw["budgets"], kw["seeds"], kw["use_history"], 3, K)
  assert len(plan) == 6
  real, trained, template = experiment_lib._train_one, [], []

  def killed_after(k):
    # The first configuration trains for real; the others reuse its result rows under their own key (the
    # resume logic under test only sees the rows), so the test stays fast.
    def train(sw, hist, mode, budget, seed):
      if len(trained) == k:
        raise KeyboardInterrupt("killed")
      trained.append((hist, mode, budget, seed))
      if not template:
        template.extend(real(sw, hist, mode, budget, seed))
      row = {**template[0], "use_history": hist, "mode": mode, "seed": seed}
      same_for = sw.budgets if experiment_lib._budget_independent(mode, sw.L, sw.K, sw.budgets) else (budget,)
      return [{**row, "budget": b} for b in same_for]
    return train

  monkeypatch.setattr(experiment_lib, "_train_one", killed_after(3))
  with pytest.raises(KeyboardInterrupt):
    run_ranking_experiment(None, fi, **kw)
  assert trained == plan[:3] and len(os.listdir(tmp_path / "ck" / "runs")) == 3
  trained.clear()
  monkeypatch.setattr(experiment_lib, "_train_one", killed_after(99))
  res = run_ranking_experiment(None, fi, **kw)
  assert trained == plan[3:]  # only k+1..n
  assert len(res.runs[res.runs["task"] == "label"]) == 8  # 4 random_hash + 2 unigram x 2 budgets it stands for
  # A finished record damaged outside semrec is retrained (not a crash), the others are reused.
  first = sorted(os.listdir(tmp_path / "ck" / "runs"))[0]
  open(tmp_path / "ck" / "runs" / first, "w").write('{"rows": ')
  trained.clear()
  run_ranking_experiment(None, fi, **kw)
  assert len(trained) == 1 and experiment_lib._run_key(*trained[0]) + ".json" == first


def test_baseline_ties_do_not_exploit_catalogue_order():
  """Item 11: a cold catalogue whose id order correlates with the targets (the first 5 of 20 candidates are
  every query's targets, as release order does on a real cold split). Every candidate has count 0, so
  popularity and transition are all ties: catalogue order scores Recall@5 = 1.0, the seeded random order
  scores what the permutation gives (chance: 5/20 expected)."""
  import pandas as pd
  from semrec.data import EvalSplit, Queries
  from semrec.towers.baselines import evaluate_baselines
  cands = np.array([f"c{i:02d}" for i in range(20)], dtype=object)
  ids = np.concatenate([np.array(["t0", "t1"], dtype=object), cands])
  train = pd.DataFrame({"user_id": ["u0", "u0", "u1"], "item_id": ["t0", "t1", "t0"],
                        "timestamp": np.array([1, 2, 1], np.int64), "label": np.float32(1)})
  n = 10
  hist = [np.array(["t0", "t1"], dtype=object)] * n
  q = Queries(np.array([f"u{i}" for i in range(n)], dtype=object), hist,
              [np.array([cands[i % 5]], dtype=object) for i in range(n)], np.zeros(n, np.int64), hist,
              np.ones(n, bool), cands)
  split = EvalSplit("cold_items", train, cands, cands, {"valid": q, "test": q})
  recall = lambda tb, seed=0: {name: m["overall"]["recall@5"] for name, m in evaluate_baselines(  # noqa: E731
      split, ids, names=("popularity", "transition"), ks=(5,), ndcg_ks=(5,), tie_break=tb, seed=seed).items()}
  assert recall("catalogue") == {"popularity": 1.0, "transition": 1.0}  # the id order alone
  for seed in (0, 1, 2):
    tie = np.random.default_rng(seed).permutation(len(ids))[2:]  # the candidates' tie ranks (lower first)
    top5 = set(np.argsort(tie, kind="stable")[:5])
    expected = len(top5 & set(range(5))) / 5  # each target c0..c4 is hit iff it is in the random top 5
    assert recall("random", seed) == {"popularity": expected, "transition": expected}
    assert expected < 1.0
