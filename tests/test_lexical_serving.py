"""The lexical encoder is a serving artefact (issue 26 item 7, issue 27 item 2).

It is fitted and stored by the encode stage (``<run>/encode/lexical_encoder.npz``), handed to the retrieval
comparison (which then fits none), shipped inside every export that reads the ``lexical`` feature
(``assets.extra/lexical_encoder.npz``, versioned with the model, listed with its SHA-256 in the manifest) and
checked by ``verify_export``: a missing, truncated or damaged file fails with a message naming the file, never a
bare ``BadZipFile``.
"""
import json
import os
import types

import semrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from semrec import export as ex
from semrec.atomic import CorruptArtefactError
from semrec.encoders import LexicalEncoder, LexicalEncoderConfig
from semrec.export import serving_layout as sl

CORPUS = ["red apple", "red apple", "blue car car", "blue car car"]
REL = "assets.extra/lexical_encoder.npz"


def _encoder(dim=2):
  return LexicalEncoder(LexicalEncoderConfig(dim=dim)).fit(CORPUS, item_ids=["a", "b", "c", "d"])


class _Candidate(tf.keras.layers.Layer):
  """{"item_id": [B], "lexical": [B, 2]} -> the lexical rows [B, 2]."""

  def call(self, features):
    return tf.identity(features["lexical"])


def _export(base, path):
  enc = LexicalEncoder.load(path)
  feats = {"item_id": np.array(["a", "c"], dtype=object), "lexical": enc.encode(["red apple", "blue car"])}
  return ex.export_candidate_tower(base, _Candidate(), feats, serving_files={"lexical_encoder": path})


# ---------------------------------------------------------------------------------------------------
# LexicalEncoder.load: a damaged file is named.


def test_load_names_a_missing_truncated_or_foreign_file(tmp_path):
  path = str(tmp_path / "lexical_encoder.npz")
  with pytest.raises(FileNotFoundError, match=f"{path}: lexical encoder not found"):
    LexicalEncoder.load(path)
  _encoder().save(path)
  np.testing.assert_allclose(LexicalEncoder.load(path).encode(CORPUS), _encoder().encode(CORPUS))  # round trip
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(CorruptArtefactError, match=rf"{path}: damaged lexical encoder \(BadZipFile"):
    LexicalEncoder.load(path)
  np.savez(path, vocabulary=np.array(["a"]))
  with pytest.raises(CorruptArtefactError, match=r"not a lexical encoder \(missing arrays \['idf', 'components', "
                                                 r"'config'\]\)"):
    LexicalEncoder.load(path)


# ---------------------------------------------------------------------------------------------------
# Shipped with the exports, versioned, verified.


def test_export_ships_the_encoder_and_versions_it(tmp_path):
  src, base = str(tmp_path / "encode" / "lexical_encoder.npz"), str(tmp_path / "models")
  _encoder().save(src)
  v1 = _export(base, src)
  assert v1.manifest["serving_files"] == {"lexical_encoder": REL}
  assert REL in v1.manifest["files"] and v1.manifest["files"][REL]["sha256"] == sl.sha256_file(src)
  shipped = LexicalEncoder.load(os.path.join(v1.path, REL))
  np.testing.assert_array_equal(shipped.components, _encoder().components)
  # A rerun refits the encoder (here on other texts, L = 1) and exports version 2 with its own copy; the copy
  # served by version 1 is untouched.
  LexicalEncoder(LexicalEncoderConfig(dim=1)).fit(["xx yy", "yy zz", "zz xx"]).save(src)
  v2 = _export(base, src)
  assert (v1.version, v2.version) == (1, 2)
  assert LexicalEncoder.load(os.path.join(v1.path, REL)).dim == 2
  assert LexicalEncoder.load(os.path.join(v2.path, REL)).dim == 1
  report = ex.verify_export(base, all_versions=True, load=False, progress=False)
  assert report.ok, report.all_errors


