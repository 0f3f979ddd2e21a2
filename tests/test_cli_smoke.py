"""Smoke test of the whole `semrec` command line (issue 26, item 1: `semrec batch encode` failed on every call with
an unexpected keyword argument and no test ran it).

- ``test_help``: every command and subcommand, enumerated from the click group (a new command cannot be
  missed), answers ``--help``.
- ``test_every_command_has_a_call_test``: every command is in ``CALLS``, the table of the tests below that call
  it on tiny data (``--quick`` where the command takes it). A new command fails here until it gets one.
- The calls: one tiny generic dataset (40 items, 24 users, explicit labels) is encoded (real MiniLM) and given
  SIDs (RQ-KMeans L=2, K=4) through the CLI once per module; each test works on its own copy of that run
  directory. Commands that train TensorFlow models for minutes (``run``, ``train-retrieval``, ``index``,
  ``train-ranker``, ``experiment ...``) run through the real CLI path (option parsing, config building,
  run-directory lock, preflight for their stages, prerequisites resumed, the stage registry) with the training
  stage bodies replaced by recorders: what is under test is that the command is callable and reaches its stage
  with the right run; the stages themselves are tested end to end in test_pipeline.py. Everything else
  (``encode``, ``sid ...``, ``export``, ``evaluate``, ``verify-export``, ``config show``, every ``batch`` job,
  ``launch-workers``) runs for real.
"""
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from semrec.cli import main

WORDS = ("red", "green", "blue", "fast", "slow", "old", "new", "dark", "light", "small")
YAML = """sid:
  mode: rqkmeans
  num_levels: 2
  codebook_size: 4
  cluster_ks: [4]
ranking:
  num_periods: 3
"""
# The stage bodies replaced by recorders (see the module docstring); the names present in the registry are used.
HEAVY_STAGES = ("retrieval", "index", "ranking", "ranking-sweep", "export", "verify")


def _commands(group=main, prefix=()):
  """[(path tuple, click.Command)] of every leaf command under ``group``, depth first."""
  import click
  out = []
  for name, cmd in sorted(group.commands.items()):
    if isinstance(cmd, click.Group):
      out.append((prefix + (name,), cmd))
      out += _commands(cmd, prefix + (name,))
    else:
      out.append((prefix + (name,), cmd))
  return out


def _invoke(argv):
  res = CliRunner().invoke(main, list(argv))
  return res


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=lambda p: " ".join(p))
def test_help(path):
  res = _invoke([*path, "--help"])
  assert res.exit_code == 0, res.output
  assert res.output.startswith("Usage: ") and " ".join(path) in res.output.splitlines()[0]


# ----------------------------------------------------------------------------------------------------------------
# The tiny run every call test starts from.
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """{"dir", "argv", "encode", "sid"}: a run directory with `semrec encode` and `semrec sid train` done."""
  tmp = tmp_path_factory.mktemp("smoke")
  rng = np.random.default_rng(0)
  rows = ["user_id,item_id,timestamp,label"]
  for u in range(24):
    for t, i in enumerate(rng.choice(40, 10, replace=False)):
      rows.append(f"u{u},i{i},{1000 + 100 * t + u},{int(rng.random() < 0.7)}")
  (tmp / "i.csv").write_text("\n".join(rows) + "\n")
  (tmp / "items.csv").write_text("item_id,title\n" + "".join(
      f"i{i},{WORDS[i % 10]} {WORDS[(i // 10 + 3 * i) % 10]} thing\n" for i in range(40)))
  (tmp / "k.yaml").write_text(YAML)
  argv = ["--dataset", "generic", "--interactions", str(tmp / "i.csv"), "--items", str(tmp / "items.csv"),
          "--config", str(tmp / "k.yaml"), "--quick"]
  run_dir = str(tmp / "run")
  enc = _invoke(["encode", *argv, "--run-dir", run_dir])
  sid = _invoke(["sid", "train", *argv, "--run-dir", run_dir])
  return {"dir": run_dir, "tmp": tmp, "argv": argv, "encode": enc, "sid": sid}


def _copy(base, tmp_path) -> str:
  run_dir = str(tmp_path / "run")
  shutil.copytree(base["dir"], run_dir)
  return run_dir


def _ok(res):
  assert res.exit_code == 0, (res.output[-1500:], res.exception)
  return res


@pytest.fixture
def stubbed(monkeypatch):
  """Replaces the training stages' bodies by recorders; returns the list of (stage, run dir) calls."""
  from semrec.pipeline import STAGES
  calls = []

  def recorder(stage):
    def fn(run):
      calls.append((stage, run.run_dir))
      # The fields the report reads (pipeline/report.py): a verify result lists the models it checked.
      return {"stub": stage, **({"ok": True, "models": []} if stage == "verify" else {})}
    return fn

  for s in HEAVY_STAGES:
    if s in STAGES.registry:
      monkeypatch.setitem(STAGES.registry, s, recorder(s))
  return calls


