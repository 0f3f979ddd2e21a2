"""Export layout, manifests, warm-up records, models.config, re-export, corruption detection, REST conversion.

Everything here runs in-process (no model is loaded in a subprocess: corrupted directories are caught by
the structural checks before any load). The fresh-process verification of every artefact kind is in
tests/test_export_verify.py.
"""
import json
import os
import shutil

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from semrec import export as ex
from semrec.export import serving_layout as sl


class _TinyScorer(tf.keras.Model):
  """{"user_id": string [B], "x": float32 [B, 3]} -> (score [B], embedding [B, 2])."""

  def __init__(self):
    super().__init__()
    self.lookup = tf.keras.layers.StringLookup(vocabulary=["u1", "u2", "u3"])
    self.user_embedding = tf.keras.layers.Embedding(4, 2, embeddings_initializer=tf.keras.initializers.RandomNormal(seed=1))
    self.dense = tf.keras.layers.Dense(2, kernel_initializer=tf.keras.initializers.GlorotUniform(seed=2))

  def call(self, features):
    e = self.user_embedding(self.lookup(features["user_id"])) + self.dense(features["x"])
    return tf.reduce_sum(e, axis=-1), e


def _features(n=3, seed=0):
  rng = np.random.default_rng(seed)
  users = np.array(["u1", "u2", "unknown", "u3"][:n], dtype=object)
  return {"user_id": users, "x": rng.normal(size=(n, 3)).astype(np.float32)}


def _export_tiny(base, name="scorer", model=None, **kwargs):
  model = model or _TinyScorer()
  feats = _features()
  model(feats)
  return model, feats, ex.export_keras_module(model, base, name, [feats, _features(1, seed=1)],
                                              output_names=["score", "embedding"], **kwargs)


def _tree_hashes(path):
  return {os.path.relpath(os.path.join(r, f), path): sl.sha256_file(os.path.join(r, f))
          for r, _, fs in os.walk(path) for f in fs}


class LayoutTest(tf.test.TestCase):

  def test_next_version_dir_skips_non_integer_and_staging_dirs(self):
    base = self.get_temp_dir()
    self.assertEqual(ex.next_version_dir(base, "m"), (1, os.path.join(base, "m", "1")))
    for d in ("1", "3", "foo", ".staging-abc", "10x"):
      os.makedirs(os.path.join(base, "m", d))
    self.assertEqual(ex.list_versions(base, "m"), [1, 3])
    self.assertEqual(ex.next_version_dir(base, "m")[0], 4)
    with self.assertRaisesRegex(ex.ExportError, "model name"):
      ex.next_version_dir(base, "bad/name")

  def test_publish_never_reuses_a_taken_version(self):
    base = self.get_temp_dir()
    os.makedirs(os.path.join(base, "m", "1"))
    with sl.staging_dir(base, "m") as tmp:
      with open(os.path.join(tmp, "f"), "w") as f:
        f.write("x")
      version, path = sl.publish_staging_dir(tmp, base, "m", version=1)  # 1 is taken -> 2
    self.assertEqual(version, 2)
    self.assertTrue(os.path.isfile(os.path.join(path, "f")))
    self.assertEqual(os.listdir(os.path.join(base, "m", "1")), [])

  def test_flatten_roundtrip_and_collision(self):
    nested = {"user_id": 1, "history": {"item_id": 2, "sid": 3}}
    flat, paths = ex.flatten_features(nested)
    self.assertEqual(flat, {"user_id": 1, "history_item_id": 2, "history_sid": 3})
    self.assertEqual(ex.unflatten_features(flat, paths), nested)
    with self.assertRaisesRegex(ex.ExportError, "history_item_id"):
      ex.flatten_features({"history_item_id": 1, "history": {"item_id": 2}})

  def test_input_specs_from_examples(self):
    specs = ex.input_specs_from_examples({"s": np.array(["a"]), "f": np.zeros((2, 5)), "i": np.zeros((2, 3), np.int32)})
    self.assertEqual(specs["s"].dtype, tf.string)
    self.assertEqual(specs["f"].dtype, tf.float32)  # float64 examples serve as float32
    self.assertEqual(specs["f"].shape.as_list(), [None, 5])
    self.assertEqual(specs["i"].dtype, tf.int32)
    with self.assertRaisesRegex(ex.ExportError, "scalar"):
      ex.input_specs_from_examples({"s": np.float32(1.0)})


