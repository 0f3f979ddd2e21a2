"""The encode stage: item content -> the sharded content-embedding store."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from semrec.pipeline.run import Run


def stage_encode(run: Run) -> dict:
  """Encodes every item's content into ``encode/store`` (resumable, sharded)."""
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
  }
