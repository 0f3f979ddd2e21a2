"""Resumable batch encoding of a corpus into a sharded embedding store.

Store layout (``store_dir/``):
  manifest.json                 format, dataset name/fingerprint, encoder info (models, weights, random-init
                                flags, dims, offsets, modality order, config), shard size, shard list with
                                per-shard content hashes, fallbacks, ``complete`` flag. No timestamps, so two
                                runs over the same inputs write identical manifests.
  shard-00000-of-00012.npz      item_ids [n] str, embeddings [n, D] float32, mask [n, M] float32,
                                fallbacks (JSON string), content_sha256 (the hash of the three arrays as
                                written). Written to a temp file, then ``os.replace``.

Resuming: ``encode_corpus`` re-plans the shards from the dataset (catalogue order, ``shard_size``), keeps
every shard file already present whose item ids match the plan and whose contents still match the hash
written with them (an edited, damaged or older-format shard is re-encoded: semrec never re-hashes a file it
did not just compute), and encodes only the rest. A store started for another dataset, encoder or shard
size is refused, not mixed; ``overwrite=True`` (``semrec encode --force``) deletes every shard and encodes
the whole store again from the items.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Callable, Optional

import numpy as np

from semrec import atomic
from semrec.encoders.multimodal import EncodedBatch, MultimodalEncoder, item_contents

FORMAT = "semrec.embedding_store/1"
MANIFEST = "manifest.json"
logger = logging.getLogger(__name__)


def _write_json(path: str, obj):
  atomic.write_json(path, obj, sort_keys=True)


def _content_hash(item_ids, embeddings, mask) -> str:
  h = hashlib.sha256()
  h.update("\n".join(map(str, item_ids)).encode())
  h.update(np.ascontiguousarray(embeddings, np.float32).tobytes())
  h.update(np.ascontiguousarray(mask, np.float32).tobytes())
  return h.hexdigest()


def shard_name(index: int, num_shards: int) -> str:
  return f"shard-{index:05d}-of-{num_shards:05d}.npz"


def write_shard(path: str, batch: EncodedBatch):
  """Writes one encoded shard atomically (temp file + ``os.replace``)."""
  atomic.save_npz(path, item_ids=np.asarray(batch.item_ids, dtype=str), embeddings=batch.embeddings.astype(np.float32),
                  mask=batch.mask.astype(np.float32), fallbacks=np.array(json.dumps(batch.fallbacks, sort_keys=True)),
                  content_sha256=np.array(_content_hash(batch.item_ids, batch.embeddings, batch.mask)))


_REENCODE = "run `semrec encode --force` (encodes the store again from the items)"


def read_shard(path: str, verify: bool = False) -> EncodedBatch:
  """One shard; a truncated or corrupt file raises ``CorruptArtefactError`` naming it.

  ``verify=True`` also checks the contents against the hash written with them (``content_sha256``): a shard
  edited since it was written, or one without the hash (an older format), is a ``CorruptArtefactError`` too.
  """
  from semrec.atomic import CorruptArtefactError, read_npz
  z = read_npz(path, "embedding shard", _REENCODE)
  try:
    batch = EncodedBatch(z["item_ids"].astype(object), z["embeddings"], z["mask"], json.loads(str(z["fallbacks"])))
  except (KeyError, ValueError) as e:
    raise CorruptArtefactError(f"{path}: damaged embedding shard ({type(e).__name__}: {e}); {_REENCODE}") from e
  if verify:
    written = str(z["content_sha256"]) if "content_sha256" in z else None
    if written != _content_hash(batch.item_ids, batch.embeddings, batch.mask):
      raise CorruptArtefactError(f"{path}: embedding shard contents do not match the hash written with them "
                                 f"({'no hash: older format' if written is None else 'edited or damaged'})")
  return batch


@dataclasses.dataclass
class StoreContents:
  """A loaded embedding store.

  Attributes:
    item_ids: [N] object array of item ids (catalogue order).
    embeddings: [N, D] float32 content embeddings (modality blocks in ``manifest["modality_order"]``).
    mask: [N, M] float32 modality presence mask.
    manifest: The store manifest (dict).
  """
  item_ids: np.ndarray
  embeddings: np.ndarray
  mask: np.ndarray
  manifest: dict


class EmbeddingStore:
  """A sharded embedding store directory (see module docstring)."""

  def __init__(self, path: str):
    self.path = path

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.path, MANIFEST)

  def manifest(self) -> dict:
    if not os.path.isfile(self.manifest_path):
      raise FileNotFoundError(f"no embedding store at {self.path!r} (missing {MANIFEST})")
    from semrec.atomic import read_json
    return read_json(self.manifest_path, "embedding store manifest",
                     f"delete it and {_REENCODE}")

  def is_complete(self) -> bool:
    return os.path.isfile(self.manifest_path) and bool(self.manifest().get("complete"))

  def load(self) -> StoreContents:
    """All shards, concatenated in catalogue order.

    Raises:
      ValueError: the store is incomplete (an interrupted run: call ``encode_corpus`` again to resume) or a
        shard does not match the hash recorded in the manifest.
    """
    manifest = self.manifest()
    if not manifest.get("complete"):
      raise ValueError(f"embedding store {self.path!r} is incomplete (interrupted run?): run encode_corpus "
                       "again with the same dataset and encoder to resume")
    ids, embs, masks = [], [], []
    for shard in manifest["shards"]:
      b = read_shard(os.path.join(self.path, shard["file"]))
      if _content_hash(b.item_ids, b.embeddings, b.mask) != shard["content_sha256"]:
        raise ValueError(f"{self.path}/{shard['file']}: contents do not match the manifest hash; delete the file "
                         f"and {_REENCODE}")
      ids.append(b.item_ids)
      embs.append(b.embeddings)
      masks.append(b.mask)
    m = len(manifest["encoder"]["modality_order"])
    d = manifest["encoder"]["dim"]
    return StoreContents(np.concatenate(ids) if ids else np.zeros([0], object),
                         np.concatenate(embs) if embs else np.zeros([0, d], np.float32),
                         np.concatenate(masks) if masks else np.zeros([0, m], np.float32), manifest)


@dataclasses.dataclass
class StorePlan:
  """The shard plan of an embedding store: which items go to which shard file (pure data, picklable).

  Attributes:
    contents: [N] ``ItemContent`` in catalogue order.
    shard_size: Items per shard.
    num_shards: ceil(N / shard_size) (>= 1).
    base_manifest: The manifest of the unfinished store (``complete`` False, no shard list).
  """
  contents: list
  shard_size: int
  num_shards: int
  base_manifest: dict

  @property
  def item_ids(self) -> list:
    return [c.item_id for c in self.contents]

  def shard_range(self, index: int) -> tuple:
    """[lo, hi) catalogue rows of shard ``index``."""
    return index * self.shard_size, min(len(self.contents), (index + 1) * self.shard_size)

  def shard_path(self, store_dir: str, index: int) -> str:
    return os.path.join(store_dir, shard_name(index, self.num_shards))


def plan_store(dataset, encoder_info: dict, shard_size: int) -> StorePlan:
  """Plans the shards of ``dataset`` (catalogue order) for an encoder described by ``encoder_info``."""
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  contents = item_contents(dataset)
  ids = [c.item_id for c in contents]
  if len(set(ids)) != len(ids):
    raise ValueError(f"dataset {dataset.name!r} has duplicate item ids")
  num_shards = max(1, math.ceil(len(ids) / shard_size))
  plan_key = hashlib.sha256(json.dumps(
      {"ids": ids, "fingerprint": dataset.fingerprint(), "encoder": encoder_info, "shard_size": shard_size},
      sort_keys=True).encode()).hexdigest()
  base = {"format": FORMAT, "plan_key": plan_key, "complete": False,
          "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint(), "num_items": len(ids)},
          "encoder": encoder_info, "shard_size": shard_size, "num_shards": num_shards}
  return StorePlan(contents, shard_size, num_shards, base)


def prepare_store(plan: StorePlan, store_dir: str, overwrite: bool = False) -> EmbeddingStore:
  """Creates ``store_dir`` for ``plan``: refuses a store for other inputs, removes temp files of a killed writer,
  and writes the unfinished manifest. Finished shards of the same plan are kept (``encode_shard`` checks each
  before reusing it). ``overwrite`` deletes every shard and the manifest first, whatever inputs they were for:
  the store is encoded again from the items (``--force``)."""
  os.makedirs(store_dir, exist_ok=True)
  store = EmbeddingStore(store_dir)
  if os.path.isfile(store.manifest_path):
    from semrec.atomic import CorruptArtefactError
    try:
      old = store.manifest()
    except CorruptArtefactError as e:  # it cannot vouch for the shards: re-encode them all
      logger.warning("%s; re-encoding every shard", e)
      old, overwrite = {}, True
    if overwrite or old.get("plan_key") != plan.base_manifest["plan_key"]:
      if not overwrite:
        raise ValueError(f"{store_dir!r} holds an embedding store for other inputs (dataset "
                         f"{old.get('dataset', {}).get('name')!r}, fingerprint "
                         f"{old.get('dataset', {}).get('fingerprint')!r}, shard size {old.get('shard_size')}); "
                         "use a new directory or overwrite=True")
      for f in os.listdir(store_dir):
        if f.startswith("shard-") and f.endswith(".npz") or f == MANIFEST:
          os.remove(os.path.join(store_dir, f))
  for f in os.listdir(store_dir):  # temp files of a killed writer
    if ".tmp" in f and (f.startswith("shard-") or f.startswith(MANIFEST)):
      os.remove(os.path.join(store_dir, f))
  _write_json(store.manifest_path, plan.base_manifest)
  return store


def encode_shard(plan: StorePlan, index: int, store_dir: str, encoder: MultimodalEncoder) -> dict:
  """Encodes shard ``index`` of ``plan`` into ``store_dir`` unless a readable shard file with the planned
  item ids is already there (a rerun skips finished shards). Pure per shard: any driver may call it.

  Returns:
    {"index", "file", "num_items", "content_sha256", "fallbacks" (list), "computed" (bool)}.
  """
  lo, hi = plan.shard_range(index)
  path = plan.shard_path(store_dir, index)
  batch, computed = None, False
  if os.path.isfile(path):
    try:
      batch = read_shard(path, verify=True)  # an edited shard is recomputed, never re-hashed as valid
      if list(batch.item_ids) != plan.item_ids[lo:hi]:
        batch = None
    except Exception as e:  # unreadable, edited or unverifiable leftovers are recomputed
      logger.warning("recomputing shard %s: %s", path, e)
      batch = None
  if batch is None:
    batch = encoder.encode(plan.contents[lo:hi])
    write_shard(path, batch)
    computed = True
  return {"index": index, "file": os.path.basename(path), "num_items": hi - lo,
          "content_sha256": _content_hash(batch.item_ids, batch.embeddings, batch.mask),
          "fallbacks": list(batch.fallbacks), "computed": computed}


def finalize_store(plan: StorePlan, store_dir: str, shard_results) -> EmbeddingStore:
  """Writes the complete manifest from every shard's ``encode_shard`` result (any order)."""
  results = sorted(shard_results, key=lambda r: r["index"])
  if [r["index"] for r in results] != list(range(plan.num_shards)):
    raise ValueError(f"{store_dir}: expected results of shards 0..{plan.num_shards - 1}, got "
                     f"{[r['index'] for r in results]}")
  shards = [{k: r[k] for k in ("file", "num_items", "content_sha256")} for r in results]
  fallbacks = [f for r in results for f in r["fallbacks"]]
  final = dict(plan.base_manifest, complete=True, shards=shards, fallbacks=fallbacks, num_fallbacks=len(fallbacks))
  store = EmbeddingStore(store_dir)
  _write_json(store.manifest_path, final)
  return store