class ExportTest(tf.test.TestCase):

  def test_export_writes_tf_serving_layout_manifest_and_warmup(self):
    base = self.get_temp_dir()
    model, feats, res = _export_tiny(base, metrics={"auc": 0.75}, data_fingerprint="abc123")
    self.assertEqual((res.name, res.version), ("scorer", 1))
    self.assertEqual(res.path, os.path.join(base, "scorer", "1"))
    for rel in ("saved_model.pb", "variables/variables.index", sl.WARMUP_FILE, sl.EXPECTED_OUTPUTS_FILE,
                sl.MANIFEST_FILE):
      self.assertTrue(os.path.isfile(os.path.join(res.path, rel)), rel)
    self.assertEqual([d for d in os.listdir(os.path.join(base, "scorer")) if d.startswith(".")], [])

    manifest = ex.read_manifest(res.path)
    self.assertEqual(manifest["inputs"], {"user_id": {"dtype": "string", "shape": [None]},
                                          "x": {"dtype": "float32", "shape": [None, 3]}})
    self.assertEqual(manifest["outputs"], {"score": {"dtype": "float32", "shape": [None]},
                                           "embedding": {"dtype": "float32", "shape": [None, 2]}})
    self.assertEqual(manifest["signature_name"], "serving_default")
    self.assertFalse(manifest["needs_scann_ops"])
    self.assertEqual(manifest["metrics"], {"auc": 0.75})
    self.assertEqual(manifest["training_data_fingerprint"], "abc123")
    self.assertEqual(manifest["versions"]["tensorflow"], tf.__version__)
    self.assertIn("semrec", manifest["versions"])
    self.assertIn("scann", manifest["versions"])
    self.assertEqual(manifest["warmup"]["num_requests"], 2)
    self.assertEqual(manifest["warmup"]["batch_sizes"], [3, 1])
    self.assertEqual(manifest["files"]["saved_model.pb"]["size"], os.path.getsize(os.path.join(res.path, "saved_model.pb")))

    # Warm-up records parse with the tensorflow-serving-api protos and hold the example inputs.
    requests = ex.read_warmup_requests(res.path)
    self.assertLen(requests, 2)
    sig, inputs = requests[0]
    self.assertEqual(sig, "serving_default")
    self.assertAllEqual(inputs["user_id"], [b"u1", b"u2", b"unknown"])
    self.assertAllClose(inputs["x"], feats["x"])

    # Stored outputs equal the model's, and the reloaded signature reproduces them.
    score, emb = model(feats)
    stored = ex.read_expected_outputs(res.path, 2, ["score", "embedding"])
    self.assertAllClose(stored[0]["score"], score)
    self.assertAllClose(stored[0]["embedding"], emb)
    fn = tf.saved_model.load(res.path).signatures["serving_default"]
    out = fn(user_id=tf.constant(["u1", "u2", "unknown"]), x=tf.constant(feats["x"]))
    self.assertAllClose(out["score"], score)

  def test_reexport_writes_new_version_and_never_touches_the_served_one(self):
    base = self.get_temp_dir()
    model, feats, first = _export_tiny(base)
    before = _tree_hashes(first.path)
    mtimes = {f: os.path.getmtime(os.path.join(first.path, f)) for f in before}
    model.dense.kernel.assign(model.dense.kernel + 1.0)  # "retrained"
    second = ex.export_keras_module(model, base, "scorer", feats, output_names=["score", "embedding"])
    self.assertEqual(second.version, 2)
    self.assertEqual(_tree_hashes(first.path), before)
    self.assertEqual({f: os.path.getmtime(os.path.join(first.path, f)) for f in before}, mtimes)
    self.assertEqual(ex.list_versions(base, "scorer"), [1, 2])
    self.assertEqual(ex.latest_version(base, "scorer"), 2)
    s1 = ex.read_expected_outputs(first.path, 1, ["score"])[0]["score"]
    s2 = ex.read_expected_outputs(second.path, 1, ["score"])[0]["score"]
    self.assertNotAllClose(s1, s2)

  def test_failed_export_leaves_no_version_and_no_staging_dir(self):
    base = self.get_temp_dir()
    model = _TinyScorer()
    model(_features())
    with self.assertRaisesRegex(ex.ExportError, "missing \\['x'\\]"):
      ex.export_keras_module(model, base, "scorer", {"user_id": np.array(["u1"])},
                             input_specs=ex.input_specs_from_examples(_features()))
    with self.assertRaisesRegex(ex.ExportError, r"feature 'x' has shape \[1, 4\]"):
      ex.export_keras_module(model, base, "scorer", [_features(), {"user_id": np.array(["u1"]),
                                                                     "x": np.zeros((1, 4), np.float32)}])
    self.assertEqual(ex.list_versions(base, "scorer"), [])
    self.assertFalse(os.path.exists(os.path.join(base, "scorer")) and os.listdir(os.path.join(base, "scorer")))

  def test_nested_features_become_flat_signature_inputs(self):
    base = self.get_temp_dir()

    class HistoryModel(tf.keras.layers.Layer):
      def call(self, f):
        n = tf.reduce_sum(tf.cast(tf.not_equal(f["history"]["item_id"], ""), tf.float32), axis=1)
        return n + tf.cast(tf.strings.length(f["user_id"]), tf.float32)

    feats = {"user_id": np.array(["ab", "c"], dtype=object),
             "history": {"item_id": np.array([["i1", ""], ["i2", "i3"]], dtype=object)}}
    res = ex.export_keras_module(HistoryModel(), base, "hist", feats, output_names=["n"])
    self.assertEqual(sorted(res.manifest["inputs"]), ["history_item_id", "user_id"])
    fn = tf.saved_model.load(res.path).signatures["serving_default"]
    out = fn(user_id=tf.constant(["ab", "c"]), history_item_id=tf.constant([["i1", ""], ["i2", "i3"]]))
    self.assertAllClose(out["n"], [3.0, 3.0])  # 1 item + len("ab"), 2 items + len("c")

  def test_serving_module_needs_a_dict_signature(self):
    module = tf.Module()
    module.serve = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    with self.assertRaisesRegex(ex.ExportError, "one dict of named raw features"):
      ex.export_serving_module(module, self.get_temp_dir(), "m", {"x": np.zeros(2, np.float32)})

  def test_warmup_request_limits(self):
    with self.assertRaisesRegex(ex.ExportError, "at least one warm-up request"):
      ex.write_warmup_requests(self.get_temp_dir(), "serving_default", [])
    with self.assertRaisesRegex(ex.ExportError, "at most 1000"):
      ex.write_warmup_requests(self.get_temp_dir(), "serving_default", [{"x": np.zeros(1)}] * 1001)


