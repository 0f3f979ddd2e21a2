"""End-to-end: `semrec run --dataset synthetic --quick` on tiny data, resume, report, exports (the config itself:
tests/test_config.py)."""
import dataclasses
import json
import os

import pytest
import yaml
from click.testing import CliRunner

from semrec.cli import main
from semrec.config import save_yaml
from semrec.pipeline import STAGE_ORDER, STAGES, DataConfig, Run, RunConfig, run_stages


def test_stage_dependencies():
  assert STAGES.dependencies("index") == ["encode", "sid", "retrieval"]
  assert STAGES.dependencies("encode") == []


def test_cli_usage_errors():
  runner = CliRunner()
  res = runner.invoke(main, ["run", "--dataset", "generic"])
  assert res.exit_code != 0 and "--interactions and --items" in res.output


def test_cli_bad_data_is_a_clean_error(tmp_path):
  inter = tmp_path / "i.csv"
  inter.write_text("user_id,item_id,timestamp,rating\nu1,a,10,4\nu1,zzz,11,4\n")
  items = tmp_path / "items.csv"
  items.write_text("item_id,title\na,Alpha\n")
  res = CliRunner().invoke(main, ["encode", "--dataset", "generic", "--interactions", str(inter), "--items",
                                  str(items), "--run-dir", str(tmp_path / "run")])
  assert res.exit_code == 1
  assert "Error:" in res.output and "row 2, column 'item_id': unknown item 'zzz'" in res.output
  assert "Traceback" not in res.output


def test_interrupted_stage_is_rerun_and_finished_stages_skipped(tmp_path):
  calls = []

  def ok(run):
    calls.append("ok")
    return {"x": 1}

  def boom(run):
    calls.append("boom")
    raise KeyboardInterrupt

  run = Run(RunConfig(), str(tmp_path))
  with pytest.raises(KeyboardInterrupt):
    run_stages(run, ["a", "b"], {"a": ok, "b": boom}, log=lambda m: None)
  assert run.is_done("a") and not run.is_done("b")
  run_stages(run, ["a", "b"], {"a": ok, "b": ok}, log=lambda m: None)
  assert calls == ["ok", "boom", "ok"]  # "a" was not recomputed


def test_changed_config_recomputes_stale_stage_and_what_depends_on_it(tmp_path):
  calls = []
  registry = {s: (lambda s: lambda run: calls.append(s) or {"stage": s})(s) for s in ("encode", "sid", "ranking")}
  stages = list(registry)
  rep = dataclasses.replace

  def run_with(cfg, log=lambda m: None):
    calls.clear()
    run = Run(cfg, str(tmp_path))
    results = run_stages(run, stages, registry, log=log)
    return run, results

  cfg = RunConfig()
  run, results = run_with(cfg)
  assert calls == stages and results["sid"] == {"seconds": results["sid"]["seconds"], "stage": "sid"}
  assert run.stage_result("sid")["stage"] == "sid" and "_config" not in run.stage_result("sid")
  open(run.path("sid", "artefact_of_old_config.txt"), "w").close()

  run_with(cfg)
  assert calls == []  # same config: everything resumes

  logs = []
  cfg_sid = rep(cfg, sid=rep(cfg.sid, cluster_ks=(10,)))
  run, _ = run_with(cfg_sid, logs.append)
  assert calls == ["sid", "ranking"]  # encode does not read `sid`
  assert any("sid: config changed since it ran (sid); clearing" in m for m in logs)
  assert not os.path.exists(run.path("sid", "artefact_of_old_config.txt"))
  assert run.stale_sections("sid") == [] and run.stale_sections("ranking") == []

  run_with(rep(cfg_sid, ranking=rep(cfg_sid.ranking, num_seeds=2)))
  assert calls == ["ranking"]
  run_with(rep(cfg_sid, ranking=rep(cfg_sid.ranking, num_seeds=2), seed=7))
  assert calls == stages  # every stage is seeded

  # A run directory written before config keys were recorded is trusted as it is.
  done = run.path("sid", "_DONE.json")
  with open(done) as f:
    record = json.load(f)
  record.pop("_config")
  with open(done, "w") as f:
    json.dump(record, f)
  assert Run(cfg, str(tmp_path)).stale_sections("sid") == []
  assert Run(cfg, str(tmp_path)).stale_sections("ranking") == ["encoder", "ranking", "seed", "sid"]  # the encoder preset is seeded


