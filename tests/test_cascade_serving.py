"""Serving the cascade: export_cascade -> CascadeServer in a fresh process -> the in-memory cascade's top-k."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from semrec.data import Queries, make_split
from semrec.ranking.candidates import catalogue_index
from tests.test_cascade import _world

K = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A tiny world, a tiny learned two-tower source (1 epoch), a tiny cascade over it + the non-learned sources,
  exported once."""
  from semrec.export.cascade import export_cascade
  from semrec.ranking.cascade import CascadeConfig, build_sources, candidate_stage, train_cascade
  from semrec.towers.comparison import ComparisonConfig, ItemSide, run_variant
  from semrec.towers.training import FitConfig
  ds, feats = _world(num_users=30)
  split = make_split(ds, "leave_one_out")
  ids, content = feats.item_ids, feats.arrays["content"]
  index = catalogue_index(ids)
  base = ComparisonConfig()
  retr = dataclasses.replace(base.retriever, num_negatives=16,
                             candidate=dataclasses.replace(base.retriever.candidate, output_dim=8),
                             query=dataclasses.replace(base.retriever.query, mlp_dims=(8,), output_dim=8,
                                                       max_history=6))
  cmp = ComparisonConfig(retriever=retr, fit=FitConfig(max_epochs=1, batch_size=32), embedding_dim=8,
                         variants=("content",))
  side = ItemSide(features=feats, sid_levels=3, sid_codebook_size=4, hash_bins=66)
  model, inputs, _ = run_variant("content", cmp, split, side)
  retrievers = {"content": (model, inputs)}
  cfg = CascadeConfig(candidates=12, per_source=6, hard_negatives=6, random_negatives=2, mode="unigram",
                      max_epochs=1, embedding_dim=8, batch_size=64, history_length=6)
  serve = build_sources(split, ids, content, retrievers, cfg.fresh_window, 0.5)
  train_sources = build_sources(split, ids, content, retrievers, cfg.fresh_window, 0.5, training=True)
  cascade = train_cascade(split, feats, 4, train_sources, candidate_stage(serve, split.queries("valid"), index, cfg),
                          cfg, progress=False)
  base_dir = str(tmp_path_factory.mktemp("cascade_export"))
  exported = export_cascade(base_dir, cascade, split, feats, retrievers, 0.5, sources=serve, num_requests=3, k=K)
  return {"split": split, "feats": feats, "cascade": cascade, "serve": serve, "cfg": cfg, "index": index,
          "exported": exported, "base_dir": base_dir}


def _in_memory_top_k(s, reqs, k=K):
  """The in-memory cascade's top-k of requests [{"history", "timestamp", "user_id"}]: the serving sources, the
  merge, ``Cascade.scores`` (one batch), [(ids, scores)]."""
  from semrec.export.cascade import final_top_k, parse_request, request_queries
  from semrec.ranking.cascade import candidate_stage
  q = request_queries([parse_request(r["history"], r["timestamp"], s["index"], r["user_id"]) for r in reqs])
  stage = candidate_stage(s["serve"], q, s["index"], s["cfg"])
  out = []
  for rows, sc in zip(stage.merged.rows, s["cascade"].scores(stage)):
    rows, scores = final_top_k(rows, sc, k)
    out.append(([s["feats"].item_ids[r] for r in rows], scores))
  return out


def test_export_layout_and_manifest(served):
  e = served["exported"]
  assert e.path.endswith(os.path.join("cascade", "1")) and e.manifest["kind"] == "cascade"
  x = e.manifest["extra"]
  # Source order: the learned source first, then the non-learned ones as build_sources orders them.
  assert x["sources"] == ["content", "fresh_items", "transition", "content_knn", "popularity"]
  assert x["candidates"] == 12 and x["per_source"] == 6 and x["ranker"]["item_cache"]
  for rel in ("models/content/1/saved_model.pb", "models/ranker/1/saved_model.pb", "cascade_data.npz",
              "requests.json", "retriever_data.npz"):
    assert rel in e.manifest["files"], rel
  # Recorded requests: 3 test queries + an empty history + one with an unknown id (dropped, recorded).
  rec = json.load(open(os.path.join(e.path, "requests.json")))
  assert len(rec["requests"]) == 5 and rec["requests"][3]["history"] == []
  assert rec["requests"][4]["dropped"] == ["\x01not-in-catalogue"]


