"""Lexical item vectors: TF-IDF over the catalogue's item texts, reduced by a truncated SVD (latent semantic
analysis), rows L2-normalised.

A sentence encoder such as MiniLM places titles by meaning; it blurs the exact words (brand, model number,
author, series) that tell a shopper's next item apart from a merely similar one. This encoder keeps them. It
is fitted on the catalogue's own text (no pretrained weights, nothing downloaded) and is cheap: seconds for
tens of thousands of titles on 2 cores.

Shape letters: N items, V vocabulary terms, L = ``dim`` output width.

Encoding a text (``encode``), exactly what ``fit`` learned:
  counts c_t of each vocabulary term (scikit-learn's default tokenizer: lower case, words of 2+ letters
  or digits; terms outside the vocabulary are ignored);
  tf-idf v_t = (1 + ln c_t) * idf_t for c_t > 0 (sublinear tf), idf_t = ln((1 + N) / (1 + df_t)) + 1;
  v <- v / ||v||; then y = v @ components^T  ([L]) and y <- y / ||y||.
A text with no vocabulary term (e.g. empty) gets the zero vector: it scores 0 against every item.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

import numpy as np

from semrec.atomic import save_npz
from semrec.encoders.common import EncodeError


@dataclasses.dataclass
class LexicalEncoderConfig:
  """A ``LexicalEncoder``.

  Attributes:
    dim: L, the SVD width (capped at min(V, N) - 1 when the catalogue is smaller).
    min_df: Terms in fewer items are dropped from the vocabulary.
    seed: Seeds the randomised SVD.
  """
  dim: int = 384
  min_df: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.dim < 1:
      raise ValueError(f"LexicalEncoderConfig.dim must be >= 1, got {self.dim}")
    if self.min_df < 1:
      raise ValueError(f"LexicalEncoderConfig.min_df must be >= 1, got {self.min_df}")


class LexicalEncoder:
  """TF-IDF (sublinear tf) + truncated SVD text encoder, fitted on a catalogue.

  Usage::

    enc = LexicalEncoder().fit(catalogue_texts)   # or LexicalEncoder.load(path)
    y = enc.encode(texts)                          # [n, L] float32, unit rows (zero rows for no known term)
    enc.save(path)                                  # atomic .npz: vocabulary, idf, SVD components

  Attributes (after ``fit`` / ``load``): ``vocabulary`` [V] str, ``idf`` [V] float64, ``components`` [L, V]
  float64.
  """

  def __init__(self, config: Optional[LexicalEncoderConfig] = None):
    self.config = config or LexicalEncoderConfig()
    self.vocabulary: Optional[np.ndarray] = None
    self.idf: Optional[np.ndarray] = None
    self.components: Optional[np.ndarray] = None
    self._counter = None

  @property
  def dim(self) -> int:
    """L, the output width (0 before ``fit``)."""
    return 0 if self.components is None else int(self.components.shape[0])

  def fit(self, texts: Sequence[str], item_ids: Optional[Sequence] = None) -> "LexicalEncoder":
    """Learns the vocabulary, idf and SVD basis from the catalogue's texts.

    Raises:
      EncodeError: a text is not a string (naming the item and the field).
      ValueError: the texts have fewer than 2 terms or items.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    texts = _checked(texts, item_ids)
    try:
      tfidf = TfidfVectorizer(sublinear_tf=True, min_df=self.config.min_df, dtype=np.float64)
      v = tfidf.fit_transform(texts)
    except ValueError as e:  # "empty vocabulary"
      raise ValueError(f"lexical encoder: no vocabulary term in the {len(texts)} item texts ({e})") from e
    dim = min(self.config.dim, v.shape[1] - 1, v.shape[0] - 1)
    if dim < 1:
      raise ValueError(f"lexical encoder needs at least 2 items and 2 vocabulary terms, got {v.shape[0]} items "
                       f"and {v.shape[1]} terms")
    svd = TruncatedSVD(dim, random_state=self.config.seed).fit(v)
    self.vocabulary = np.array(tfidf.get_feature_names_out(), dtype=str)
    self.idf, self.components = np.asarray(tfidf.idf_, np.float64), np.asarray(svd.components_, np.float64)
    self._counter = None
    return self

  def encode(self, texts: Sequence[str], item_ids: Optional[Sequence] = None, batch_size: int = 8192) -> np.ndarray:
    """[n, L] float32 unit rows (zero for a text with no vocabulary term); see the module docstring."""
    if self.components is None:
      raise ValueError("LexicalEncoder is not fitted: call fit() or load()")
    texts = _checked(texts, item_ids)
    out = np.zeros((len(texts), self.dim), np.float32)
    for s in range(0, len(texts), batch_size):
      c = self._count(texts[s:s + batch_size]).astype(np.float64)  # [b, V] sparse counts
      c.data = (1.0 + np.log(c.data))
      v = c.multiply(self.idf[None]).tocsr()
      norm = np.sqrt(np.asarray(v.multiply(v).sum(axis=1))).reshape(-1, 1)
      y = np.asarray(v @ self.components.T) / np.maximum(norm, 1e-12)  # [b, L]
      out[s:s + batch_size] = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return out

  def _count(self, texts):
    if self._counter is None:
      from sklearn.feature_extraction.text import CountVectorizer
      self._counter = CountVectorizer(vocabulary={t: i for i, t in enumerate(self.vocabulary)})
    return self._counter.transform(texts)

  def save(self, path: str) -> str:
    """Writes the fitted state to ``path`` (.npz) atomically (its folder is created); no pickle."""
    if self.components is None:
      raise ValueError("LexicalEncoder is not fitted: nothing to save")
    save_npz(path, vocabulary=self.vocabulary, idf=self.idf, components=self.components,
             config=np.array([self.config.dim, self.config.min_df, self.config.seed], np.int64))
    return path

  @classmethod
  def load(cls, path: str) -> "LexicalEncoder":
    """The encoder ``save`` wrote to ``path``.

    Raises:
      FileNotFoundError: no file at ``path`` (the message names it).
      semrec.atomic.CorruptArtefactError: a truncated or damaged file, or one without the encoder's arrays
        (naming the file and the missing array), never a bare ``BadZipFile``.
    """
    from semrec.atomic import CorruptArtefactError, read_npz
    fix = "re-run the step that wrote it (the encode stage: `semrec encode --force`)"
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: lexical encoder not found; {fix}")
    arrays = read_npz(path, "lexical encoder", fix)
    missing = [k for k in _ARRAYS if k not in arrays]
    if missing:
      raise CorruptArtefactError(f"{path}: not a lexical encoder (missing arrays {missing}); {fix}")
    config, components = arrays["config"], arrays["components"]
    if config.shape != (3,) or components.ndim != 2 or components.shape[1] != len(arrays["vocabulary"]) \
        or arrays["idf"].shape != arrays["vocabulary"].shape:
      raise CorruptArtefactError(f"{path}: damaged lexical encoder (config {list(config.shape)}, components "
                                 f"{list(components.shape)}, vocabulary {list(arrays['vocabulary'].shape)}, idf "
                                 f"{list(arrays['idf'].shape)} do not fit together); {fix}")
    dim, min_df, seed = (int(v) for v in config)
    enc = cls(LexicalEncoderConfig(dim=dim, min_df=min_df, seed=seed))
    enc.vocabulary, enc.idf, enc.components = arrays["vocabulary"], arrays["idf"], components
    return enc


# The arrays ``save`` writes (``load`` checks them).
_ARRAYS = ("vocabulary", "idf", "components", "config")


def _checked(texts, item_ids) -> list:
  texts = list(texts)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise EncodeError(item_ids[i] if item_ids is not None else f"#{i}", "text",
                        f"expected a string, got {type(t).__name__}")
  return texts


__all__ = ["LexicalEncoder", "LexicalEncoderConfig"]