def encode_corpus(dataset, encoder: MultimodalEncoder, store_dir: str, shard_size: int = 1024,
                  progress: bool = True, overwrite: bool = False,
                  on_shard_done: Optional[Callable[[int, bool], None]] = None) -> EmbeddingStore:
  """Encodes every item of ``dataset`` into an embedding store at ``store_dir``; resumable.

  The in-process driver of ``plan_store`` -> ``prepare_store`` -> ``encode_shard`` (per shard) ->
  ``finalize_store``; ``semrec.beam.encode_pipeline`` runs the same functions as a Beam pipeline.

  Args:
    dataset: A ``semrec.data.RecDataset``.
    encoder: The ``MultimodalEncoder`` (see ``build_encoder``).
    store_dir: Output directory (created). If it holds an unfinished store for the same dataset,
      encoder and shard size, finished shards are kept and only missing ones are encoded.
    shard_size: Items per shard (the unit of resumption).
    progress: Show a tqdm progress bar (items).
    overwrite: Delete every existing shard (of any store) and encode everything again (``--force``), instead
      of resuming or refusing a store for other inputs.
    on_shard_done: Optional ``callback(shard_index, computed)`` after each shard (``computed`` False for a
      shard kept from an earlier run).
  Returns:
    The complete ``EmbeddingStore``.
  Raises:
    ValueError: ``store_dir`` holds a store for a different dataset/encoder/shard size (and not
      ``overwrite``); ``EncodeError`` from the encoder when ``on_bad_input="raise"``.
  """
  from tqdm.auto import tqdm

  plan = plan_store(dataset, encoder.info, shard_size)
  prepare_store(plan, store_dir, overwrite=overwrite)
  results = []
  with tqdm(total=len(plan.contents), unit="item", desc=f"encode {dataset.name}", disable=not progress) as bar:
    for s in range(plan.num_shards):
      r = encode_shard(plan, s, store_dir, encoder)
      results.append(r)
      bar.update(r["num_items"])
      if on_shard_done is not None:
        on_shard_done(s, r["computed"])
  kept = sum(r["num_items"] for r in results if not r["computed"])
  if kept:
    logger.info("resumed %s: kept %d already-encoded items", store_dir, kept)
  return finalize_store(plan, store_dir, results)
