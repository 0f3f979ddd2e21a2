"""Fresh-process checks of exports: a new ``python`` that imports only TensorFlow loads a model and runs it.

Two checkers share the child environment (:func:`child_env`) and the list of modules the child must not
have imported (:data:`FORBIDDEN_MODULES`):

- :data:`CHILD_SCRIPT` (run by ``semrec.export.verify``): loads a SavedModel or a ScaNN searcher, replays
  the warm-up requests and compares the outputs with those stored at export time.
- :func:`score_in_fresh_process`: scores given features with an export's ``serving_default`` signature
  (e.g. a ranker; a request the model's in-graph checks reject raises :class:`ServingError`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from typing import Mapping

import numpy as np

RESULT_MARKER = "SEMREC_VERIFY_RESULT "
# Modules a fresh serving process must not need: the one list both checkers below watch. ScaNN is allowed
# only for the models whose manifest says they need its ops.
FORBIDDEN_MODULES = ("semrec", "tensorflow_recommenders", "tf_keras", "sentencepiece", "scann")

# The child imports nothing from semrec: it must show that the export stands on TensorFlow alone. The
# warm-up PredictionLog records are decoded with a few lines of protobuf wire-format parsing, so not even
# tensorflow-serving-api is needed; tensors are parsed with TensorFlow's own TensorProto.
_WIRE_PARSER = r'''
# Minimal protobuf wire-format decoding of a PredictionLog (needs `tensor_pb2` from TensorFlow in globals).
def varint(b, i):
  shift = result = 0
  while True:
    c = b[i]; i += 1
    result |= (c & 0x7F) << shift
    if not c & 0x80:
      return result, i
    shift += 7

def fields(b):
  i = 0
  while i < len(b):
    key, i = varint(b, i)
    fno, wt = key >> 3, key & 7
    if wt == 0:
      v, i = varint(b, i)
    elif wt == 2:
      n, i = varint(b, i); v = b[i:i + n]; i += n
      if i > len(b):
        raise ValueError("truncated protobuf field")
    elif wt == 1:
      v = b[i:i + 8]; i += 8
    elif wt == 5:
      v = b[i:i + 4]; i += 4
    else:
      raise ValueError("unsupported protobuf wire type %d" % wt)
    yield fno, v

def parse_prediction_log(rec):
  # PredictionLog.predict_log = 6 -> PredictLog.request = 1 -> PredictRequest{model_spec = 1, inputs = 2}.
  sig, inputs = "", {}
  for f1, v1 in fields(rec):
    if f1 != 6:
      continue
    for f2, v2 in fields(v1):
      if f2 != 1:
        continue
      for f3, v3 in fields(v2):
        if f3 == 1:
          for f4, v4 in fields(v3):
            if f4 == 3:
              sig = bytes(v4).decode()
        elif f3 == 2:
          key, tensor = None, None
          for f4, v4 in fields(v3):
            if f4 == 1:
              key = bytes(v4).decode()
            elif f4 == 2:
              tensor = tensor_pb2.TensorProto.FromString(bytes(v4))
          inputs[key] = tensor
  if not inputs:
    raise ValueError("record holds no PredictRequest inputs")
  return sig, inputs
'''

# Run as `python -c CHILD_SCRIPT '<json args>'`; prints RESULT_MARKER + a JSON result line.
CHILD_SCRIPT = r'''
import json, sys, time
args = json.loads(sys.argv[1])
''' + _WIRE_PARSER + r'''
res = {"errors": [], "max_abs_diff": None, "num_requests": 0, "load_seconds": None, "import_seconds": None}
t0 = time.time()
try:
  import numpy as np
  if args["kind"] == "saved_model":
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
  if args["import_scann"]:
    import scann  # registers the Scann>* TF ops
    from scann.scann_ops.py import scann_ops_pybind
  res["import_seconds"] = time.time() - t0
  t0 = time.time()

  def compare(i, key, got, exp, rtol, atol):
    got = np.asarray(got)
    if got.dtype.kind == "O":
      got = np.array([bytes(v) for v in got.ravel()], dtype=bytes).reshape(got.shape)
    if got.shape != exp.shape:
      res["errors"].append("request %d, output %r: shape %s, expected %s" % (i, key, list(got.shape), list(exp.shape)))
      return
    if exp.dtype.kind in "fc":
      diff = float(np.max(np.abs(got.astype(np.float64) - exp.astype(np.float64)))) if exp.size else 0.0
      res["max_abs_diff"] = max(res["max_abs_diff"] or 0.0, diff)
      if not np.allclose(got, exp, rtol=rtol, atol=atol, equal_nan=True):
        res["errors"].append("request %d, output %r: max |diff| %.3g exceeds rtol=%g atol=%g" % (i, key, diff, rtol, atol))
    elif not np.array_equal(got, exp):
      bad = int(np.sum(got != exp))
      res["errors"].append("request %d, output %r: %d of %d values differ from those stored at export time" % (i, key, bad, exp.size))

  d = args["dir"]
  if args["kind"] == "saved_model":
    model = tf.saved_model.load(d)
    res["load_seconds"] = time.time() - t0
    sig_name = args["signature_name"]
    if sig_name not in model.signatures:
      raise KeyError("signature %r not found; the SavedModel has %s" % (sig_name, sorted(model.signatures)))
    fn = model.signatures[sig_name]
    expected = np.load(args["expected"], allow_pickle=False)
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(args["warmup"])]
    if not records:
      raise ValueError("the warm-up file holds no records")
    for i, rec in enumerate(records):
      rsig, tensors = parse_prediction_log(rec)
      if rsig and rsig != sig_name:
        res["errors"].append("warm-up request %d calls signature %r, not %r" % (i, rsig, sig_name))
      out = fn(**{k: tf.constant(tf.make_ndarray(t)) for k, t in tensors.items()})
      for key in args["output_names"]:
        if key not in out:
          res["errors"].append("request %d: output %r missing from the signature outputs %s" % (i, key, sorted(out)))
          continue
        name = "r%d__%s" % (i, key)
        if name not in expected.files:
          res["errors"].append("request %d, output %r: no expected value stored" % (i, key))
          continue
        compare(i, key, out[key].numpy(), expected[name], args["rtol"], args["atol"])
    res["num_requests"] = len(records)
  else:
    searcher = scann_ops_pybind.load_searcher(d + "/searcher")
    res["load_seconds"] = time.time() - t0
    with open(d + "/item_ids.txt", encoding="utf-8") as f:
      item_ids = f.read().split("\n")[:-1]
    if len(item_ids) != args["num_items"]:
      raise ValueError("item_ids.txt has %d ids, the manifest records %d" % (len(item_ids), args["num_items"]))
    expected = np.load(args["expected"], allow_pickle=False)
    idx, dist = searcher.search_batched(expected["queries"], final_num_neighbors=args["k"])
    got_ids = np.array([[item_ids[j].encode() for j in row] for row in np.asarray(idx)], dtype=bytes)
    compare(0, "item_ids", got_ids, expected["item_ids"], args["rtol"], args["atol"])
    compare(0, "scores", np.asarray(dist), expected["scores"], args["rtol"], args["atol"])
    res["num_requests"] = 1
except Exception as e:  # reported, not raised: the parent names the model and version.
  res["errors"].append("%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))
res["modules"] = sorted({m.split(".")[0] for m in sys.modules} & set(args["watch_modules"]))
print("''' + RESULT_MARKER + r'''" + json.dumps(res))
'''


def child_env(keep_pythonpath: bool = True) -> dict[str, str]:
  """Environment of a fresh serving process: no semrec Keras choice, quiet TF logs, no GPU.

  ``keep_pythonpath=False`` also drops ``PYTHONPATH``, so an uninstalled semrec checkout cannot be imported.
  """
  env = dict(os.environ)
  env.pop("TF_USE_LEGACY_KERAS", None)  # a serving process knows nothing of semrec's Keras choice.
  if not keep_pythonpath:
    env.pop("PYTHONPATH", None)
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env.setdefault("CUDA_VISIBLE_DEVICES", "")
  return env


_SCORE_SCRIPT = textwrap.dedent("""
    import os, sys
    import tensorflow as tf
    export_dir, in_dir, out_dir = sys.argv[1:4]
    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    feats = {}
    for name in sorted(os.listdir(in_dir)):
      spec = fn.structured_input_signature[1][name]
      feats[name] = tf.io.parse_tensor(tf.io.read_file(os.path.join(in_dir, name)), spec.dtype)
    try:
      out = fn(**feats)
    except tf.errors.InvalidArgumentError as e:
      sys.stderr.write("SERVING_ERROR: " + e.message + "\\n")
      sys.exit(3)
    for k, v in out.items():
      tf.io.write_file(os.path.join(out_dir, k), tf.io.serialize_tensor(v))
    bad = [m for m in %r if m in sys.modules]
    if bad:
      sys.stderr.write("imported non-tensorflow modules: %%s\\n" %% bad)
      sys.exit(4)
    """) % (FORBIDDEN_MODULES,)


class ServingError(RuntimeError):
  """The exported model rejected a request (message from its in-graph asserts)."""


def score_in_fresh_process(export_dir: str, features: Mapping[str, np.ndarray], timeout: float = 300) -> dict:
  """Loads ``export_dir`` in a new Python process that imports only tensorflow and scores ``features``.

  Args:
    export_dir: A SavedModel (version) directory.
    features: {signature input name: array}; string inputs as str/bytes/object arrays.

  Returns:
    {output name: numpy float32 array}. Raises :class:`ServingError` (with the model's assert message) when
    the model rejects the request, ``RuntimeError`` for any other failure (including a forbidden import).
  """
  import tensorflow as tf
  with tempfile.TemporaryDirectory() as tmp:
    in_dir, out_dir = os.path.join(tmp, "in"), os.path.join(tmp, "out")
    os.makedirs(in_dir)
    os.makedirs(out_dir)
    for k, v in features.items():
      arr = np.asarray(v)
      t = tf.constant(arr.astype(str) if arr.dtype == object else arr)
      tf.io.write_file(os.path.join(in_dir, k), tf.io.serialize_tensor(t))
    proc = subprocess.run([sys.executable, "-c", _SCORE_SCRIPT, export_dir, in_dir, out_dir], capture_output=True,
                          text=True, timeout=timeout, env=child_env(keep_pythonpath=False), cwd=tmp)
    if proc.returncode == 3:
      msg = [ln for ln in proc.stderr.splitlines() if "SERVING_ERROR" in ln or "must" in ln]
      raise ServingError("\n".join(msg) or proc.stderr[-2000:])
    if proc.returncode != 0:
      raise RuntimeError(f"fresh-process scoring failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {k: tf.io.parse_tensor(tf.io.read_file(os.path.join(out_dir, k)), tf.float32).numpy()
            for k in os.listdir(out_dir)}