def test_served_top_k_equals_in_memory_cascade_in_a_fresh_process(served):
  """A fresh process loads the export (CascadeServer) and serves requests the parent computed in memory:
  the same top-k ids, scores within 1e-5."""
  test = served["split"].queries("test")
  reqs = [{"history": list(map(str, test.histories[i])), "timestamp": int(test.timestamps[i]),
           "user_id": str(test.user_ids[i])} for i in range(len(test))]
  reqs += [{"history": ["w1_3", "w1_4"], "timestamp": 3, "user_id": None},
           {"history": [], "timestamp": 100, "user_id": "never-seen-user"}]
  script = ("import json, sys\nfrom semrec.export.cascade import CascadeServer\n"
            "s = CascadeServer.load(sys.argv[1])\nout = []\n"
            "for r in json.loads(sys.argv[2]):\n"
            "  ids, sc = s.recommend(r['history'], r['timestamp'], %d, r['user_id'])\n"
            "  out.append([list(ids), [float(v) for v in sc]])\n"
            "print('RESULT ' + json.dumps(out))\n" % K)
  proc = subprocess.run([sys.executable, "-c", script, served["exported"].path, json.dumps(reqs)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
  new_hits = 0
  for r, (ids, scores), (exp_ids, exp_scores) in zip(reqs, got, _in_memory_top_k(served, reqs)):
    assert ids == exp_ids, r
    np.testing.assert_allclose(scores, exp_scores, atol=1e-5, rtol=0)
    assert len(ids) == K and scores == sorted(scores, reverse=True)
    new_hits += any(i.startswith("new") for i in ids)
  # The served lists are the cascade's: each test user's new item (reachable only through the fresh-item /
  # kNN sources) reaches the top 5 for a good share of the queries (12 of 30 after one epoch of this tiny run).
  assert new_hits >= len(test) // 3


def test_verify_export_replays_the_recorded_requests_and_catches_a_changed_expectation(served, tmp_path):
  import shutil
  from semrec.export import verify_export
  rep = verify_export(served["base_dir"], run_saved_model_cli=False, progress=False)
  assert rep.ok, rep.all_errors
  (m,) = rep.models
  assert m.kind == "cascade" and m.num_requests == 5 and m.max_abs_diff is not None and m.max_abs_diff <= 1e-5
  # An altered expectation (a wrong recorded score, manifest hash updated) is caught by the replay.
  from semrec.export import serving_layout as sl
  bad = tmp_path / "bad"
  shutil.copytree(served["base_dir"], bad)
  vdir = bad / "cascade" / "1"
  rec = json.load(open(vdir / "requests.json"))
  rec["requests"][0]["expected_scores"][0] += 0.01
  (vdir / "requests.json").write_text(json.dumps(rec))
  man = json.load(open(vdir / "manifest.json"))
  man["files"] = sl.file_inventory(str(vdir))
  (vdir / "manifest.json").write_text(json.dumps(man))
  rep = verify_export(str(bad), run_saved_model_cli=False, progress=False)
  assert not rep.ok and any("request 0" in e and "exceeds" in e for e in rep.all_errors), rep.all_errors
  # A corrupted data file is named by the structure check, before any load.
  with open(vdir / "cascade_data.npz", "r+b") as f:
    f.seek(100)
    f.write(b"\xff\xff\xff")
  rep = verify_export(str(bad), run_saved_model_cli=False, progress=False, load=False)
  assert any("corrupted file cascade_data.npz" in e for e in rep.all_errors), rep.all_errors


@pytest.fixture(scope="module")
def server(served):
  from semrec.export.cascade import CascadeServer
  return CascadeServer.load(served["exported"].path)


def test_bad_input_fallbacks_and_refusals(served, server):
  # Unknown history ids are dropped: the same list as the history without them.
  a = server.recommend(["zz-unknown", "w0_1", "w0_2"], 5, k=K)
  b = server.recommend(["w0_1", "w0_2"], 5, k=K)
  assert list(a[0]) == list(b[0]) and np.array_equal(a[1], b[1])
  assert server.parse(["zz-unknown", "w0_1"], 5).unknown == ["zz-unknown"]
  # The history is never recommended back.
  assert not {"w0_1", "w0_2"} & set(b[0])
  # Empty history: served (fresh items / popularity / the tower's empty query), equal to the in-memory cascade.
  ids, scores = server.recommend([], 5, k=K)
  ((exp_ids, exp_scores),) = _in_memory_top_k(served, [{"history": [], "timestamp": 5, "user_id": None}])
  assert list(ids) == exp_ids and len(ids) == K
  np.testing.assert_allclose(scores, exp_scores, atol=1e-5)
  # k beyond the merged candidates (M = 12): at most the 12 candidates, each once.
  ids, _ = server.recommend(["w2_0"], 5, k=50)
  assert len(ids) == 12 == len(set(ids))
  for bad, field in (((["w0_1"], float("nan")), "timestamp"), ((["w0_1"], float("inf")), "timestamp"),
                     ((["w0_1"], 2.5), "timestamp"), (([None], 5), r"history\[0\]"), (("w0_1", 5), "history")):
    with pytest.raises(ValueError, match=field):
      server.recommend(*bad)
  with pytest.raises(ValueError, match="k"):
    server.recommend(["w0_1"], 5, k=0)


def test_catalogue_smaller_than_the_candidate_count(served, server):
  """M = 40 > the 33 items: every item at most once, the rest of the slots padding, and the served top-k is
  still the in-memory one."""
  import copy
  from semrec.export.cascade import final_top_k, parse_request, request_queries
  from semrec.ranking.cascade import candidate_stage
  big = copy.copy(server)
  big.config = dataclasses.replace(server.config, candidates=40, per_source=40)
  req = parse_request(["w0_1"], 5, served["index"])
  stage = big.candidates(req)
  rows = stage.merged.rows[0]
  assert (rows >= 0).sum() == 32 and (rows[32:] == -1).all()  # 33 items minus the history item
  ids, scores = big.recommend(["w0_1"], 5, k=40)
  mem = candidate_stage(served["serve"], request_queries([req]), served["index"], big.config)
  exp_rows, exp_scores = final_top_k(mem.merged.rows[0], served["cascade"].scores(mem)[0], 40)
  assert list(ids) == [served["feats"].item_ids[r] for r in exp_rows] and len(ids) == 32
  np.testing.assert_allclose(scores, exp_scores, atol=1e-5)


def test_serving_context_equals_the_training_context():
  """The server counts a user's past per user (no DataFrame per request); the values must be the library's."""
  from semrec.export.cascade import _ServingFeaturizer
  from semrec.ranking.cascade import CascadeFeaturizer
  ds, feats = _world(num_users=12)
  split = make_split(ds, "leave_one_out")
  train = split.train.copy()
  train.loc[train.index[::3], "label"] = 0.0  # some explicit negatives: the positive rate is not 1
  rng = np.random.default_rng(0)
  users = np.array(list(train["user_id"].unique()[:6]) + ["nobody"], dtype=object)
  times = np.concatenate([rng.integers(0, 9, size=6), [4]]).astype(np.int64)
  times[0] = int(train.loc[train["user_id"] == users[0], "timestamp"].iloc[2])  # a time equal to a train row's
  q = Queries(users, [np.zeros(0, dtype=object)] * 7, [np.zeros(0, dtype=object)] * 7, times,
              [np.zeros(0, dtype=object)] * 7, np.zeros(7, bool), None)
  want = CascadeFeaturizer(feats, train).context(q)
  got = _ServingFeaturizer(feats, train, 0, 20).context(q)
  np.testing.assert_array_equal(got, want)
  assert want[-1, -1] == 0.5 and want[-1, -2] == 0.0  # the unknown user: no past
