"""Item representations: random hash, dense content, cluster IDs, SID n-grams and SentencePiece pieces.

One Keras layer, ``ItemRepresentation``, turns an item's features into a d-dim vector. Which
representation it uses is configuration (``ItemRepresentationConfig.modes``), so the baselines
(random hashed ids, a content projection), trainable k-means cluster-ID embeddings (Kuaishou) and
the SID adapters of Singh et al. (unigram, bigram, prefix n-grams, SentencePiece pieces) are one run
apart. It is the one item representation of semrec: the retrieval towers (``semrec.towers.ItemEncoder``)
and the ranker (``semrec.ranking.Ranker``) both embed items with it, so e.g. retrieval's SPM + hashed
ID and the ranker's "spm+hash" are the same layer with the same knobs.

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

MODES = _budget.ALL_MODES + ("cluster",)
COMBINERS = ("concat", "sum")
ID_KNOWN = "id_known"  # input key of ItemRepresentationConfig.gate_unknown_ids: 1.0 = trained ID, 0.0 = new item


def cluster_feature(k: int) -> str:
  """Input key of the cluster ids at granularity ``k`` (e.g. ``cluster_k100``)."""
  return f"cluster_k{int(k)}"


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
    content_dim: D, the content embedding width ("dense" mode only); 0 = taken from the first input.
    cluster_sizes: k of each cluster granularity of the "cluster" mode (e.g. (100, 1000)); the ids
      come in the input features ``cluster_k<k>`` (``cluster_feature(k)``), -1 = unknown (no lookup).
    id_dropout: Fraction of rows whose "random_hash" part is zeroed in each training call
      (DropoutNet-style ID dropout: the other parts must score an item alone, as they do for a new
      item whose hashed-ID row was never trained). Inference never drops. With id_dropout > 0 the
      hash table starts at zero, so an untrained row (a new item's) is exactly a dropped one.
    gate_unknown_ids: Multiply the "random_hash" part by the input ``id_known`` ([...] float32, 1 = the
      item's ID was in the training data, 0 = a new item), at training and at inference. A new item whose
      hash collides with a trained item's row (probability ~ trained items / hash_buckets) then gets a zero
      ID part, exactly like an ID-dropped row, instead of the other item's embedding.
  """
  modes: Tuple[str, ...] = ("unigram",)
  combiner: str = "concat"
  embedding_dim: int = 32
  num_levels: int = 4
  codebook_size: int = 256
  table_budget: int = 65536
  hash_buckets: int = 100_000
  content_dim: int = 0
  cluster_sizes: Tuple[int, ...] = ()
  id_dropout: float = 0.0
  gate_unknown_ids: bool = False

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
    if "spm" in self.modes:
      SpmSegmenter.check_sizes(self.num_levels, self.codebook_size, self.table_budget)
    self.cluster_sizes = tuple(int(k) for k in self.cluster_sizes)
    if any(k < 1 for k in self.cluster_sizes) or len(set(self.cluster_sizes)) != len(self.cluster_sizes):
      raise ValueError(f"ItemRepresentationConfig.cluster_sizes must be distinct positive ints, got {self.cluster_sizes}")
    if ("cluster" in self.modes) != bool(self.cluster_sizes):
      raise ValueError("ItemRepresentationConfig: mode 'cluster' and cluster_sizes go together "
                       f"(modes={self.modes}, cluster_sizes={self.cluster_sizes})")
    if not 0.0 <= self.id_dropout < 1.0:
      raise ValueError(f"ItemRepresentationConfig.id_dropout must be in [0, 1), got {self.id_dropout}")
    if self.gate_unknown_ids and "random_hash" not in self.modes:
      raise ValueError("ItemRepresentationConfig.gate_unknown_ids needs the 'random_hash' mode "
                       f"(modes={self.modes})")

  @property
  def output_dim(self) -> int:
    return self.embedding_dim * (len(self.modes) if self.combiner == "concat" else 1)

  @property
  def uses_sid(self) -> bool:
    return any(m in ("unigram", "bigram", "prefix", "spm") for m in self.modes)

  @property
  def input_features(self) -> Tuple[str, ...]:
    """The input keys the configured modes read (besides the optional ``item_id``)."""
    keys = ["item_id"] if "random_hash" in self.modes else []
    if self.uses_sid:
      keys.append("sid")
    if "dense" in self.modes:
      keys.append("content")
    keys += [cluster_feature(k) for k in self.cluster_sizes]
    if self.gate_unknown_ids:
      keys.append(ID_KNOWN)
    return tuple(keys)


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
    cluster_k<k>: [...] int32 cluster id at granularity k, -1 = unknown ("cluster", one key per k).

  Output: [..., output_dim] float32; padded items (item_id == "", or an all -1 SID row, or when
  neither key is given an all-zero content row) map to a zero vector so history pooling can mask.
  ``call(inputs, training=True)`` zeroes the "random_hash" part of a random ``id_dropout`` fraction
  of the rows (ID dropout); ``training`` False / None never drops.

  Each SID mode sums the embeddings of its sub-pieces: "unigram" L lookups, "bigram" ceil(L/2),
  "prefix" L (each into one table of exact or hashed rows, see ``sid.budget``), "spm" one per
  SentencePiece piece (1..L), segmented in-graph by ``SpmSegmenter`` with standard TF ops;
  "cluster" one per granularity (one table of sum(k) rows, granularity g offset by the k before it).
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
      rows = (sum(c.cluster_sizes) if mode == "cluster" else
              _budget.table_rows(mode, c.num_levels, c.codebook_size, c.table_budget, c.hash_buckets))
      # With ID dropout the hashed-ID rows start at zero: a row no training item reached (a new item's)
      # then equals a dropped one, so a new item is scored exactly as the dropout-trained path learned.
      init = "zeros" if mode == "random_hash" and c.id_dropout > 0 else "uniform"
      self._tables[mode] = tf.keras.layers.Embedding(rows, c.embedding_dim, embeddings_initializer=init,
                                                     name=f"{mode}_embeddings")
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
    if "dense" in c.modes and c.content_dim:
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

    P is 1 for "random_hash", ceil(L/2) for "bigram", L for "unigram", "prefix" and "spm",
    len(cluster_sizes) for "cluster".
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
    if "cluster" in c.modes:
      rows, lead_c = self._cluster_rows(inputs)  # an unknown (-1) cluster id only removes its own lookup
      lead = lead_c if lead is None else lead
    ids = {}
    for mode in c.modes:
      if mode == "cluster":
        ids[mode] = rows
      elif mode == "random_hash":
        ids[mode] = tf.strings.to_hash_bucket_fast(item_id, c.hash_buckets)[:, None]
      elif mode in _budget.NGRAM_MODES:
        ids[mode] = self._ngram_ids(mode, codes)
      elif mode == "spm":
        ids[mode] = tf.cast(self.segmenter(codes), tf.int64)
    if pad is not None:
      ids = {m: tf.where(pad[:, None], tf.constant(-1, tf.int64), v) for m, v in ids.items()}
    return ids, pad, lead

  def _cluster_rows(self, inputs):
    """-> (rows [M, G] int64 into the cluster table, -1 for unknown ids; leading shape)."""
    cols, offset = [], 0
    lead = None
    for k in self.config.cluster_sizes:
      key = cluster_feature(k)
      cid = tf.convert_to_tensor(self._require(inputs, key))
      if not cid.dtype.is_integer:
        raise ValueError(f"ItemRepresentation: {key!r} must be an integer tensor, got {cid.dtype.name}")
      lead = tf.shape(cid) if lead is None else lead
      cid = tf.reshape(tf.cast(cid, tf.int64), [-1])
      check = tf.debugging.assert_less(cid, tf.constant(k, tf.int64),
                                       message=f"ItemRepresentation: {key!r} ids must be < {k} (-1 = unknown)")
      with tf.control_dependencies([check]):
        cols.append(tf.where(cid >= 0, cid + offset, tf.constant(-1, tf.int64)))
      offset += k
    return tf.stack(cols, axis=1), lead

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

  def call(self, inputs: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    if not isinstance(inputs, dict):
      raise ValueError("ItemRepresentation expects a dict of features ('item_id', 'sid', 'content', 'cluster_k<k>')")
    c = self.config
    ids, pad, lead = self._lookup_ids_flat(inputs)
    outs = []
    for mode in c.modes:
      if mode == "dense":
        content = tf.convert_to_tensor(self._require(inputs, "content"), tf.float32)
        width = content.shape[-1] if content.shape.rank is not None else None
        if c.content_dim and width is not None and width != c.content_dim:
          raise ValueError(f"ItemRepresentation: 'content' last dimension must be content_dim={c.content_dim}, "
                           f"got {width}")
        if not (c.content_dim or width):
          raise ValueError("ItemRepresentation: 'content' needs a static last dimension when content_dim=0")
        if lead is None:
          lead = tf.shape(content)[:-1]
        flat = tf.reshape(content, [-1, c.content_dim or width])
        if pad is None:
          pad = tf.reduce_all(tf.equal(flat, 0.0), axis=-1)
        outs.append(self.dense(flat))
      else:
        rows = ids[mode]
        emb = self._tables[mode](tf.maximum(rows, 0))  # [M, P, d]
        mask = tf.cast(rows >= 0, emb.dtype)[:, :, None]
        part = tf.reduce_sum(emb * mask, axis=1)
        if mode == "random_hash" and c.gate_unknown_ids:
          part = part * tf.reshape(tf.cast(self._require(inputs, ID_KNOWN), part.dtype), [-1, 1])
        if mode == "random_hash" and c.id_dropout > 0 and training is True:
          part = part * self._id_keep_mask(tf.shape(part)[0])
        outs.append(part)
    out = tf.concat(outs, axis=-1) if c.combiner == "concat" else tf.add_n(outs)
    if pad is not None:
      out = tf.where(pad[:, None], tf.zeros_like(out), out)
    return tf.reshape(out, tf.concat([lead, [self.output_dim]], 0))

  def _id_keep_mask(self, rows: tf.Tensor) -> tf.Tensor:
    """[M, 1] float32: 0 for a random ``id_dropout`` fraction of the M rows, else 1 (no rescaling:
    a kept ID row must look the same at training and at serving)."""
    u = tf.random.uniform([rows], seed=None)
    return tf.cast(u >= self.config.id_dropout, tf.float32)[:, None]

  def get_config(self):
    cfg = super().get_config()
    cfg["config"] = to_dict(self.config)
    return cfg