class ModelsConfigTest(tf.test.TestCase):

  def test_models_config_parses_with_tf_serving_proto(self):
    base = self.get_temp_dir()
    _export_tiny(base, name="a")
    _export_tiny(base, name="b")
    path = ex.write_models_config(base, base_path_prefix="/models")
    self.assertEqual(path, os.path.join(base, "models.config"))
    configs = ex.read_models_config(path)
    self.assertEqual(configs, [{"name": "a", "base_path": "/models/a", "model_platform": "tensorflow"},
                               {"name": "b", "base_path": "/models/b", "model_platform": "tensorflow"}])
    configs = ex.read_models_config(ex.write_models_config(base, ["b"]))
    self.assertEqual(configs, [{"name": "b", "base_path": os.path.join(os.path.abspath(base), "b"),
                                "model_platform": "tensorflow"}])
    with self.assertRaisesRegex(ex.ExportError, "no version directory"):
      ex.write_models_config(base, ["missing"])

  def test_scann_models_are_flagged_and_left_out_of_the_stock_config(self):
    base = self.get_temp_dir()
    _export_tiny(base, name="plain")
    rng = np.random.default_rng(0)
    query = tf.keras.layers.Dense(4, kernel_initializer=tf.keras.initializers.GlorotUniform(seed=0))
    feats = {"x": rng.normal(size=(2, 3)).astype(np.float32)}
    query(feats["x"])
    with self.assertRaisesRegex(ex.ExportError, "does not track"):
      ex.export_brute_force_retrieval(base, lambda f: query(f["x"]), feats, k=3,
                                      candidate_embeddings=rng.normal(size=(30, 4)), item_ids=[f"i{i}" for i in range(30)])
    self.assertEqual(ex.list_versions(base, "retrieval_brute_force"), [])
    res = ex.export_scann_retrieval(base, lambda f: query(f["x"]), feats, k=3, track={"query": query},
                                    candidate_embeddings=rng.normal(size=(30, 4)), item_ids=[f"i{i}" for i in range(30)],
                                    scann_options={"num_leaves": 3, "num_leaves_to_search": 2})
    self.assertTrue(res.needs_scann_ops)
    self.assertIn("Scann>ScannSearchBatched", res.manifest["extra"]["custom_ops"])
    paths = ex.write_serving_configs(base)
    with open(paths["all"]) as f:
      text = f.read()
    self.assertIn("retrieval_scann: needs ScaNN custom ops", text)
    self.assertEqual([c["name"] for c in ex.read_models_config(paths["all"])], ["plain", "retrieval_scann"])
    self.assertEqual([c["name"] for c in ex.read_models_config(paths["stock"])], ["plain"])


