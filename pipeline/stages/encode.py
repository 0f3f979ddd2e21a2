"""The encode stage: item content -> the sharded content-embedding store, and the fitted lexical encoder."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
  from semrec.pipeline.run import Run

# Where the encode stage stores the fitted lexical encoder, relative to the run directory (next to the store).
LEXICAL_ENCODER = os.path.join("encode", "lexical_encoder.npz")


def stage_encode(run: Run) -> dict:
  """Encodes every item's content into ``encode/store`` (resumable, sharded) and fits the lexical encoder
  (``encode/lexical_encoder.npz``) on the catalogue's item texts."""
  from semrec.encoders import build_encoder, encode_corpus
  enc_cfg = run.config.encoder_config()
  encoder = build_encoder(enc_cfg)
  t0 = time.time()
  store = encode_corpus(run.dataset, encoder, run.path("encode", "store"), progress=True)
  contents = store.load()
  seconds = time.time() - t0
  manifest = contents.manifest
  present = contents.mask.mean(axis=0) if len(contents.mask) else []
  return {
      "num_items": int(len(contents.item_ids)),
      "dim": int(contents.embeddings.shape[1]),
      "modalities": list(manifest["encoder"]["modality_order"]),
      "modality_presence": {m: float(p) for m, p in zip(manifest["encoder"]["modality_order"], present)},
      "random_init": manifest["encoder"].get("random_init", {}),
      "items_per_second": round(len(contents.item_ids) / max(seconds, 1e-9), 1),
      "lexical_encoder": fit_lexical_encoder(run),
  }


def fit_lexical_encoder(run: Run) -> Optional[dict]:
  """Fits the ``LexicalEncoder`` of the retriever's lexical channel on the catalogue's item texts (every item,
  held-out ones included, as the k-means ids are) and saves it to ``<run>/encode/lexical_encoder.npz``.

  The settings (width, whether the channel exists at all) are the retrieval comparison's
  (``semrec.towers.lexical_encoder``); the retrieval stage loads the result (``load_lexical_encoder``) instead
  of fitting one. Returns ``{"path": run-relative path, "dim", "vocabulary"}``, or None (no lexical channel or
  no item text: any file of an earlier run is removed, so a stale encoder is never served).
  """
  from semrec.towers.comparison import lexical_encoder
  path = run.path(LEXICAL_ENCODER)
  cmp = dataclasses.replace(run.config.retrieval.comparison, seed=run.config.seed)
  ids = run.dataset.item_ids.astype(str).astype(object)
  enc = lexical_encoder(run.dataset.item_texts(), cmp, item_ids=ids)
  if enc is None:
    if os.path.exists(path):
      os.remove(path)
    return None
  enc.save(path)
  return {"path": LEXICAL_ENCODER, "dim": enc.dim, "vocabulary": int(len(enc.vocabulary))}


def load_lexical_encoder(run: Run):
  """The lexical encoder the encode stage fitted, or None when it fitted none (no lexical channel or no text).

  Raises:
    FileNotFoundError: the encode stage recorded an encoder whose file is gone (naming it and the fix).
    semrec.atomic.CorruptArtefactError: the file is truncated or damaged (naming it and the fix).
  """
  from semrec.encoders import LexicalEncoder
  result = run.stage_result("encode") if run.is_done("encode") else {}
  if "lexical_encoder" in result and result["lexical_encoder"] is None:
    return None
  path = run.path(LEXICAL_ENCODER)
  if "lexical_encoder" not in result and not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no lexical encoder from the encode stage (a run directory from before the "
                            "encode stage fitted it); rerun `semrec encode --force`")
  return LexicalEncoder.load(path)
