"""Acceptance: tiny versions of every artefact kind, exported and verified in fresh processes.

Uses the real semrec classes (SidAssigner / ClusterIdLayer, TwoTowerRetriever towers, the towers ScaNN
index, the Ranker and its serving module): a broken import fails the test. Each model is loaded by a new
``python`` process importing only tensorflow (plus scann for the ScaNN-in-graph model and the searcher),
which is slow on a loaded machine: the whole file does two ``verify_export`` calls.
"""
import os
import shutil
import tempfile

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from semrec import export as ex
from semrec.atomic import write_json
from semrec.export import serving_layout as sl

L, K, N_ITEMS, H = 3, 4, 40, 3


def _sid_layers(dim):
  """The real semrec.sid assigner and cluster-ID layers (untrained weights; the export does not care)."""
  from semrec.sid import ClusterIdLayer, SidAssigner
  rng = np.random.default_rng(0)
  sid = SidAssigner(input_dim=dim, num_levels=L, codebook_size=K, name="sid_assigner")
  cluster = ClusterIdLayer(rng.normal(size=(5, dim)).astype(np.float32), name="cluster_id")
  return sid, cluster


def _item_representation():
  from semrec.sid import ItemRepresentation, ItemRepresentationConfig
  return ItemRepresentation(ItemRepresentationConfig(modes=("unigram", "random_hash"), embedding_dim=4, num_levels=L,
                                                     codebook_size=K, hash_buckets=50))


def _retriever():
  from semrec.towers import (CandidateTowerConfig, ItemEncoderConfig, QueryTowerConfig, RetrieverConfig,
                             TwoTowerRetriever)
  rep = _item_representation()
  config = RetrieverConfig(item=ItemEncoderConfig(representation=rep.config),
                           candidate=CandidateTowerConfig(mlp_dims=(8,), output_dim=4),
                           query=QueryTowerConfig(user_hash_bins=20, user_dim=4, max_history=H, mlp_dims=(8,),
                                                  output_dim=4))
  return TwoTowerRetriever(config, item_representation=rep)


def _ranker():
  """(semrec.ranking.Ranker, example features in its serving format)."""
  rng = np.random.default_rng(3)
  b = 4
  feats = {
      "candidate_item_id": np.array([f"i{i}" for i in range(b)], dtype=object),
      "candidate_sid": rng.integers(0, K, size=(b, L)).astype(np.int32),
      "last_item_id": np.array(["i9", "i8", "", "i7"], dtype=object),
      "last_sid": rng.integers(0, K, size=(b, L)).astype(np.int32),
      "history_item_id": np.array([["i1", "i2", ""]] * b, dtype=object),
      "history_sid": rng.integers(0, K, size=(b, H, L)).astype(np.int32),
      "context": rng.normal(size=(b, 2)).astype(np.float32),
  }
  from semrec.ranking import Ranker, RankerConfig
  from semrec.sid import ItemRepresentationConfig
  config = RankerConfig(item_representation=ItemRepresentationConfig(modes=("unigram",), embedding_dim=4,
                                                                     num_levels=L, codebook_size=K),
                        use_history=True, history_length=H, tasks=("label", "like"), context_dim=2,
                        num_cross_layers=1, hidden_units=(8,))
  model = Ranker(config)
  model(feats)
  return model, feats


@pytest.fixture(scope="module")
def exported():
  """Every artefact kind in one base directory (+ models.config)."""
  base = tempfile.mkdtemp(prefix="semrec_export_all_")
  rng = np.random.default_rng(0)
  results = {}
  content = rng.normal(size=(6, 8)).astype(np.float32)
  sid, cluster = _sid_layers(8)
  results["sid"] = ex.export_sid_assigner(base, sid, content, cluster_layer=cluster, data_fingerprint="fp")

  retriever = _retriever()
  item_ids = np.array([f"i{i}" for i in range(N_ITEMS)], dtype=object)
  item_sid = rng.integers(0, K, size=(N_ITEMS, L)).astype(np.int32)
  cand = {"item_id": item_ids, "sid": item_sid}
  hist_rows = rng.integers(0, N_ITEMS, size=(5, H))
  hist_ids = item_ids[hist_rows]
  hist_ids[0, :2] = ""  # padding, most recent last
  query = {"user_id": np.array([f"u{i}" for i in range(5)], dtype=object),
           "history": {"item_id": hist_ids, "sid": item_sid[hist_rows]}}
  q_emb = retriever.query_embedding(query).numpy()
  c_emb = retriever.candidate_embedding(cand).numpy()
  small_cand = {k: v[:6] for k, v in cand.items()}
  results["candidate"] = ex.export_candidate_tower(base, retriever.candidate_embedding, small_cand)
  results["query"] = ex.export_query_tower(base, retriever.query_embedding, query, metrics={"recall@10": 0.5})
  results["brute"] = ex.export_brute_force_retrieval(base, retriever.query_embedding, query, k=5,
                                                     candidate_embeddings=c_emb, item_ids=item_ids)
  from semrec.towers import build_index
  index = build_index(c_emb, item_ids, kind="scann", k=5, num_leaves=4, num_leaves_to_search=2)
  results["scann"] = ex.export_scann_retrieval(base, retriever.query_embedding, query, k=5, index=index)
  results["searcher"] = ex.export_scann_searcher(base, index, q_emb, k=5)
  saved = index.save(tempfile.mkdtemp(prefix="semrec_index_") + "/index")
  results["searcher_copy"] = ex.export_scann_searcher(base, saved, q_emb, k=5)  # version 2, from a saved dir
  shutil.rmtree(os.path.dirname(saved))
  ranker, rank_feats = _ranker()
  results["ranker"] = ex.export_ranker(base, ranker, rank_feats)
  ex.write_serving_configs(base, base_path_prefix="/models")
  yield base, results, {"query": query, "q_emb": q_emb, "c_emb": c_emb, "item_ids": item_ids,
                        "retriever": retriever, "index": index}
  shutil.rmtree(base, ignore_errors=True)