_PRISTINE = []


def _pristine_export():
  """One export shared by the corruption cases (each corrupts its own copy)."""
  if not _PRISTINE:
    import atexit
    import tempfile
    path = tempfile.mkdtemp(prefix="semrec_export_pristine_")
    atexit.register(shutil.rmtree, path, True)
    _export_tiny(path)
    _PRISTINE.append(path)
  return _PRISTINE[0]


class CorruptionTest(tf.test.TestCase, parameterized.TestCase):
  """Incomplete / corrupted version directories are reported with model, version and file.

  ``load=False`` keeps these in-process; with the default ``load=True`` a directory whose files are
  missing or do not match the manifest is not loaded at all (see test_export_verify.py for the
  fresh-process side)."""

  @parameterized.named_parameters(
      ("missing_saved_model_pb", "delete", "saved_model.pb", "missing file saved_model.pb"),
      ("missing_variables_index", "delete", "variables/variables.index", "missing file variables/variables.index"),
      ("missing_variables_data", "delete", "variables/variables.data-00000-of-00001",
       "missing file variables/variables.data-00000-of-00001"),
      ("truncated_variables", "truncate", "variables/variables.data-00000-of-00001",
       "truncated file variables/variables.data-00000-of-00001"),
      ("truncated_saved_model", "truncate", "saved_model.pb", "truncated file saved_model.pb"),
      ("flipped_bytes", "flip", "saved_model.pb", "corrupted file saved_model.pb: SHA-256"),
      ("missing_warmup", "delete", sl.WARMUP_FILE, "missing file assets.extra/tf_serving_warmup_requests"),
      ("missing_expected", "delete", sl.EXPECTED_OUTPUTS_FILE, "missing file assets.extra/semrec_expected_outputs.npz"),
      ("missing_manifest", "delete", sl.MANIFEST_FILE, "missing file manifest.json"),
      ("broken_manifest", "truncate", sl.MANIFEST_FILE, "unreadable file manifest.json"),
  )
  def test_structural_errors_are_named(self, action, rel, message):
    base = os.path.join(self.get_temp_dir(), self._testMethodName)
    shutil.copytree(_pristine_export(), base)
    path = os.path.join(base, "scorer", "1", rel)
    if action == "delete":
      os.remove(path)
    elif action == "truncate":
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    else:
      with open(path, "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 0xFF]))
    check = ex.verify_model_version(base, "scorer", 1, load=False)
    self.assertFalse(check.ok)
    self.assertTrue(any(e.startswith("scorer v1: ") and message in e for e in check.errors), check.errors)
    self.assertIsNone(check.load_seconds)
    report = ex.verify_export(base, load=False)
    self.assertFalse(report.ok)
    self.assertIn("FAIL", report.to_markdown())
    self.assertIn(message, report.to_markdown())

  def test_missing_versions_and_bad_base(self):
    base = self.get_temp_dir()
    os.makedirs(os.path.join(base, "empty_model", ".staging-123"))
    report = ex.verify_export(base)
    self.assertFalse(report.ok)
    self.assertIn("empty_model: no integer version directory", report.all_errors[0])
    self.assertIn("does not exist", ex.verify_export(os.path.join(base, "nope")).errors[0])
    _, _, res = _export_tiny(base)
    self.assertIn("is a SavedModel version directory", ex.verify_export(res.path).errors[0])
    report = ex.verify_export(base, names=["ghost"])
    self.assertIn("ghost: model directory", report.all_errors[0])

  def test_damaged_export_is_not_loaded(self):
    base = os.path.join(self.get_temp_dir(), "damaged")
    shutil.copytree(_pristine_export(), base)
    os.remove(os.path.join(base, "scorer", "1", "variables", "variables.index"))
    check = ex.verify_model_version(base, "scorer", 1)  # load=True, but the structure is already wrong
    self.assertFalse(check.ok)
    self.assertIsNone(check.load_seconds)
    self.assertIn("scorer v1: not loaded, because of the errors above", check.warnings)

  def test_models_config_pointing_to_missing_model_is_reported(self):
    base = self.get_temp_dir()
    _export_tiny(base, name="a")
    ex.write_models_config(base)
    shutil.rmtree(os.path.join(base, "a"))
    report = ex.verify_export(base)
    self.assertTrue(any("model 'a' is configured" in e for e in report.errors), report.errors)


class RestTest(tf.test.TestCase, parameterized.TestCase):

  SPECS = {"user_id": tf.TensorSpec([None], tf.string, name="user_id"),
           "x": tf.TensorSpec([None, 3], tf.float32, name="x")}

  def test_row_and_columnar_forms_give_the_same_inputs(self):
    rows = {"instances": [{"user_id": "u1", "x": [1, 2, 3]}, {"user_id": {"b64": "dTI="}, "x": [4, 5, 6]}]}
    cols = {"signature_name": "serving_default", "inputs": {"user_id": ["u1", "u2"], "x": [[1, 2, 3], [4, 5, 6]]}}
    r = ex.predict_request_to_inputs(json.dumps(rows), self.SPECS)
    c = ex.predict_request_to_inputs(cols, self.SPECS)
    self.assertEqual((r.form, c.form), ("row", "columnar"))
    for p in (r, c):
      self.assertEqual(list(p.inputs["user_id"]), [b"u1", b"u2"])
      self.assertEqual(p.inputs["x"].dtype, np.float32)
      self.assertAllClose(p.inputs["x"], [[1, 2, 3], [4, 5, 6]])

  def test_single_input_signature_accepts_bare_values(self):
    specs = {"content": tf.TensorSpec([None, 2], tf.float32, name="content")}
    self.assertAllClose(ex.predict_request_to_inputs({"instances": [[1, 2], [3, 4]]}, specs).inputs["content"],
                        [[1, 2], [3, 4]])
    self.assertAllClose(ex.predict_request_to_inputs({"inputs": [[1, 2]]}, specs).inputs["content"], [[1, 2]])

  @parameterized.named_parameters(
      ("both_forms", {"instances": [], "inputs": {}}, "exactly one of"),
      ("no_form", {"signature_name": "x"}, "exactly one of"),
      ("not_json", "{oops", "not valid JSON"),
      ("empty_instances", {"instances": []}, "non-empty list"),
      ("unknown_input", {"inputs": {"user_id": ["u"], "x": [[1, 2, 3]], "z": [1]}}, "input 'z' is not in the signature"),
      ("missing_input", {"inputs": {"user_id": ["u"]}}, r"missing \['x'\]"),
      ("instance_keys_differ", {"instances": [{"user_id": "u", "x": [1, 2, 3]}, {"user_id": "v"}]},
       "instance 1: inputs"),
      ("wrong_width", {"instances": [{"user_id": "u", "x": [1, 2]}]}, "instance 0, input 'x': shape \\[2\\]"),
      ("ragged", {"inputs": {"user_id": ["u", "v"], "x": [[1, 2, 3], [1]]}}, "input 'x'"),
      ("not_a_number", {"inputs": {"user_id": ["u"], "x": [["a", "b", "c"]]}}, "cannot convert to float32"),
      ("bad_b64", {"inputs": {"user_id": [{"b64": "###"}], "x": [[1, 2, 3]]}}, "invalid base64"),
      ("batch_mismatch", {"inputs": {"user_id": ["u", "v"], "x": [[1, 2, 3]]}}, "different batch sizes"),
      ("unnamed_multi_input", {"instances": [[1, 2, 3]]}, "single-input signature"),
  )
  def test_bad_requests_name_the_problem(self, body, message):
    with self.assertRaisesRegex(ex.PredictRequestError, message):
      ex.predict_request_to_inputs(body, self.SPECS)

  def test_responses_match_the_request_form(self):
    outputs = {"score": np.array([0.5, 1.5], np.float32), "item_ids": np.array([[b"a", b"b"], [b"c", b"d"]], object),
               "raw_bytes": np.array([b"\x00\xff", b"z"], object)}
    row = ex.outputs_to_predict_response(outputs, "row")
    self.assertEqual(row["predictions"][0], {"score": 0.5, "item_ids": ["a", "b"], "raw_bytes": {"b64": "AP8="}})
    col = ex.outputs_to_predict_response(outputs, "columnar")
    self.assertEqual(col["outputs"]["item_ids"], [["a", "b"], ["c", "d"]])
    self.assertEqual(ex.outputs_to_predict_response({"y": np.array([1, 2])}, "row"), {"predictions": [1, 2]})
    self.assertEqual(ex.outputs_to_predict_response({"y": np.array([1, 2])}, "columnar"), {"outputs": [1, 2]})
    self.assertEqual(ex.outputs_to_predict_response({"y": np.array([np.nan, 1.0])}, "columnar"), {"outputs": [None, 1.0]})
    with self.assertRaisesRegex(ex.PredictRequestError, "one common batch size"):
      ex.outputs_to_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, "row")

  def test_rest_predict_against_a_reloaded_savedmodel(self):
    base = self.get_temp_dir()
    model, feats, res = _export_tiny(base)
    loaded = tf.saved_model.load(res.path)
    score, emb = model(feats)
    rows = {"instances": [{"user_id": str(u), "x": x.tolist()} for u, x in zip(feats["user_id"], feats["x"])]}
    out = ex.rest_predict(loaded, json.dumps(rows))
    self.assertAllClose([p["score"] for p in out["predictions"]], score, atol=1e-5)
    self.assertAllClose([p["embedding"] for p in out["predictions"]], emb, atol=1e-5)
    cols = {"inputs": {"user_id": list(feats["user_id"]), "x": feats["x"].tolist()}}
    out = ex.rest_predict(loaded, cols)
    self.assertAllClose(out["outputs"]["score"], score, atol=1e-5)
    json.dumps(out)  # the response is plain JSON
    with self.assertRaisesRegex(ex.PredictRequestError, "signature 'nope' not found"):
      ex.rest_predict(loaded, {"signature_name": "nope", "inputs": cols["inputs"]})


