"""The generative retriever: training (``train_generative``), in-graph retrieval, scoring for evaluation.

Shape letters: Q queries, B batch, H history items (``GenerativeConfig.max_history``), S = L + 1 token levels,
N items of the SID table, N_t items of the trie (the generable items: the SID table's, or a subset such as a
protocol's candidates), W beam width, k results.

``train_generative(train_sequences, sid_table, config)`` fits the ``SidSeq2Seq`` with ``fit`` on every prefix of
every training sequence (history = the previous <= H items, target = the next item's S tokens, teacher forcing,
cross-entropy per level) and returns a ``GenerativeModel``. ``GenerativeModel.retrieve`` runs the
``GenerativeRetrievalModule`` (the same tf.Module the SavedModel export serves): item ids -> history tokens ->
encoder -> trie-constrained beam search -> item ids and sequence log-probabilities.

History conventions: [Q, H'] object item ids, "" = padding, most recent last; only the last H are read (shorter
histories are left-padded). An empty history is a valid request: the encoder then reads only EOS (and the user
token) and the result is the model's unpersonalised prior. Unknown history items raise (``unknown_items=
"error"``, the message names the item and the field ``history_item_id``) or are dropped (``"ignore"``).
With ``exclude_history`` (default, as the evaluation protocol removes earlier items) the history's items are
never returned: they are masked at the last beam step, before the top-k.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from semrec.data import DataError
from semrec.generative.beam import NO_ITEM_SCORE, constrained_beam_search
from semrec.generative.model import GenerativeConfig, SidSeq2Seq, build_seq2seq
from semrec.generative.trie import Trie
from semrec.generative.vocab import BOS, SidVocabulary, check_unique, item_rows, pad_left, stable_full_codes, \
    table_full_codes
from semrec.sid import SidTable

HISTORY_INPUT = "history_item_id"
USER_INPUT = "user_id"


def user_buckets(user_ids, num_buckets: int) -> np.ndarray:
  """[Q] int32 bucket of each user id (``tf.strings.to_hash_bucket_fast``, as the serving graph computes it)."""
  ids = tf.constant(np.asarray(user_ids, dtype=object).astype(str).reshape(-1))
  return tf.strings.to_hash_bucket_fast(ids, num_buckets).numpy().astype(np.int32)


class GenerativeRetrievalModule(tf.Module):
  """The in-graph retriever: history item ids -> top-k item ids and sequence log-probs (trie inside).

  Args:
    model: A trained ``SidSeq2Seq``.
    vocab: Its ``SidVocabulary``.
    history_ids, history_codes: [N] item ids and [N, S] codes + suffix readable in histories.
    trie: The generable items (``Trie``; may be a subset of ``history_ids`` or hold items the histories
      cannot contain).
    beam_width, top_k: W and k (k <= W).
    exclude_history: Never return an item of the request's history.

  ``serve({"history_item_id": [B, H'] string[, "user_id": [B] string]})`` -> ``{"item_ids": [B, k] string,
  "scores": [B, k] float32}``; empty slots (fewer than k valid items) are "" with ``NO_ITEM_SCORE``. An unknown
  history item fails the request: InvalidArgumentError "history_item_id: unknown item id(s) ...".
  """

  def __init__(self, model: SidSeq2Seq, vocab: SidVocabulary, history_ids, history_codes, trie: Trie,
               beam_width: int, top_k: int, exclude_history: bool = True, name: Optional[str] = None):
    super().__init__(name=name)
    if not 1 <= int(top_k) <= int(beam_width):
      raise ValueError(f"need 1 <= top_k <= beam_width, got top_k={top_k}, beam_width={beam_width}")
    self.model, self.vocab = model, vocab
    self.beam_width, self.top_k, self.exclude_history = int(beam_width), int(top_k), bool(exclude_history)
    self.max_history, self.num_levels = int(model.max_history), vocab.num_levels
    history_ids = np.asarray([str(i) for i in history_ids], dtype=object)
    codes = vocab.check_codes(history_codes, history_ids)
    n = len(history_ids)
    self.num_history_items = n
    tokens = np.concatenate([vocab.tokens(codes), np.zeros((1, vocab.num_levels), np.int32)])  # row N = PAD
    self.history_tokens = tf.Variable(tokens, trainable=False, name="history_tokens")
    to_trie = pd.Index(trie.item_ids).get_indexer(history_ids)
    self.history_to_trie = tf.Variable(np.append(to_trie, -1).astype(np.int32), trainable=False,
                                       name="history_to_trie")
    self.trie_children = [tf.Variable(c, trainable=False, name=f"trie_level_{l}") for l, c in
                          enumerate(trie.children)]
    self.trie_item_ids = tf.Variable(np.append(trie.item_ids, "").astype(str).astype(bytes), trainable=False,
                                     name="trie_item_ids")
    self.history_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(history_ids.astype(str)), tf.range(n, dtype=tf.int64)),
        default_value=-1)
    self.retrieve_rows = tf.function(self._retrieve_rows, input_signature=[
        tf.TensorSpec([None, self.max_history], tf.int32), tf.TensorSpec([None], tf.int32)])
    specs = {HISTORY_INPUT: tf.TensorSpec([None, None], tf.string, name=HISTORY_INPUT)}
    if vocab.num_user_buckets:
      specs[USER_INPUT] = tf.TensorSpec([None], tf.string, name=USER_INPUT)
    self.input_specs = specs
    self.serve = tf.function(self._serve, input_signature=[dict(specs)])

  def _retrieve_rows(self, rows, buckets):
    """rows [B, H] int32 history rows (N = padding), buckets [B] int32 -> (trie rows [B, k], scores [B, k])."""
    b = tf.shape(rows)[0]
    w = self.beam_width
    tokens = tf.gather(self.history_tokens, rows)  # [B, H, S]
    memory, mask = self.model.encode(tokens, buckets if self.vocab.num_user_buckets else None, training=False)
    memory, mask = tf.repeat(memory, w, axis=0), tf.repeat(mask, w, axis=0)
    exclude = tf.gather(self.history_to_trie, rows) if self.exclude_history else None
    out_rows, scores, _ = constrained_beam_search(
        lambda t: self.model.decode(t, memory, mask, training=False), [c for c in self.trie_children],
        self.vocab.level_offsets, self.vocab.level_sizes, b, w, self.top_k, bos=BOS, exclude_rows=exclude)
    return out_rows, scores

  def _serve(self, features):
    hist = features[HISTORY_INPUT]
    found = self.history_table.lookup(hist)
    unknown = (found < 0) & tf.not_equal(hist, "")
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(unknown)),
        [f"{HISTORY_INPUT}: unknown item id(s), not in the SID table:", tf.boolean_mask(hist, unknown)], summarize=5)
    with tf.control_dependencies([check]):
      rows = tf.cast(tf.where(found < 0, tf.cast(self.num_history_items, tf.int64), found), tf.int32)
    h = self.max_history
    rows = rows[:, -h:]
    pad = h - tf.shape(rows)[1]
    rows = tf.pad(rows, [[0, 0], [pad, 0]], constant_values=self.num_history_items)
    rows = tf.ensure_shape(rows, [None, h])
    if self.vocab.num_user_buckets:
      buckets = tf.cast(tf.strings.to_hash_bucket_fast(features[USER_INPUT], self.vocab.num_user_buckets), tf.int32)
    else:
      buckets = tf.zeros([tf.shape(rows)[0]], tf.int32)
    out_rows, scores = self._retrieve_rows(rows, buckets)
    n_trie = tf.shape(self.trie_item_ids)[0] - 1
    ids = tf.gather(self.trie_item_ids, tf.where(out_rows < 0, n_trie, out_rows))
    return {"item_ids": ids, "scores": scores}


@dataclasses.dataclass
class GenerativeModel:
  """A trained SID decoder with its vocabulary and item table (what ``train_generative`` returns).

  Attributes:
    model: The Keras ``SidSeq2Seq``.
    vocab: ``SidVocabulary``.
    config: ``GenerativeConfig`` it was trained with.
    item_ids: [N] items of its SID table (histories may contain these; the default trie generates them).
    full_codes: [N, S] codes + suffix.
    training: {"epoch_seconds": [...], "loss": [...], "val_loss": [...], "best_epoch": int, ...}.
    trained_ids: items of the training table (their suffix never changes, see ``with_sid_table``).
  """
  model: SidSeq2Seq
  vocab: SidVocabulary
  config: GenerativeConfig
  item_ids: np.ndarray
  full_codes: np.ndarray
  training: dict = dataclasses.field(default_factory=dict)
  trained_ids: Optional[np.ndarray] = None
  trained_full_codes: Optional[np.ndarray] = None

  def __post_init__(self):
    self.item_ids = np.asarray([str(i) for i in self.item_ids], dtype=object)
    self.full_codes = self.vocab.check_codes(self.full_codes, self.item_ids)
    check_unique(self.full_codes, self.item_ids)
    if self.trained_ids is None:
      self.trained_ids, self.trained_full_codes = self.item_ids, self.full_codes
    self._index = pd.Index(self.item_ids)
    self._trie = None
    self._modules = {}

  @property
  def trie(self) -> Trie:
    """The trie of the model's SID table (built once)."""
    if self._trie is None:
      self._trie = Trie(self.item_ids, self.full_codes, self.vocab)
    return self._trie

  def with_sid_table(self, table: SidTable) -> "GenerativeModel":
    """The same trained network over a new SID table, without retraining (the cold-start path).

    Items of the training table keep their codes' suffix; new items (e.g. assigned SIDs after training) get the
    next free suffix of their collision group and become generable at once. Checks: same number of levels,
    codes within the model's codebook, suffixes within ``suffix_size`` (errors name the item and the field).
    """
    trie = Trie.from_sid_table(table, self.vocab, self.trained_ids, self.trained_full_codes)
    out = GenerativeModel(self.model, self.vocab, self.config, trie.item_ids, trie.full_codes, self.training,
                          self.trained_ids, self.trained_full_codes)
    out._trie = trie
    return out

  def retrieval_module(self, beam_width: Optional[int] = None, top_k: Optional[int] = None,
                       candidates: Optional[Sequence] = None, exclude_history: bool = True
                       ) -> GenerativeRetrievalModule:
    """The ``GenerativeRetrievalModule`` (cached per settings); ``candidates`` restricts the trie to those items."""
    w = int(beam_width or self.config.beam_width)
    k = int(top_k or self.config.top_k)
    key = (w, k, None if candidates is None else tuple(sorted(map(str, candidates))), bool(exclude_history))
    if key not in self._modules:
      trie = self.trie if candidates is None else self.trie.subset(candidates)
      self._modules[key] = GenerativeRetrievalModule(self.model, self.vocab, self.item_ids, self.full_codes, trie,
                                                     w, k, exclude_history)
    return self._modules[key]

  def history_rows(self, histories, unknown_items: str = "error") -> np.ndarray:
    """[Q, H'] object ids -> [Q, H] int32 rows (last H items, N = padding)."""
    h = np.asarray(histories, dtype=object)
    if h.ndim == 2 and h.shape[1] != self.config.max_history:
      h = pad_left([[x for x in row if x != ""] for row in h], self.config.max_history)
    return item_rows(self._index, h, len(self.item_ids), unknown_items)

  def retrieve(self, histories, k: Optional[int] = None, beam_width: Optional[int] = None, user_ids=None,
               candidates: Optional[Sequence] = None, exclude_history: bool = True, unknown_items: str = "error",
               batch_size: int = 256) -> tuple:
    """Top-k items per history.

    Args:
      histories: [Q, H'] object item ids ("" padding, most recent last).
      k, beam_width: default ``config.top_k`` / ``config.beam_width`` (raised to k when smaller).
      user_ids: [Q] user ids (needed with user buckets).
      candidates: Optional item ids the results are restricted to (a trie over them).
      exclude_history: Never return a history item.
      unknown_items: "error" or "ignore" (unknown history items dropped).

    Returns:
      (item_ids [Q, k] object ("" = empty slot), scores [Q, k] float32 log-probs, NO_ITEM_SCORE when empty).
    """
    k = int(k or self.config.top_k)
    w = max(int(beam_width or self.config.beam_width), k)
    module = self.retrieval_module(w, k, candidates, exclude_history)
    rows = self.history_rows(histories, unknown_items)
    if self.vocab.num_user_buckets:
      if user_ids is None:
        raise ValueError("this model has user-bucket tokens: pass user_ids")
      buckets = user_buckets(user_ids, self.vocab.num_user_buckets)
    else:
      buckets = np.zeros(len(rows), np.int32)
    trie_ids = np.append(module_item_ids(module), "")
    ids, scores = [], []
    for s in range(0, len(rows), batch_size):
      r, sc = module.retrieve_rows(tf.constant(rows[s:s + batch_size]), tf.constant(buckets[s:s + batch_size]))
      ids.append(trie_ids[r.numpy()])
      scores.append(sc.numpy())
    if not ids:
      return np.zeros((0, k), object), np.zeros((0, k), np.float32)
    return np.concatenate(ids).astype(object), np.concatenate(scores).astype(np.float32)

  def score_catalogue(self, histories, item_ids, k: int = 100, beam_width: Optional[int] = None, user_ids=None,
                      candidates: Optional[Sequence] = None, exclude_history: bool = True,
                      unknown_items: str = "error") -> np.ndarray:
    """[Q, N'] float64 scores over ``item_ids`` (the ``score_fn`` of ``semrec.towers.evaluation``): the decoded
    top-k get their log-probs, every other item ``NO_ITEM_SCORE`` (ranked after them, in catalogue order)."""
    ids, scores = self.retrieve(histories, k, max(beam_width or self.config.beam_width, k), user_ids, candidates,
                                exclude_history, unknown_items)
    col = pd.Index(np.asarray(item_ids, dtype=object))
    out = np.full((len(ids), len(col)), NO_ITEM_SCORE, np.float64)
    c = col.get_indexer(ids.reshape(-1)).reshape(ids.shape)
    q, j = np.nonzero(c >= 0)
    out[q, c[q, j]] = scores[q, j]
    return out

  def evaluate(self, queries, item_ids, k: int = 100, beam_width: Optional[int] = None, **eval_kwargs) -> dict:
    """``semrec.towers.evaluation.evaluate_scores`` of the decoded top-k on ``queries`` (a protocol's
    ``Queries``; its candidates, when set, become the trie)."""
    from semrec.towers.evaluation import evaluate_scores
    hist = pad_left(queries.histories, self.config.max_history)
    cands = eval_kwargs.get("candidates", queries.candidates)
    users = queries.user_ids if self.vocab.num_user_buckets else None

    def score_fn(rows):
      return self.score_catalogue(hist[rows], item_ids, k, beam_width, None if users is None else users[rows],
                                  candidates=cands, unknown_items="ignore")
    return evaluate_scores(score_fn, queries, item_ids, **eval_kwargs)


def module_item_ids(module: GenerativeRetrievalModule) -> np.ndarray:
  """[N_t] object item ids of a module's trie."""
  return np.array([x.decode() for x in module.trie_item_ids.numpy()[:-1]], dtype=object)


def _sequences(train_sequences) -> list:
  if isinstance(train_sequences, Mapping):
    return [np.asarray(s, dtype=object) for s in train_sequences.values()]
  return [np.asarray(s, dtype=object) for s in train_sequences]


def training_examples(sequences, index: pd.Index, max_history: int, num_items: int) -> tuple:
  """Every prefix of every sequence: (history rows [M, H] int32, N-padded, most recent last; target rows [M]).

  A sequence (s_1 .. s_n) gives n - 1 examples: history (s_max(1, j-H+1) .. s_j) -> target s_{j+1}.
  """
  hists, targets, which = [], [], []
  for q, seq in enumerate(sequences):
    r = index.get_indexer(seq)
    if (r < 0).any():
      raise DataError(f"training sequence {q}: item {str(seq[np.argmax(r < 0)])!r} (field item_id) is not in the SID "
                      "table")
    padded = np.concatenate([np.full(max_history, num_items, np.int64), r])
    for j in range(1, len(r)):
      hists.append(padded[j:j + max_history])
      targets.append(r[j])
      which.append(q)
  if not targets:
    raise DataError("no training example: every sequence has fewer than 2 items")
  return np.asarray(hists, np.int32), np.asarray(targets, np.int32), np.asarray(which, np.int64)


def _dataset(hist, targets, buckets, tokens, batch_size, shuffle, seed):
  tok = tf.constant(tokens)
  use_buckets = buckets is not None

  def to_example(h, t, u):  # a batch: h [b, H], t [b], u [b]
    y = tf.gather(tok, t)  # [b, S]
    x = {"history": tf.gather(tok, h), "decoder": tf.concat([tf.fill([tf.shape(y)[0], 1], BOS), y[:, :-1]], 1)}
    if use_buckets:
      x["user_bucket"] = u
    return x, y
  u = buckets if use_buckets else np.zeros(len(targets), np.int32)
  ds = tf.data.Dataset.from_tensor_slices((hist, targets, u))
  if shuffle:
    ds = ds.shuffle(len(targets), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size).map(to_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


class _EpochTimer(tf.keras.callbacks.Callback):
  """Per-epoch wall seconds; stops training after an epoch once ``budget`` seconds (> 0) are spent."""

  def __init__(self, budget: float = 0.0):
    super().__init__()
    self.budget = float(budget)

  def on_train_begin(self, logs=None):
    self.seconds, self._start, self.stopped_by_budget = [], time.perf_counter(), False

  def on_epoch_begin(self, epoch, logs=None):
    self._t = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.seconds.append(time.perf_counter() - self._t)
    if self.budget and time.perf_counter() - self._start >= self.budget:
      self.model.stop_training, self.stopped_by_budget = True, True


class _BestWeights(tf.keras.callbacks.Callback):
  """Keeps the weights of the epoch with the lowest ``val_loss`` and restores them when training ends, however
  it ends (Keras' own ``restore_best_weights`` restores only when early stopping fires)."""

  def on_train_begin(self, logs=None):
    self.best, self.weights = np.inf, None

  def on_epoch_end(self, epoch, logs=None):
    v = (logs or {}).get("val_loss")
    if v is not None and v < self.best:
      self.best, self.weights = v, self.model.get_weights()

  def on_train_end(self, logs=None):
    if self.weights is not None:
      self.model.set_weights(self.weights)


def train_generative(train_sequences, sid_table: SidTable, config: Optional[GenerativeConfig] = None, *,
                     valid_histories=None, valid_targets=None, user_ids=None, valid_user_ids=None,
                     verbose: int = 0) -> GenerativeModel:
  """Trains the SID decoder on every prefix of every training sequence.

  Args:
    train_sequences: {user_id: [n] item ids, time-ordered} (``EvalSplit.train_sequences()``) or a list of them.
    sid_table: The items' SIDs (``SidTable``; its suffix is used when set, else computed).
    config: ``GenerativeConfig``.
    valid_histories, valid_targets: Optional validation queries (Q histories, [Q] target ids): early stopping on
      their teacher-forced loss (best epoch restored). Targets or history items missing from the table are
      dropped from validation.
    user_ids, valid_user_ids: user ids aligned with the sequences / validation queries (with user buckets;
      ``train_sequences`` as a dict gives its keys by default).
    verbose: Keras ``fit`` verbosity.

  Returns:
    ``GenerativeModel`` (``.training`` has per-epoch seconds and losses).
  """
  config = config or GenerativeConfig()
  full = table_full_codes(sid_table)
  suffix_size = config.suffix_size or max(16, 2 * (int(full[:, -1].max(initial=0)) + 1))
  vocab = SidVocabulary(sid_table.num_levels, sid_table.codebook_size, suffix_size, config.num_user_buckets)
  full = vocab.check_codes(full, sid_table.item_ids)
  check_unique(full, sid_table.item_ids)
  ids = sid_table.item_ids
  index = pd.Index(ids)
  n = len(ids)
  tokens = np.concatenate([vocab.tokens(full), np.zeros((1, vocab.num_levels), np.int32)])
  seqs = _sequences(train_sequences)
  hist, targets, which = training_examples(seqs, index, config.max_history, n)
  buckets = None
  if vocab.num_user_buckets:
    users = list(train_sequences.keys()) if user_ids is None and isinstance(train_sequences, Mapping) else user_ids
    if users is None:
      raise ValueError("num_user_buckets > 0: pass user_ids aligned with train_sequences")
    buckets = user_buckets(users, vocab.num_user_buckets)[which]
  tf.keras.utils.set_random_seed(config.seed)
  model = build_seq2seq(vocab, config)
  model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  train_ds = _dataset(hist, targets, buckets, tokens, config.batch_size, True, config.seed)
  callbacks, valid_ds = [_EpochTimer(config.max_train_seconds)], None
  if valid_histories is not None:
    vh = pad_left(valid_histories, config.max_history)
    vrows = item_rows(index, vh, n, unknown="ignore")
    vt = index.get_indexer(np.asarray(valid_targets, dtype=object))
    ok = vt >= 0
    if ok.any():
      vb = None
      if vocab.num_user_buckets:
        vb = user_buckets(valid_user_ids, vocab.num_user_buckets)[ok]
      valid_ds = _dataset(vrows[ok], vt[ok].astype(np.int32), vb, tokens, 1024, False, config.seed)
      callbacks += [tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience),
                    _BestWeights()]
  hist_obj = model.fit(train_ds, validation_data=valid_ds, epochs=config.epochs, callbacks=callbacks, verbose=verbose)
  h = hist_obj.history
  val = h.get("val_loss", [])
  training = {"examples": int(len(targets)), "epoch_seconds": [float(s) for s in callbacks[0].seconds],
              "loss": [float(x) for x in h.get("loss", [])], "val_loss": [float(x) for x in val],
              "best_epoch": int(np.argmin(val)) + 1 if val else len(h.get("loss", [])),
              "parameters": int(model.count_params()), "stopped_by_budget": callbacks[0].stopped_by_budget}
  return GenerativeModel(model, vocab, config, ids, full, training)


class GenerativeSource:
  """A candidate source for the ranking cascade (duck-typed: ``name`` and ``retrieve``).

  Args:
    model: A ``GenerativeModel``.
    beam_width: Beam width (default the model's; raised to k when smaller).
    name: Source name.

  ``retrieve(histories [Q, H] object ("" padding, most recent last), k) -> (item_ids [Q, k] object,
  scores [Q, k] float32)``: the decoded top-k (history items excluded; unknown history items ignored;
  "" / ``NO_ITEM_SCORE`` in slots the trie cannot fill).
  """

  def __init__(self, model: GenerativeModel, beam_width: Optional[int] = None, name: str = "generative"):
    self.model, self.beam_width, self.name = model, beam_width, name

  def retrieve(self, histories, k: int) -> tuple:
    return self.model.retrieve(histories, k=k, beam_width=max(int(self.beam_width or self.model.config.beam_width), k),
                               unknown_items="ignore")


__all__ = ["GenerativeModel", "GenerativeRetrievalModule", "GenerativeSource", "HISTORY_INPUT", "USER_INPUT",
           "module_item_ids", "train_generative", "training_examples", "user_buckets"]