# ----------------------------------------------------------------------------------------------------------------
# One test per command (several commands of one workflow share a test).
# ----------------------------------------------------------------------------------------------------------------
def test_encode_and_sid_train(base):
  from semrec.pipeline import Run
  _ok(base["encode"])
  _ok(base["sid"])
  assert "encode finished" in base["encode"].output and "sid finished" in base["sid"].output
  run = Run(None, base["dir"])
  assert run.stage_result("encode")["num_items"] == 40 and run.stage_result("sid")["codebook_size"] == 4


def test_sid_assign(base, tmp_path):
  run_dir = _copy(base, tmp_path)
  res = _ok(_invoke(["sid", "assign", *base["argv"], "--run-dir", run_dir]))
  assert "sid-assign finished" in res.output and os.path.exists(os.path.join(run_dir, "sid-assign", "_DONE.json"))


def _stage_call(base, tmp_path, stubbed, argv, stage):
  from semrec.pipeline import STAGES
  run_dir = _copy(base, tmp_path)
  res = _ok(_invoke([*argv, *base["argv"], "--run-dir", run_dir]))
  ran = [s for s, d in stubbed]
  assert stage in ran and all(d == run_dir for _, d in stubbed), ran
  assert "encode" not in ran and "already done" in res.output  # prerequisites resumed, not recomputed
  for dep in STAGES.dependencies(stage):
    assert os.path.exists(os.path.join(run_dir, dep, "_DONE.json"))
  return res


def test_train_retrieval(base, tmp_path, stubbed):
  _stage_call(base, tmp_path, stubbed, ["train-retrieval"], "retrieval")


def test_experiment_retrieval(base, tmp_path, stubbed):
  _stage_call(base, tmp_path, stubbed, ["experiment", "retrieval"], "retrieval")


def test_index(base, tmp_path, stubbed):
  _stage_call(base, tmp_path, stubbed, ["index"], "index")


def test_train_ranker(base, tmp_path, stubbed):
  _stage_call(base, tmp_path, stubbed, ["train-ranker"], "ranking")


def test_experiment_ranking(base, tmp_path, stubbed):
  from semrec.pipeline import STAGES
  sweep = "ranking-sweep" if "ranking-sweep" in STAGES.registry else "ranking"  # the AUC sweep's stage
  _stage_call(base, tmp_path, stubbed, ["experiment", "ranking"], sweep)


def test_run(base, tmp_path, stubbed):
  from semrec.pipeline import STAGE_ORDER
  run_dir = _copy(base, tmp_path)
  res = _ok(_invoke(["run", *base["argv"], "--run-dir", run_dir]))
  assert [s for s, _ in stubbed] == [s for s in STAGE_ORDER if s in HEAVY_STAGES]
  assert os.path.exists(os.path.join(run_dir, "metrics.json")) and os.path.exists(os.path.join(run_dir, "report.md"))
  assert "items encoded / dim" in res.output  # the console table of the finished stages


def test_export_and_verify_export(base, tmp_path):
  run_dir = _copy(base, tmp_path)
  res = _ok(_invoke(["export", *base["argv"], "--run-dir", run_dir]))
  assert "export finished" in res.output
  models = os.path.join(run_dir, "export", "models")
  res = _ok(_invoke(["verify-export", "--structure-only", models]))
  assert "sid_assigner" in res.output and "ok" in res.output


def test_evaluate(base, tmp_path):
  run_dir = _copy(base, tmp_path)
  res = _ok(_invoke(["evaluate", "--run-dir", run_dir]))
  assert "items encoded / dim" in res.output and "40 / 384" in res.output
  assert os.path.exists(os.path.join(run_dir, "report.md"))


def test_config_show(base):
  res = _ok(_invoke(["config", "show", *base["argv"]]))
  assert "sid.codebook_size" in res.output and "data.interactions" in res.output