def test_semrec_run_synthetic_quick_end_to_end(tmp_path):
  run_dir = str(tmp_path / "run")
  data_cfg = tmp_path / "c.yaml"
  cfg = RunConfig(data=DataConfig(type="synthetic"))
  cfg.data.synthetic.output_dir = str(tmp_path / "media")
  save_yaml(cfg, str(data_cfg))
  runner = CliRunner()
  res = runner.invoke(main, ["run", "--config", str(data_cfg), "--quick", "--run-dir", run_dir],
                      catch_exceptions=False)
  assert res.exit_code == 0, res.output
  # The console metrics table.
  assert "utilisation per level" in res.output and "recall@100" in res.output and "final list" in res.output
  for stage in STAGE_ORDER:
    assert os.path.exists(os.path.join(run_dir, stage, "_DONE.json")), stage
  metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
  assert metrics["dataset"]["modalities"] == ["text", "image", "audio"]
  enc = metrics["stages"]["encode"]
  assert enc["modalities"] == ["text", "image", "audio"] and enc["random_init"]["image"]
  assert enc["dim"] == 384 + 512 + 128 and enc["num_items"] == 120  # MiniLM + resnet18 + vggish-small
  assert all(p == 1.0 for p in enc["modality_presence"].values())
  # Values a broken stage would miss (measured on this world: utilisation 100% per level, unique ratio 0.95,
  # cosine 0.70 for random pairs vs 0.73 for a shared full SID, reconstruction cosine 0.84).
  sid = metrics["stages"]["sid"]
  assert min(sid["utilisation"]) >= 0.9 and sid["unique_ratio"] >= 0.8, sid
  assert sid["prefix_cosine"][-1] > sid["prefix_cosine"][0] and sid["reconstruction_cosine"] > 0.5, sid
  # The served retriever ranks held-out positives above chance (random ranking: recall@50 = 50 / 120;
  # measured 0.55), over every test query; the brute-force index is exact and ScaNN close to it.
  prod = metrics["stages"]["retrieval"]["production"]["metrics"]["overall"]
  assert prod["queries"] > 20 and prod["recall@50"] > 50 / 120, prod
  # The lexical encoder is reported exactly when the served model reads the `lexical` item feature (then it
  # encodes a new item's title); the content block's chosen settings are reported when it is served.
  served = metrics["stages"]["retrieval"]["production"]
  lexical = served["lexical_encoder"]
  assert (lexical is not None) == ("lexical" in served["item_features"]), served
  assert ("content" in served["score_settings"]) == ("content" in served["item_features"]), served
  if lexical is not None:
    from semrec.encoders import LexicalEncoder
    assert not os.path.isabs(lexical)  # relative to the run: a copied run directory reads its own copy
    assert LexicalEncoder.load(os.path.join(run_dir, lexical)).encode(["a new title"]).shape[0] == 1
  idx = metrics["stages"]["index"]
  assert idx["recall_at_10"] == 1.0 and idx["scann_recall_at_10"] >= 0.9, idx
  # Ranking (two-stage): the cascade ranker ranked the merged candidates of every test query; the final list is
  # measured on the same queries as the retrievers, and it cannot beat its own candidates (recall@K <= candidate
  # recall for K <= M); the random-hash ranker was trained on the same candidates for the SPM-vs-hash comparison.
  rk = metrics["stages"]["ranking"]
  final = rk["final"]["spm+hash"]["overall"]
  assert set(rk["final"]) == {"spm+hash", "random_hash"}
  assert final["queries"] == prod["queries"], (final, prod)
  assert final["recall@50"] <= rk["candidate_recall"]["merged"]["overall"] + 1e-9
  assert rk["candidate_recall"]["merged"]["overall"] > 0.5, rk["candidate_recall"]
  assert {"transition", "popularity", "fresh_items", "content_knn"} <= set(rk["sources"])
  assert set(metrics["stages"]["retrieval"]["variants"]) <= set(rk["sources"])  # every trained retriever
  # Export: all 8 artefacts load in a fresh process and reproduce their export-time outputs (the served
  # cascade: its recorded requests' top-k through CascadeServer).
  assert metrics["stages"]["verify"]["ok"]
  models = metrics["stages"]["verify"]["models"]
  assert {m["name"] for m in models} == {"sid_assigner", "candidate_tower", "query_tower", "retrieval_brute_force",
                                         "retrieval_scann", "cascade_ranker", "scann_index", "cascade"}
  assert rk["production"]["cascade_export"].endswith(os.path.join("cascade", "1"))
  assert all(m["ok"] for m in models) and all((m["max_abs_diff"] or 0.0) <= 1e-4 for m in models)
  report = open(os.path.join(run_dir, "report.md")).read()
  for png in ("sid_code_usage.png", "sid_prefix_similarity.png", "retrieval_recall.png", "final_list.png"):
    assert os.path.getsize(os.path.join(run_dir, "plots", png)) > 1000
    assert f"plots/{png}" in report
  assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["data"]["type"] == "synthetic"

  # Resume: a second invocation reuses every finished stage and rewrites the report.
  res2 = runner.invoke(main, ["run", "--config", str(data_cfg), "--quick", "--run-dir", run_dir],
                       catch_exceptions=False)
  assert res2.exit_code == 0, res2.output
  assert res2.output.count("already done") == len(STAGE_ORDER)

  # evaluate: without --config it reads the run's own config.yaml (not the CLI defaults) and keeps it.
  os.remove(os.path.join(run_dir, "metrics.json"))
  res_eval = runner.invoke(main, ["evaluate", "--run-dir", run_dir], catch_exceptions=False)
  assert res_eval.exit_code == 0, res_eval.output
  assert "recall@100" in res_eval.output and "Warning" not in res_eval.output
  assert json.load(open(os.path.join(run_dir, "metrics.json")))["stages"]["verify"]["ok"]
  assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["data"]["type"] == "synthetic"

  # verify-export CLI (structure pass; the fresh-process pass ran in the verify stage above).
  models = os.path.join(run_dir, "export", "models")
  res3 = runner.invoke(main, ["verify-export", "--structure-only", models])
  assert res3.exit_code == 0, res3.output
  assert "cascade_ranker" in res3.output
  os.remove(os.path.join(models, "cascade_ranker", "1", "saved_model.pb"))
  res4 = runner.invoke(main, ["verify-export", "--structure-only", models])
  assert res4.exit_code == 1 and "saved_model.pb" in res4.output


def test_verify_accepts_a_skipped_ranking_stage(tmp_path):
  """Implicit feedback: the impression-ranker sweep records a skip and exports nothing; verify must not look for it
  (the cascade ranking stage exports its ranker on every dataset)."""
  from semrec.pipeline.stages.verify import _stage_exports

  class _Run:
    results = {"retrieval": {"production": {"exports": {"query_tower": str(tmp_path / "export/models/query_tower/1")}}},
               "ranking-sweep": {"skipped": "implicit feedback"},
               "ranking": {"production": {"export": "x/cascade_ranker/2"}}, "index": {"searcher_export": "x/scann_searcher/1"},
               "export": {"sid_assigner": "x/sid_assigner/1"}}

    def is_done(self, stage):
      return stage in self.results

    def stage_result(self, stage):
      return self.results[stage]

  assert _stage_exports(_Run()) == {"query_tower/1": "retrieval", "scann_searcher/1": "index",
                                    "sid_assigner/1": "export", "cascade_ranker/2": "ranking"}
