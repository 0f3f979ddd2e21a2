"""Item representations: random hash, dense content, SID n-grams and SentencePiece pieces.

One Keras layer, ``ItemRepresentation``, turns an item's features into a d-dim vector. Which
representation it uses is configuration (``ItemRepresentationConfig.modes``), so the baselines
(random hashed ids, a content projection) and the SID adapters of Singh et al. (unigram, bigram,
prefix n-grams, SentencePiece pieces) are one run apart.

Shape letters: B batch, H history length, L SID levels, K codebook size, D content width,
d embedding width. Leading dims ``[...]`` may be ``[B]`` or ``[B, H]``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple, Union

import tensorflow as tf

from semrec.config import to_dict
from semrec.sid import budget as _budget
from semrec.sid.spm import SidSpm, SpmSegmenter

MODES = _budget.ALL_MODES
COMBINERS = ("concat", "sum")


@dataclasses.dataclass
class ItemRepresentationConfig:
  """Configuration of an ``ItemRepresentation``.

  Attributes:
    modes: One or more of "random_hash" (hashed item id, the baseline), "dense" (projection of the
      content embedding), "unigram" (one embedding per level code), "bigram" (non-overlapping code
      pairs), "prefix" (every prefix c1, c1c2, ..., c1..cL) and "spm" (SentencePiece pieces of
      the SID). A single string is accepted and turned into a 1-tuple.
    combiner: How several modes are combined: "concat" (output width d * len(modes)) or "sum"
      (output width d).
    embedding_dim: d, the width of each mode's vector.
    num_levels: L, the number of SID levels.
    codebook_size: K, codes per level (codes are in [0, K)).
    table_budget: Rows one n-gram mode may use; n-gram modes whose exact id space is larger hash
      their span values into this many rows. For "spm" it is the SentencePiece vocabulary size,
      which must be >= L * K + 1 (every (level, code) is a piece, plus <unk>).
    hash_buckets: Rows of the "random_hash" table.
    content_dim: D, the content embedding width ("dense" mode only; 0 when unused).
  """
  modes: Tuple[str, ...] = ("unigram",)
  combiner: str = "concat"
  embedding_dim: int = 32
  num_levels: int = 4
  codebook_size: int = 256
  table_budget: int = 65536
  hash_buckets: int = 100_000
  content_dim: int = 0

  def __post_init__(self):
    if isinstance(self.modes, str):
      self.modes = (self.modes,)
    self.modes = tuple(self.modes)
    if not self.modes:
      raise ValueError("ItemRepresentationConfig.modes must name at least one mode")
    for m in self.modes:
      if m not in MODES:
        raise ValueError(f"ItemRepresentationConfig.modes: unknown mode {m!r} (expected one of {MODES})")
    if len(set(self.modes)) != len(self.modes):
      raise ValueError(f"ItemRepresentationConfig.modes has duplicates: {self.modes}")
    if self.combiner not in COMBINERS:
      raise ValueError(f"ItemRepresentationConfig.combiner must be one of {COMBINERS}, got {self.combiner!r}")
    for name in ("embedding_dim", "num_levels", "codebook_size", "table_budget", "hash_buckets"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"ItemRepresentationConfig.{name} must be a positive int, got {v!r}")
    if not isinstance(self.content_dim, int) or self.content_dim < 0:
      raise ValueError(f"ItemRepresentationConfig.content_dim must be an int >= 0, got {self.content_dim!r}")
    if "dense" in self.modes and self.content_dim < 1:
      raise ValueError(f"ItemRepresentationConfig.content_dim must be >= 1 for mode 'dense', got {self.content_dim}")
    if "spm" in self.modes:
      SpmSegmenter.check_sizes(self.num_levels, self.codebook_size, self.table_budget)

  @property
  def output_dim(self) -> int:
    return self.embedding_dim * (len(self.modes) if self.combiner == "concat" else 1)

  @property
  def uses_sid(self) -> bool:
    return any(m in ("unigram", "bigram", "prefix", "spm") for m in self.modes)


def _fingerprint_mod(values: tf.Tensor, buckets: int) -> tf.Tensor:
  """[M] int64 in [0, buckets): farmhash64 of each row of ``values`` [M, n] int64, mod buckets."""
  fp = tf.fingerprint(values)  # [M, 8] uint8
  h = tf.bitcast(fp, tf.int64)  # [M]
  return tf.math.floormod(h, tf.constant(buckets, tf.int64))


@tf.keras.utils.register_keras_serializable(package="semrec")
class ItemRepresentation(tf.keras.layers.Layer):
  """Item features -> [..., output_dim] float32 item vector.

  Inputs (a dict; only the keys the configured modes need):
    item_id: [...] tf.string item ids ("" = padding; needed by "random_hash").
    sid: [..., L] int32/int64 SID codes in [0, K); a row of all -1 is padding (SID modes).
    content: [..., D] float32 content embedding ("dense").

  Output: [..., output_dim] float32; padded items (item_id == "", or an all -1 SID row, or when
  neither key is given an all-zero content row) map to a zero vector so history pooling can mask.

  Each SID mode sums the embeddings of its sub-pieces: "unigram" L lookups, "bigram" ceil(L/2),
  "prefix" L (each into one table of exact or hashed rows, see ``sid.budget``), "spm" one per
  SentencePiece piece (1..L), segmented in-graph by ``SpmSegmenter`` with standard TF ops.
  Bad input: a code outside [0, K) or a partially -1 SID row fails an in-graph assert naming
  the "sid" field; a wrong L raises ``ValueError`` (static shape) or fails an assert (dynamic).

  Args:
    config: An ``ItemRepresentationConfig`` (or its dict form, as in ``get_config``).
    spm: A trained ``SidSpm`` (required to *build* an "spm" layer from scratch; a layer rebuilt
      with ``from_config`` gets its piece table back from its weights / checkpoint).
  """

  def __init__(self, config: Union[ItemRepresentationConfig, dict, None] = None,
               spm: Optional[SidSpm] = None, **kwargs):
    super().__init__(**kwargs)
    if config is None:
      config = ItemRepresentationConfig()
    if isinstance(config, dict):
      config = ItemRepresentationConfig(**config)
    self.config = config
    c = config
    self._tables: Dict[str, tf.keras.layers.Embedding] = {}
    self._hashed: Dict[str, bool] = {}
    for mode in c.modes:
      if mode == "dense":
        self.dense = tf.keras.layers.Dense(c.embedding_dim, name="dense_content")
        continue
      rows = _budget.table_rows(mode, c.num_levels, c.codebook_size, c.table_budget, c.hash_buckets)
      self._tables[mode] = tf.keras.layers.Embedding(rows, c.embedding_dim, name=f"{mode}_embeddings")
      if mode in _budget.NGRAM_MODES:
        self._hashed[mode] = _budget.ngram_is_hashed(mode, c.num_levels, c.codebook_size, c.table_budget)
    self.segmenter = None
    if "spm" in c.modes:
      if spm is not None and (spm.num_levels != c.num_levels or spm.codebook_size != c.codebook_size
                              or spm.vocab_size > c.table_budget):
        raise ValueError(
            f"ItemRepresentation: spm (L={spm.num_levels}, K={spm.codebook_size}, vocab={spm.vocab_size}) does "
            f"not fit config (num_levels={c.num_levels}, codebook_size={c.codebook_size}, "
            f"table_budget={c.table_budget})")
      self.segmenter = SpmSegmenter(c.num_levels, c.codebook_size, max_pieces=c.table_budget, spm=spm,
                                    name="spm_segmenter")

  @property
  def output_dim(self) -> int:
    return self.config.output_dim

  def build(self, input_shape):
    c = self.config
    for mode, table in self._tables.items():
      table.build((None,))
    if "dense" in c.modes:
      self.dense.build((None, c.content_dim))
    if self.segmenter is not None:
      self.segmenter.build((None, c.num_levels))
    super().build(input_shape)

  # -- inputs --------------------------------------------------------------------------------------

  def _require(self, inputs, key):
    if key not in inputs:
      raise ValueError(f"ItemRepresentation(modes={self.config.modes}) needs input feature {key!r}; "
                       f"got keys {sorted(inputs)}")
    return inputs[key]

  def _flat_sid(self, sid: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """[..., L] -> (codes [M, L] int64 with padding rows zeroed, pad [M] bool, leading shape)."""
    L, K = self.config.num_levels, self.config.codebook_size
    sid = tf.convert_to_tensor(sid)
    if not sid.dtype.is_integer:
      raise ValueError(f"ItemRepresentation: 'sid' must be an integer tensor, got {sid.dtype.name}")
    if sid.shape.rank is not None and sid.shape.rank < 1:
      raise ValueError("ItemRepresentation: 'sid' must have shape [..., L]")
    last = sid.shape[-1] if sid.shape.rank is not None else None
    if last is not None and last != L:
      raise ValueError(f"ItemRepresentation: 'sid' last dimension must be num_levels={L}, got {last}")
    sid = tf.cast(sid, tf.int64)
    lead = tf.shape(sid)[:-1]
    checks = [tf.debugging.assert_equal(tf.shape(sid)[-1], L,
                                        message=f"ItemRepresentation: 'sid' last dimension must be num_levels={L}")]
    with tf.control_dependencies(checks):
      flat = tf.reshape(sid, [-1, L])
    pad = tf.reduce_all(tf.equal(flat, -1), axis=-1)
    valid = tf.logical_or(pad[:, None], tf.logical_and(flat >= 0, flat < K))
    checks.append(tf.debugging.assert_equal(
        tf.reduce_all(valid), True,
        message=f"ItemRepresentation: 'sid' codes must be in [0, {K}) (a row of all -1 is padding)"))
    with tf.control_dependencies(checks):
      flat = tf.where(pad[:, None], tf.zeros_like(flat), flat)
    return flat, pad, lead

  def lookup_ids(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Table rows each mode reads: mode -> [..., P] int64, -1 where there is no lookup.

    P is 1 for "random_hash", ceil(L/2) for "bigram", L for "unigram", "prefix" and "spm".
    "dense" has no table and no entry.
    """
    ids, _, lead = self._lookup_ids_flat(inputs)
    return {m: tf.reshape(v, tf.concat([lead, tf.shape(v)[-1:]], 0)) for m, v in ids.items()}

  def _lookup_ids_flat(self, inputs):
    c = self.config
    pad = None
    lead = None
    codes = None
    if c.uses_sid:
      codes, sid_pad, lead = self._flat_sid(self._require(inputs, "sid"))
      pad = sid_pad
    item_id = None
    if "item_id" in inputs or "random_hash" in c.modes:
      item_id = tf.convert_to_tensor(self._require(inputs, "item_id"))
      if item_id.dtype != tf.string:
        raise ValueError(f"ItemRepresentation: 'item_id' must be tf.string, got {item_id.dtype.name}")
      lead = tf.shape(item_id) if lead is None else lead
      id_pad = tf.equal(tf.reshape(item_id, [-1]), "")
      pad = id_pad if pad is None else tf.logical_or(pad, id_pad)
      item_id = tf.reshape(item_id, [-1])
    ids = {}
    for mode in c.modes:
      if mode == "random_hash":
        ids[mode] = tf.strings.to_hash_bucket_fast(item_id, c.hash_buckets)[:, None]
      elif mode in _budget.NGRAM_MODES:
        ids[mode] = self._ngram_ids(mode, codes)
      elif mode == "spm":
        ids[mode] = tf.cast(self.segmenter(codes), tf.int64)
    if pad is not None:
      ids = {m: tf.where(pad[:, None], tf.constant(-1, tf.int64), v) for m, v in ids.items()}
    return ids, pad, lead

  def _ngram_ids(self, mode: str, codes: tf.Tensor) -> tf.Tensor:
    """codes [M, L] int64 -> [M, P] int64 table rows of the mode's spans."""
    c = self.config
    K = c.codebook_size
    cols = []
    offset = 0
    for j, (s, n) in enumerate(_budget.ngram_spans(mode, c.num_levels)):
      span = codes[:, s:s + n]
      if self._hashed[mode]:
        tagged = tf.concat([tf.fill([tf.shape(codes)[0], 1], tf.constant(j, tf.int64)), span], axis=1)
        cols.append(_fingerprint_mod(tagged, c.table_budget))
      else:
        value = tf.zeros_like(codes[:, 0])
        for i in range(n):  # mixed radix: c_s * K^(n-1) + ... + c_{s+n-1}
          value = value * K + span[:, i]
        cols.append(value + offset)
        offset += K ** n
    return tf.stack(cols, axis=1)

  # -- forward -------------------------------------------------------------------------------------

  def call(self, inputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    if not isinstance(inputs, dict):
      raise ValueError("ItemRepresentation expects a dict of features ('item_id', 'sid', 'content')")
    c = self.config
    ids, pad, lead = self._lookup_ids_flat(inputs)
    outs = []
    for mode in c.modes:
      if mode == "dense":
        content = tf.convert_to_tensor(self._require(inputs, "content"), tf.float32)
        if content.shape.rank is not None and content.shape[-1] is not None and content.shape[-1] != c.content_dim:
          raise ValueError(f"ItemRepresentation: 'content' last dimension must be content_dim={c.content_dim}, "
                           f"got {content.shape[-1]}")
        if lead is None:
          lead = tf.shape(content)[:-1]
        flat = tf.reshape(content, [-1, c.content_dim])
        if pad is None:
          pad = tf.reduce_all(tf.equal(flat, 0.0), axis=-1)
        outs.append(self.dense(flat))
      else:
        rows = ids[mode]
        emb = self._tables[mode](tf.maximum(rows, 0))  # [M, P, d]
        mask = tf.cast(rows >= 0, emb.dtype)[:, :, None]
        outs.append(tf.reduce_sum(emb * mask, axis=1))
    out = tf.concat(outs, axis=-1) if c.combiner == "concat" else tf.add_n(outs)
    if pad is not None:
      out = tf.where(pad[:, None], tf.zeros_like(out), out)
    return tf.reshape(out, tf.concat([lead, [self.output_dim]], 0))

  def get_config(self):
    cfg = super().get_config()
    cfg["config"] = to_dict(self.config)
    return cfg