def test_batch_encode_kmeans_rqkmeans_assign(base, tmp_path):
  """The batch jobs in process (the Beam runners are tested in test_beam.py): encode -> k-means centroids ->
  an RQ-KMeans SID model -> SIDs and cluster IDs of every item."""
  from semrec.encoders import EmbeddingStore
  run_dir = _copy(base, tmp_path)
  store = str(tmp_path / "store")
  res = _ok(_invoke(["batch", "encode", *base["argv"], "--run-dir", run_dir, "--store", store, "--shard-size", "16",
                     "--split", "leave_one_out", "--no-exclude-history"]))
  assert f"embedding store: {store}" in res.output
  contents = EmbeddingStore(store).load()
  assert contents.embeddings.shape == (40, 384) and len(contents.manifest["shards"]) == 3
  cents = str(tmp_path / "k4.npy")
  _ok(_invoke(["batch", "kmeans", "--store", store, "-k", "4", "--out", cents]))
  assert np.load(cents).shape == (4, 384)
  model = str(tmp_path / "rq")
  res = _ok(_invoke(["batch", "rqkmeans", "--store", store, "--out", model, "--levels", "2", "--codebook-size", "4",
                     "--sample-size", "0", "--whiten-dim", "8"]))
  assert "L=2, K=4" in res.output
  out = str(tmp_path / "codes")
  res = _ok(_invoke(["batch", "assign", "--store", store, "--sid-model", model, "--out", out,
                     "--centroids", f"k4={cents}"]))
  assert "SID table (40 items" in res.output


def test_batch_embed(tmp_path):
  """`semrec batch embed` through a tiny SavedModel with the candidate tower's contract (content -> embedding)."""
  import tensorflow as tf

  class Doubler(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="content")])
    def serve(self, content):
      return {"embedding": 2.0 * content}

  module = Doubler()
  model_dir = str(tmp_path / "m" / "1")
  tf.saved_model.save(module, model_dir, signatures={"serving_default": module.serve})
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  np.savez(tmp_path / "f.npz", item_ids=np.array(["a", "b", "c", "d"]), content=x)
  res = _ok(_invoke(["batch", "embed", "--model", model_dir, "--features", str(tmp_path / "f.npz"),
                     "--out", str(tmp_path / "e.npz")]))
  assert "embeddings [4, 3]" in res.output
  with np.load(tmp_path / "e.npz") as z:
    np.testing.assert_array_equal(z["embeddings"], 2.0 * x)


def test_launch_workers(tmp_path, capfd):
  """One task per worker with its TF_CONFIG (a trivial command: the distributed training itself is
  test_distributed.py's)."""
  code = "import json, os; t = json.loads(os.environ['TF_CONFIG'])['task']; print('task', t['type'], t['index'])"
  res = CliRunner().invoke(main, ["launch-workers", "-n", "2", "--", sys.executable, "-c", code])
  assert res.exit_code == 0, (res.output, res.exception)
  out = capfd.readouterr().out + res.output
  assert "task worker 0" in out and "task worker 1" in out


# Every command and the test that calls it. A command missing here fails test_every_command_has_a_call_test.
CALLS = {
    ("run",): test_run,
    ("encode",): test_encode_and_sid_train,
    ("train-retrieval",): test_train_retrieval,
    ("index",): test_index,
    ("train-ranker",): test_train_ranker,
    ("export",): test_export_and_verify_export,
    ("evaluate",): test_evaluate,
    ("sid", "train"): test_encode_and_sid_train,
    ("sid", "assign"): test_sid_assign,
    ("experiment", "ranking"): test_experiment_ranking,
    ("experiment", "retrieval"): test_experiment_retrieval,
    ("config", "show"): test_config_show,
    ("verify-export",): test_export_and_verify_export,
    ("batch", "encode"): test_batch_encode_kmeans_rqkmeans_assign,
    ("batch", "kmeans"): test_batch_encode_kmeans_rqkmeans_assign,
    ("batch", "rqkmeans"): test_batch_encode_kmeans_rqkmeans_assign,
    ("batch", "assign"): test_batch_encode_kmeans_rqkmeans_assign,
    ("batch", "embed"): test_batch_embed,
    ("launch-workers",): test_launch_workers,
}


def test_a_command_must_take_every_shared_option():
  """The cause of item 1: `_run_options` refuses, when the command is declared, a function that does not take
  one of the shared options (the list it checks is the options it adds)."""
  from semrec.cli_common import RUN_OPTION_NAMES, _run_options
  assert [p.name for p in main.commands["run"].params if p.name != "verbose"] == list(RUN_OPTION_NAMES)
  with pytest.raises(TypeError, match=r"batch_encode_cmd\(\) does not take the shared run options \['split', "
                                      r"'no_exclude_history'\]"):
    @_run_options
    def batch_encode_cmd(config_path, run_dir, dataset, interactions, items, text_columns, quality_columns, seed,
                         quick, force):  # the signature of issue 26
      pass
  _run_options(lambda **kwargs: None)  # a function taking **kwargs takes them all


def test_every_command_has_a_call_test():
  import click
  leaves = {p for p, cmd in _commands() if not isinstance(cmd, click.Group)}
  assert leaves == set(CALLS), (f"commands without a call test: {sorted(leaves - set(CALLS))}; "
                                f"stale entries: {sorted(set(CALLS) - leaves)}")