def test_every_artefact_verifies_in_a_fresh_process(exported):
  base, results, _ = exported
  report = ex.verify_export(base, max_workers=2, all_versions=True)
  table = report.to_markdown()
  print(table)
  assert report.ok, report.all_errors
  assert [m.version for m in report.models if m.name == "scann_index"] == [1, 2]
  by_name = {m.name: m for m in report.models}
  assert sorted(by_name) == ["candidate_tower", "query_tower", "ranker", "retrieval_brute_force",
                             "retrieval_scann", "scann_index", "sid_assigner"]
  for name, m in by_name.items():
    assert m.num_requests >= 1, name
    if name == "scann_index":
      assert m.kind == "scann_searcher" and m.saved_model_cli_ok is None
      assert m.child_modules == ["scann"]
      continue
    assert m.saved_model_cli_ok, name
    # Only the ScaNN-in-graph model needs (and was allowed) `import scann`; nothing imported semrec/TFRS.
    assert m.child_modules == (["scann"] if name == "retrieval_scann" else []), (name, m.child_modules)
    assert m.needs_scann_ops == (name == "retrieval_scann"), name
  assert f"| retrieval_scann | 1 | retrieval_scann | yes |" in table
  # The stock config leaves the ScaNN model out; the full one flags it.
  stock = [c["name"] for c in ex.read_models_config(os.path.join(base, "models.stock.config"))]
  assert "retrieval_scann" not in stock and "ranker" in stock and "scann_index" not in stock