@pytest.mark.parametrize("damage, message", [
    ("delete", "missing file assets.extra/lexical_encoder.npz"),
    ("truncate", "truncated file assets.extra/lexical_encoder.npz"),
    # the manifest rewritten to match a damaged file: the archive itself is checked
    ("rewrite", "unreadable file assets.extra/lexical_encoder.npz (the lexical_encoder this model's clients "
                "need): not a valid .npz archive (BadZipFile"),
])
def test_verify_export_names_a_damaged_encoder(tmp_path, damage, message):
  src, base = str(tmp_path / "lexical_encoder.npz"), str(tmp_path / "models")
  _encoder().save(src)
  res = _export(base, src)
  full = os.path.join(res.path, REL)
  if damage == "delete":
    os.remove(full)
  else:
    data = open(full, "rb").read()
    open(full, "wb").write(data[: len(data) // 2])
  if damage == "rewrite":
    manifest = json.load(open(os.path.join(res.path, sl.MANIFEST_FILE)))
    manifest["files"][REL] = {"size": os.path.getsize(full), "sha256": sl.sha256_file(full)}
    json.dump(manifest, open(os.path.join(res.path, sl.MANIFEST_FILE), "w"))
  report = ex.verify_export(base, load=False, progress=False)
  assert not report.ok
  assert any(message in e for e in report.all_errors), report.all_errors
  assert not any(e.startswith("BadZipFile") for e in report.all_errors)


def test_export_refuses_a_missing_or_unreadable_serving_file(tmp_path):
  base = str(tmp_path / "models")
  feats = {"item_id": np.array(["a"], dtype=object), "lexical": np.ones((1, 2), np.float32)}
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(ex.ExportError, match=r"serving file 'lexical_encoder' \(.*nope.npz\) does not exist"):
    ex.export_candidate_tower(base, _Candidate(), feats, serving_files={"lexical_encoder": missing})
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"PK\x03\x04 not a zip")
  with pytest.raises(ex.ExportError, match=r"serving file 'lexical_encoder' \(.*bad.npz\) is unreadable: not a "
                                           r"valid .npz archive"):
    ex.export_candidate_tower(base, _Candidate(), feats, serving_files={"lexical_encoder": str(bad)})
  assert not os.path.exists(os.path.join(base, "candidate_tower", "1"))


# ---------------------------------------------------------------------------------------------------
# Fitted by the encode stage, received by the comparison.


class _Run:
  """What the encode stage's lexical helpers read of a ``semrec.pipeline.Run``."""

  def __init__(self, run_dir, texts, encode_result=None):
    from semrec.pipeline import RunConfig
    self.run_dir, self.config = str(run_dir), RunConfig()
    self.dataset = types.SimpleNamespace(item_ids=np.array([f"i{i}" for i in range(len(texts))], dtype=object),
                                         item_texts=lambda: pd.Series(texts).tolist())
    self._encode = encode_result

  def path(self, *parts):
    return os.path.join(self.run_dir, *parts)

  def is_done(self, stage):
    return stage == "encode" and self._encode is not None

  def stage_result(self, stage):
    return self._encode


def test_encode_stage_fits_and_stores_the_encoder_the_retrieval_stage_loads(tmp_path):
  from semrec.pipeline.stages.encode import LEXICAL_ENCODER, fit_lexical_encoder, load_lexical_encoder
  run = _Run(tmp_path, CORPUS)
  info = fit_lexical_encoder(run)
  # 4 texts, 4 terms: the 384-d default is capped at min(V, N) - 1 = 3 components; L = 3 columns.
  assert info == {"path": LEXICAL_ENCODER, "dim": 3, "vocabulary": 4}
  assert not os.path.isabs(info["path"]) and os.path.isfile(run.path(LEXICAL_ENCODER))
  run._encode = {"lexical_encoder": info}
  loaded = load_lexical_encoder(run)
  expected = LexicalEncoder(LexicalEncoderConfig(dim=384, seed=run.config.seed)).fit(CORPUS)
  np.testing.assert_allclose(loaded.encode(CORPUS), expected.encode(CORPUS), atol=1e-6)
  os.remove(run.path(LEXICAL_ENCODER))
  with pytest.raises(FileNotFoundError, match="encode/lexical_encoder.npz: lexical encoder not found"):
    load_lexical_encoder(run)
  # A catalogue without text: no encoder, and the file of an earlier fit is removed (never served stale).
  expected.save(run.path(LEXICAL_ENCODER))
  blank = _Run(tmp_path, ["", " ", ""])
  assert fit_lexical_encoder(blank) is None and not os.path.exists(blank.path(LEXICAL_ENCODER))
  blank._encode = {"lexical_encoder": None}
  assert load_lexical_encoder(blank) is None
  # A run directory from before the encode stage fitted it: the fix is named.
  old = _Run(tmp_path / "old", CORPUS, encode_result={"num_items": 4})
  with pytest.raises(FileNotFoundError, match=r"rerun `semrec encode --force`"):
    load_lexical_encoder(old)


def test_the_comparison_uses_the_given_encoder_instead_of_fitting():
  from semrec.towers.comparison import ComparisonConfig, lexical_encoder
  cfg = ComparisonConfig(lexical_dim=2)
  given = _encoder(dim=2)
  assert lexical_encoder(CORPUS, cfg, fitted=given) is given
  with pytest.raises(ValueError, match="fitted with dim 3, the comparison's lexical_dim is 2"):
    lexical_encoder(CORPUS, cfg, fitted=_encoder(dim=3))
  assert lexical_encoder(["", ""], cfg, fitted=given) is None  # no text: no lexical channel
