"""Exporting the generative retriever and the offline next-item table for TF Serving.

Both go through ``export_serving_module`` (the one export path: ``<base>/<name>/<next version>/``, warm-up
records in ``assets.extra/tf_serving_warmup_requests``, the warm-up outputs stored for ``verify_export``, a
manifest with file hashes). Both graphs use standard TF ops only (no ScaNN, no semrec import when loaded).

* ``export_generative_retriever``: ``serving_default({"history_item_id": [B, H'] string[, "user_id": [B]
  string]}) -> {"item_ids": [B, k] string, "scores": [B, k] float32}``: the SID lookup, the encoder-decoder, the
  trie and the beam search are all inside the SavedModel. An unknown history item fails the request with
  "history_item_id: unknown item id(s), not in the SID table: ..." (a wrong rank or dtype is refused by the
  signature / the serving module's checks, naming the input).
* ``export_next_item_table``: ``serving_default({"item_id": [B] string}) -> {"item_ids": [B, k], "scores":
  [B, k], "found": [B] bool}`` (a ``tf.lookup.StaticHashTable`` over the head items).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from semrec.export.serving_module import ExportResult, export_serving_module
from semrec.generative import (HISTORY_INPUT, USER_INPUT, GenerativeModel, NextItemTable, NextItemTableModule,
                               pad_left)


def export_generative_retriever(base_dir: str, model: GenerativeModel, example_histories, *, name: str = "generative",
                                beam_width: Optional[int] = None, top_k: Optional[int] = None,
                                candidates: Optional[Sequence] = None, exclude_history: bool = True,
                                example_user_ids=None, metrics: Optional[dict] = None,
                                data_fingerprint: Optional[str] = None, extra: Optional[dict] = None) -> ExportResult:
  """Writes the generative retriever as ``<base_dir>/<name>/<next integer version>/``.

  Args:
    base_dir: Export base directory.
    model: A trained ``GenerativeModel`` (``with_sid_table`` first to serve items assigned after training).
    example_histories: [B, H'] item ids ("" padding, most recent last): the warm-up batch; its first row is also
      sent alone (the one-user request).
    name: TF Serving model name.
    beam_width, top_k: W and k (default the model config's).
    candidates: Optional items the trie is restricted to.
    exclude_history: Never return an item of the request's history.
    example_user_ids: [B] user ids (models with user buckets).
    metrics, data_fingerprint, extra: recorded in the manifest.
  """
  module = model.retrieval_module(beam_width, top_k, candidates, exclude_history)
  hist = np.asarray(example_histories, dtype=object)
  if hist.ndim != 2 or hist.shape[0] == 0:
    raise ValueError(f"example_histories must be a non-empty [B, H] array of item ids, got shape {hist.shape}")
  req = {HISTORY_INPUT: pad_left([[x for x in r if x != ""] for r in hist], hist.shape[1]).astype(str)}
  if USER_INPUT in module.input_specs:
    if example_user_ids is None:
      raise ValueError("this model has user-bucket tokens: pass example_user_ids")
    req[USER_INPUT] = np.asarray(example_user_ids, dtype=object).astype(str)
  one = {k: v[:1] for k, v in req.items()}
  info = {"beam_width": module.beam_width, "top_k": module.top_k, "exclude_history": module.exclude_history,
          "max_history": module.max_history, "trie_items": int(module.trie_item_ids.shape[0]) - 1,
          "trie_bytes": int(sum(int(np.prod(c.shape)) * 4 for c in module.trie_children)),
          "vocab": model.vocab.to_dict(), "config": _config_dict(model), **dict(extra or {})}
  return export_serving_module(module, base_dir, name, [req, one], artefact="generative_retrieval",
                               data_fingerprint=data_fingerprint, metrics=metrics, extra=info, needs_scann_ops=False,
                               description="history item ids -> top-k item ids decoded as Semantic IDs "
                                           "(trie-constrained beam search in the graph)")


def export_next_item_table(base_dir: str, table: NextItemTable, *, name: str = "next_item_table",
                           example_item_ids=None, metrics: Optional[dict] = None,
                           data_fingerprint: Optional[str] = None) -> ExportResult:
  """Writes the offline next-item table as a lookup SavedModel (``<base_dir>/<name>/<version>/``).

  ``example_item_ids`` (default: the first two head items and one id not in the table) are the warm-up request.
  """
  module = NextItemTableModule(table)
  if example_item_ids is None:
    example_item_ids = list(np.asarray(table.item_ids, dtype=object)[:2]) + ["__not_in_table__"]
  req = {"item_id": np.asarray(example_item_ids, dtype=object).astype(str)}
  info = {"table_items": int(len(table.item_ids)), "k": int(module.k), "coverage": dict(table.coverage)}
  return export_serving_module(module, base_dir, name, [req], artefact="next_item_table",
                               data_fingerprint=data_fingerprint, metrics=metrics, extra=info, needs_scann_ops=False,
                               description="item id -> decoded next items (offline, unpersonalised)")


def _config_dict(model: GenerativeModel) -> dict:
  from semrec.config import to_dict
  return to_dict(model.config)


__all__ = ["export_generative_retriever", "export_next_item_table"]
