"""Sequential query tower: a causal self-attention encoder over the user's history (SASRec-style).

Shape letters: B batch, H history length (``max_history``), F item-encoder width, d model / output width.

The history items go through the SAME ``ItemEncoder`` as the candidate side. With
``share_item_embeddings`` (default) each history item enters the encoder as its candidate embedding (the
candidate tower's output, [.., d]), so input and output item embeddings are one set of weights, as in
SASRec; otherwise a separate Dense projects the item encoding [.., F] to d.

Encoder (pre-layer-norm transformer): x_t = item_t + pos_t (learned positions, indexed by slot, so the most
recent item always has position H - 1), dropout, ``num_blocks`` x [x + MHA(LN(x)) with a causal + padding
mask; x + FFN(LN(x))], final LN, then an optional L2 normalisation. Position t only attends to positions
<= t, so the output at t is a function of items 0..t only: training uses every position's output as the
query for the item at t + 1 (one target per position); serving uses the last position.

Histories are left-padded with "" (``semrec.data.PAD_ITEM``), most recent item last; longer histories keep
their most recent ``max_history`` items, and an all-padding history gives a zero query.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass
class SequentialTowerConfig:
  """The causal self-attention query tower.

  Attributes:
    max_history: H, the number of most recent history items attended over.
    num_blocks: Transformer blocks.
    num_heads: Attention heads per block (output_dim must be divisible by it).
    ffn_multiplier: Feed-forward hidden width = ffn_multiplier * d.
    dropout: Dropout rate on the inputs, attention weights and block outputs (training only).
    share_item_embeddings: History items enter as their candidate-tower embeddings (shared weights).
    normalize: L2-normalise the output (scores become cosines; pair with a temperature).
  """
  max_history: int = 50
  num_blocks: int = 2
  num_heads: int = 2
  ffn_multiplier: int = 2
  dropout: float = 0.2
  share_item_embeddings: bool = True
  normalize: bool = True

  def __post_init__(self):
    for f in ("max_history", "num_blocks", "num_heads", "ffn_multiplier"):
      if getattr(self, f) < 1:
        raise ValueError(f"SequentialTowerConfig.{f} must be >= 1, got {getattr(self, f)}")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"SequentialTowerConfig.dropout must be in [0, 1), got {self.dropout}")


def _config_from(value):
  return value if isinstance(value, SequentialTowerConfig) else SequentialTowerConfig(**dict(value or {}))


@tf.keras.utils.register_keras_serializable(package="semrec")
class SequentialQueryTower(tf.keras.layers.Layer):
  """History [B, H] -> [B, d] query (``call``) or [B, H, d] per-position queries (``sequence_output``).

  Args:
    candidate_tower: The ``CandidateTower`` (its ``item_encoder`` encodes the history items; with
      ``share_item_embeddings`` its output is the history item embedding).
    config: ``SequentialTowerConfig`` (or its dict).
    output_dim: d (the candidate tower's output width).

  Input dict: ``history``: item-feature dict with leading dims [B, H'] ("" = padding, most recent last).
  Other keys (user_id, timestamp) are ignored.
  """

  def __init__(self, candidate_tower, config=None, output_dim: int = 32, **kwargs):
    super().__init__(**kwargs)
    if isinstance(candidate_tower, dict):
      candidate_tower = tf.keras.utils.deserialize_keras_object(candidate_tower)
    self.candidate_tower = candidate_tower
    self.config = c = _config_from(config)
    self.output_dim = d = int(output_dim)
    if d % c.num_heads:
      raise ValueError(f"output_dim {d} is not divisible by num_heads {c.num_heads}")
    self.item_projection = None if c.share_item_embeddings else tf.keras.layers.Dense(d, name="item_projection")
    self.positions = tf.keras.layers.Embedding(c.max_history, d, name="positions")
    self.input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
    self.dropout = tf.keras.layers.Dropout(c.dropout)
    self.blocks = []
    for i in range(c.num_blocks):
      self.blocks.append({
          "norm1": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1"),
          "attention": tf.keras.layers.MultiHeadAttention(c.num_heads, d // c.num_heads, dropout=c.dropout,
                                                          name=f"block{i}_attention"),
          "norm2": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2"),
          "ffn1": tf.keras.layers.Dense(c.ffn_multiplier * d, activation="gelu", name=f"block{i}_ffn1"),
          "ffn2": tf.keras.layers.Dense(d, name=f"block{i}_ffn2"),
      })
    self.output_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="output_norm")

  @property
  def max_history(self) -> int:
    return self.config.max_history

  def _item_inputs(self, hist, training):
    if self.item_projection is None:
      return self.candidate_tower(hist, training=training)
    return self.item_projection(self.candidate_tower.item_encoder(hist, training=training))

  def sequence_output(self, features, training=False):
    """[B, H, d] per-position queries (position t sees items 0..t) and the [B, H] float32 item mask."""
    c = self.config
    hist = {k: v[:, -c.max_history:] for k, v in features["history"].items()}
    ids = tf.convert_to_tensor(hist["item_id"])
    mask = tf.cast(tf.not_equal(ids, ""), tf.float32)  # [B, H]
    h = tf.shape(ids)[1]
    # Slot positions aligned to the right: the most recent item is always position max_history - 1.
    pos = self.positions(tf.range(c.max_history - h, c.max_history))[None]  # [1, H, d]
    x = self._item_inputs(hist, training) + pos
    x = self.dropout(self.input_norm(x), training=training) * mask[..., None]
    causal = tf.linalg.band_part(tf.ones([h, h], tf.bool), -1, 0)  # [H, H] query t sees keys <= t
    attn_mask = causal[None] & tf.cast(mask[:, None, :], tf.bool)  # [B, H, H]
    for b in self.blocks:
      y = b["norm1"](x)
      x = x + self.dropout(b["attention"](y, y, attention_mask=attn_mask, training=training), training=training)
      y = b["ffn2"](b["ffn1"](b["norm2"](x)))
      x = (x + self.dropout(y, training=training)) * mask[..., None]
    x = self.output_norm(x)
    if c.normalize:
      x = tf.math.l2_normalize(x, axis=-1)
    return x * mask[..., None], mask

  def call(self, features, training=False):
    seq, _ = self.sequence_output(features, training=training)
    return seq[:, -1]  # the most recent position (zeros for an empty history: its slot is padding)

  def get_config(self):
    config = super().get_config()
    config.update({"candidate_tower": tf.keras.utils.serialize_keras_object(self.candidate_tower),
                   "config": dataclasses.asdict(self.config), "output_dim": self.output_dim})
    return config


__all__ = ["SequentialQueryTower", "SequentialTowerConfig"]