class ArtefactExporterTest(tf.test.TestCase, parameterized.TestCase):
  """Per-artefact exporters with plain Keras stand-ins (the real classes are in test_export_verify.py)."""

  def test_sid_assigner_signature_and_bad_content(self):
    base = self.get_temp_dir()

    class Codes(tf.keras.layers.Layer):  # [B, 4] -> [B, 2]: sign bits of two column pairs
      def call(self, x):
        return tf.cast(x[:, ::2] > 0, tf.int32) + 2 * tf.cast(x[:, 1::2] > 0, tf.int32)

    content = np.array([[1, 1, -1, -1], [-1, 1, 1, -1]], np.float32)
    res = ex.export_sid_assigner(base, Codes(), content)
    self.assertEqual(sorted(res.manifest["outputs"]), ["sid"])
    self.assertEqual(res.manifest["inputs"]["content"]["shape"], [None, 4])
    fn = tf.saved_model.load(res.path).signatures["serving_default"]
    self.assertAllEqual(fn(content=tf.constant(content))["sid"], [[3, 0], [2, 1]])  # x0>0 + 2*(x1>0), ...
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "content: NaN/inf values"):
      fn(content=tf.constant([[np.nan, 0, 0, 0]], tf.float32))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"content: dimension 1 must be 4"):
      fn(content=tf.zeros([1, 5]))
    with self.assertRaisesRegex(ex.ExportError, r"must be \[B, D\]"):
      ex.export_sid_assigner(base, Codes(), np.zeros(4, np.float32))

  def test_retrieval_input_errors(self):
    base = self.get_temp_dir()
    query = tf.keras.layers.Dense(2)
    feats = {"x": np.ones((2, 3), np.float32)}
    ids = [f"i{i}" for i in range(4)]
    kw = dict(candidate_embeddings=np.ones((4, 2), np.float32), item_ids=ids)
    with self.assertRaisesRegex(ex.ExportError, "k=5 exceeds the 4 candidates"):
      ex.export_brute_force_retrieval(base, lambda f: query(f["x"]), feats, k=5, track={"q": query}, **kw)
    bad = np.ones((4, 2), np.float32)
    bad[2, 1] = np.inf
    with self.assertRaisesRegex(ex.ExportError, "item 'i2' has NaN/inf"):
      ex.export_brute_force_retrieval(base, lambda f: query(f["x"]), feats, k=2, candidate_embeddings=bad,
                                      item_ids=ids, track={"q": query})
    with self.assertRaisesRegex(ex.ExportError, "either `index` or both"):
      ex.export_brute_force_retrieval(base, lambda f: query(f["x"]), feats, k=2, track={"q": query})
    with self.assertRaisesRegex(ex.ExportError, "kind must be"):
      ex.export_retrieval(base, query, feats, kind="annoy", **kw)
    self.assertEqual(os.listdir(base), [])

  def test_brute_force_retrieval_returns_exact_top_k(self):
    base = self.get_temp_dir()
    query = tf.keras.layers.Dense(2, use_bias=False, kernel_initializer="identity")  # q = x[:, :2]
    feats = {"x": np.array([[1, 0, 0], [0, 1, 0]], np.float32)}
    cands = np.array([[0.9, 0], [0, 0.8], [0.5, 0.5], [-1, 0]], np.float32)
    res = ex.export_brute_force_retrieval(base, lambda f: query(f["x"]), feats, k=2, candidate_embeddings=cands,
                                          item_ids=["a", "b", "c", "d"], track={"q": query})
    self.assertFalse(res.needs_scann_ops)
    self.assertEqual(res.manifest["extra"]["custom_ops"], [])
    out = tf.saved_model.load(res.path).signatures["serving_default"](x=tf.constant(feats["x"]))
    # query (1, 0): scores a=0.9, c=0.5; query (0, 1): b=0.8, c=0.5
    self.assertAllEqual(out["item_ids"], [[b"a", b"c"], [b"b", b"c"]])
    self.assertAllClose(out["scores"], [[0.9, 0.5], [0.8, 0.5]])

  @parameterized.parameters("brute_force", "scann")
  def test_multi_interest_retrieval_scores_by_the_best_vector(self, kind):
    base = self.get_temp_dir()
    cands = np.array([[0.9, 0], [0, 0.8], [0.5, 0.5], [-1, 0], [0.6, 0.1]], np.float32)
    # One user, K = 2 query vectors (1, 0) and (0, 1): max scores a .9, b .8, c .5, d 0, e .6.
    feats = {"x": np.array([[[1, 0], [0, 1]]], np.float32)}
    ids = ["a", "b", "c", "d", "e"]
    if kind == "scann":  # ScaNN's quantiser trains on >= 16 rows: add 40 items that score below 0 for both vectors
      cands = np.concatenate([cands, -1 - np.random.default_rng(0).random((40, 2)).astype(np.float32)])
      ids += [f"z{i}" for i in range(40)]
    kw = dict(k=3, candidate_embeddings=cands, item_ids=ids)
    if kind == "scann":  # search every leaf and rescore every row exactly: the merge, not ScaNN, is under test
      kw["scann_options"] = {"num_leaves": 2, "num_leaves_to_search": 2, "num_reordering_candidates": len(ids)}
    res = ex.export_retrieval(base, lambda f: tf.identity(f["x"]), feats, kind=kind, **kw)
    out = tf.saved_model.load(res.path).signatures["serving_default"](x=tf.constant(feats["x"]))
    # c is in both vectors' top 3 (.5 each) and is returned once; e (.6) comes before it.
    self.assertAllEqual(out["item_ids"], [[b"a", b"b", b"e"]])
    self.assertAllClose(out["scores"], [[0.9, 0.8, 0.6]], atol=1e-2 if kind == "scann" else 1e-6)

  def test_generic_keras_ranker_and_serving_module_paths(self):
    base = self.get_temp_dir()
    inputs = {"candidate_item_id": tf.keras.Input((), dtype=tf.string, name="candidate_item_id"),
              "context": tf.keras.Input((2,), name="context")}
    h = tf.keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(inputs["context"])[:, 0]
    model = tf.keras.Model(inputs, {"label": h})
    feats = {"candidate_item_id": np.array(["a", "b"], dtype=object), "context": np.array([[0, 0], [1, 1]], np.float32)}
    res = ex.export_ranker(base, model, feats)
    self.assertEqual(res.manifest["artefact"], "ranker")
    stored = ex.read_expected_outputs(res.path, 1, ["label"])[0]["label"]
    self.assertAllClose(stored, [0.5, 1 / (1 + np.exp(-2))])  # sigmoid(0), sigmoid(1 + 1)
    module = ex.KerasServingModule(model, ex.input_specs_from_examples(feats))
    res2 = ex.export_ranker(base, module, feats)  # a serving module is exported as is
    self.assertEqual(res2.version, 2)