def test_exported_artefacts_answer_like_the_python_objects(exported):
  base, results, ctx = exported
  # Query tower: flat signature inputs, same embedding as the Keras model.
  qt = tf.saved_model.load(results["query"].path).signatures["serving_default"]
  flat, _ = ex.flatten_features(ctx["query"])
  assert sorted(results["query"].manifest["inputs"]) == ["history_item_id", "history_sid", "user_id"]
  out = qt(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in flat.items()})
  np.testing.assert_allclose(out["embedding"].numpy(), ctx["q_emb"], atol=1e-5)
  # The history length is free: a longer history is truncated by the tower to its most recent H items.
  assert results["query"].manifest["inputs"]["history_sid"]["shape"] == [None, None, L]
  longer = {k: np.concatenate([v[:, :1], v], axis=1) if k.startswith("history") else v for k, v in flat.items()}
  out = qt(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in longer.items()})
  np.testing.assert_allclose(out["embedding"].numpy(), ctx["q_emb"], atol=1e-5)
  # Brute-force retrieval: exact top-5 by dot product over the candidate embeddings.
  bf = tf.saved_model.load(results["brute"].path).signatures["serving_default"]
  got = bf(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in flat.items()})
  scores = ctx["q_emb"] @ ctx["c_emb"].T
  top = np.argsort(-scores, axis=1)[:, :5]
  np.testing.assert_allclose(got["scores"].numpy(), np.take_along_axis(scores, top, 1), atol=1e-5)
  # ids: compare through the scores (ties may order equal-score items differently).
  row_of = {str(i): j for j, i in enumerate(ctx["item_ids"])}
  got_rows = np.vectorize(lambda b: row_of[b.decode()])(got["item_ids"].numpy())
  np.testing.assert_allclose(np.take_along_axis(scores, got_rows, 1), got["scores"].numpy(), atol=1e-5)
  # ScaNN-in-graph retrieval: approximate ids (2 of 4 leaves searched), but exactly re-scored, distinct
  # catalogue items, best first.
  import scann  # noqa: F401  (registers the ScaNN ops in this process)
  sc = tf.saved_model.load(results["scann"].path).signatures["serving_default"]
  got = sc(**{k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in flat.items()})
  got_rows = np.vectorize(lambda b: row_of[b.decode()])(got["item_ids"].numpy())
  assert got_rows.shape == (5, 5) and all(len(set(r)) == 5 for r in got_rows)
  np.testing.assert_allclose(np.take_along_axis(scores, got_rows, 1), got["scores"].numpy(), atol=1e-4)
  assert (np.diff(got["scores"].numpy(), axis=1) <= 1e-6).all()
  # Searcher directory: item-id mapping with one line per ScaNN row; the copy from a saved index
  # directory is the same searcher (same stored answers).
  assert (results["searcher"].version, results["searcher_copy"].version) == (1, 2)
  first = np.load(os.path.join(results["searcher"].path, sl.EXPECTED_OUTPUTS_FILE))
  copy = np.load(os.path.join(results["searcher_copy"].path, sl.EXPECTED_OUTPUTS_FILE))
  assert (first["item_ids"] == copy["item_ids"]).all()
  with open(os.path.join(results["searcher"].path, "item_ids.txt")) as f:
    assert f.read().split("\n")[:-1] == list(ctx["item_ids"])
  # Ranker REST :predict (row form) through the reloaded SavedModel.
  rk = tf.saved_model.load(results["ranker"].path)
  specs = ex.signature_input_specs(rk.signatures["serving_default"])
  req = ex.read_warmup_requests(results["ranker"].path)[0][1]
  def jsonable(x):
    return np.asarray(x).astype(str).tolist() if np.asarray(x).dtype == object else np.asarray(x).tolist()
  instances = [{k: jsonable(v[i]) for k, v in req.items()} for i in range(len(req["candidate_item_id"]))]
  resp = ex.rest_predict(rk, {"instances": instances})
  stored = ex.read_expected_outputs(results["ranker"].path, 1, sorted(results["ranker"].manifest["outputs"]))[0]
  assert set(specs) == set(req)
  for task, values in stored.items():
    np.testing.assert_allclose([p[task] if isinstance(p, dict) else p for p in resp["predictions"]], values,
                               atol=1e-5)


def test_fresh_process_catches_what_structure_checks_cannot(exported):
  """(a) no manifest + truncated saved_model.pb: only loading can tell; (b) swapped weights with a
  consistent manifest: only replaying the warm-up requests can tell."""
  base, results, ctx = exported
  broken = tempfile.mkdtemp(prefix="semrec_export_broken_")
  try:
    shutil.copytree(os.path.join(base, "sid_assigner"), os.path.join(broken, "no_manifest"))
    vdir = os.path.join(broken, "no_manifest", "1")
    os.remove(os.path.join(vdir, sl.MANIFEST_FILE))
    with open(os.path.join(vdir, "saved_model.pb"), "r+b") as f:
      f.truncate(os.path.getsize(os.path.join(vdir, "saved_model.pb")) // 3)

    # (b): re-export the candidate tower after changing a weight, then put the new variables under the
    # old version's expected outputs and re-record the file inventory, as a botched copy would.
    shutil.copytree(os.path.join(base, "candidate_tower"), os.path.join(broken, "swapped"))
    retr = _retriever()
    cand = {"item_id": np.array(["i0", "i1"], dtype=object), "sid": np.zeros((2, L), np.int32)}
    retr.candidate_embedding(cand)
    retr.query_embedding(ctx["query"])  # same variables as the exported retriever, other values
    other = ex.export_candidate_tower(tempfile.mkdtemp(dir=broken), retr.candidate_embedding, cand)
    sdir = os.path.join(broken, "swapped", "1")
    shutil.rmtree(os.path.join(sdir, "variables"))
    shutil.copytree(os.path.join(other.path, "variables"), os.path.join(sdir, "variables"))
    manifest = sl.read_manifest(sdir)
    manifest["files"] = sl.file_inventory(sdir)
    write_json(os.path.join(sdir, sl.MANIFEST_FILE), manifest, sort_keys=True)
    shutil.rmtree(os.path.dirname(other.path))

    report = ex.verify_export(broken, run_saved_model_cli=False, max_workers=2)
    errors = {m.name: m.errors for m in report.models}
    assert any("missing file manifest.json" in e for e in errors["no_manifest"]), errors
    assert any(e.startswith("no_manifest v1: fresh-process check") for e in errors["no_manifest"]), errors
    assert any("swapped v1: fresh-process check" in e and "output 'embedding'" in e for e in errors["swapped"]), errors
  finally:
    shutil.rmtree(broken, ignore_errors=True)