class WireParserTest(tf.test.TestCase):
  """The fresh-process verifier decodes warm-up records without tensorflow-serving-api; check it against
  the real protos on several dtypes and ranks."""

  def test_wire_parser_matches_the_serving_protos(self):
    from tensorflow.core.framework import tensor_pb2

    from semrec.export import fresh_process

    compile(fresh_process.CHILD_SCRIPT, "<verify child>", "exec")  # the child script is valid Python
    ns = {"tensor_pb2": tensor_pb2}
    exec(fresh_process._WIRE_PARSER, ns)  # noqa: S102 - our own constant
    d = self.get_temp_dir()
    requests = [
        {"ids": np.array([["a", ""], ["é", "long id " * 40]], dtype=object), "codes": np.arange(12, dtype=np.int32).reshape(2, 2, 3)},
        {"f": np.array([[1.5, -2.0]], np.float32), "big": np.array([2**40], np.int64), "flag": np.array([True, False])},
    ]
    ex.write_warmup_requests(d, "serving_default", requests, model_name="m")
    expected = ex.read_warmup_requests(d)
    raw = [r.numpy() for r in tf.data.TFRecordDataset(os.path.join(d, sl.WARMUP_FILE))]
    self.assertLen(raw, 2)
    for rec, (sig, inputs) in zip(raw, expected):
      got_sig, got = ns["parse_prediction_log"](rec)
      self.assertEqual(got_sig, sig)
      self.assertEqual(sorted(got), sorted(inputs))
      for k in inputs:
        self.assertAllEqual(tf.make_ndarray(got[k]), inputs[k])
    self.assertEqual(tf.make_ndarray(ns["parse_prediction_log"](raw[0])[1]["ids"])[1, 0].decode(), "é")
    with self.assertRaisesRegex(ValueError, "truncated|no PredictRequest"):
      ns["parse_prediction_log"](raw[0][: len(raw[0]) // 2])
