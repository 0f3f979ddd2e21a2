"""Generative retrieval over SIDs: tokens, trie, exact constrained beam search, training, serving, bad input."""
import itertools

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from semrec.data import DataError
from semrec.generative import (NO_ITEM_SCORE, GenerativeConfig, GenerativeSource, SidSeq2Seq, SidVocabulary,
                               TransformerBlock, Trie, build_next_item_table, build_seq2seq,
                               constrained_beam_search, pad_left, stable_full_codes, train_generative)
from semrec.generative.table import NextItemTableModule
from semrec.sid import SidTable


# ---- tokens and trie ---------------------------------------------------------------------------------------


def test_token_layout():
  v = SidVocabulary(num_code_levels=2, codebook_size=4, suffix_size=3, num_user_buckets=2)
  # PAD BOS EOS | level 0: 3..6 | level 1: 7..10 | suffix: 11..13 | users: 14, 15
  assert v.level_offsets == (3, 7, 11) and v.level_sizes == (4, 4, 3)
  assert v.user_offset == 14 and v.vocab_size == 16
  np.testing.assert_array_equal(v.tokens(np.array([[1, 2, 0], [3, 0, 2]])), [[4, 9, 11], [6, 7, 13]])
  m = v.level_mask()
  assert (m[1, 7:11] == 0).all() and m[1, 6] == -1e9 and m[1, 11] == -1e9


def _vocab(k=4, levels=2, suffix=3):
  return SidVocabulary(num_code_levels=levels, codebook_size=k, suffix_size=suffix)


def test_trie_tables_by_hand():
  # a = (0, 1 | 0), b = (0, 1 | 1), c = (2, 0 | 0): level-1 prefixes (0) -> 0, (2) -> 1; level-2 prefixes
  # key = prefix * K + code: (0, 1) -> 1, (2, 0) -> 4 -> ids 0, 1; leaves: item rows 0, 1, 2.
  t = Trie(["a", "b", "c"], [[0, 1, 0], [0, 1, 1], [2, 0, 0]], _vocab())
  np.testing.assert_array_equal(t.children[0], [[0, -1, 1, -1]])
  np.testing.assert_array_equal(t.children[1], [[-1, 0, -1, -1], [1, -1, -1, -1]])
  np.testing.assert_array_equal(t.children[2], [[0, 1, -1], [2, -1, -1]])
  np.testing.assert_array_equal(t.enumerate_sids(), t.full_codes)


def test_duplicate_sids_get_the_suffix_level():
  # b and a share codes (1, 2): compute_suffix numbers the group by item id -> a: 0, b: 1; c alone: 0.
  table = SidTable(["b", "a", "c"], [[1, 2], [1, 2], [0, 3]], 4)
  t = Trie.from_sid_table(table, _vocab())
  np.testing.assert_array_equal(t.full_codes, [[1, 2, 1], [1, 2, 0], [0, 3, 0]])
  # A table whose own suffix repeats an SID is refused, naming both items and the field.
  bad = SidTable(["b", "a", "c"], [[1, 2], [1, 2], [0, 3]], 4, suffix=[0, 0, 0])
  with pytest.raises(DataError, match=r"items 'b' and 'a'|items 'a' and 'b'"):
    Trie.from_sid_table(bad, _vocab())
  with pytest.raises(DataError, match="suffix"):
    Trie.from_sid_table(bad, _vocab())


def test_sid_levels_out_of_range():
  with pytest.raises(DataError, match=r"item 'x': SID level 1 code 4 is out of range \[0, 4\)"):
    _vocab().check_codes(np.array([[0, 4, 0]]), ["x"])
  with pytest.raises(DataError, match=r"item 'y': SID suffix code 3 is out of range"):
    Trie(["y"], [[0, 0, 3]], _vocab(suffix=3))
  with pytest.raises(DataError, match="codebook_size=8 exceeds the model's 4"):
    Trie.from_sid_table(SidTable(["a"], [[7, 0]], 8), _vocab())
  with pytest.raises(DataError, match="3 levels, the model was trained with 2"):
    Trie.from_sid_table(SidTable(["a"], [[0, 0, 0]], 4), _vocab())


def test_new_items_keep_old_suffixes():
  # Trained: "m" alone on (1, 1) -> suffix 0. New "a" joins (1, 1): with_suffix would renumber by id (a: 0,
  # m: 1); the stable rule keeps m = 0 and gives a the next free slot, 1.
  base_ids, base_full = np.array(["m"], object), np.array([[1, 1, 0]])
  new = SidTable(["a", "m", "z"], [[1, 1], [1, 1], [2, 2]], 4)
  np.testing.assert_array_equal(stable_full_codes(new, base_ids, base_full), [[1, 1, 1], [1, 1, 0], [2, 2, 0]])


# ---- beam search: exactness and validity -------------------------------------------------------------------


def _bigram_decoder(table, bias, width):
  """decode(tokens [B*W, t]) -> logits[pos] = table[pos, token at pos] + bias[query] (fixed by hand)."""
  table, bias = tf.constant(table, tf.float32), tf.repeat(tf.constant(bias, tf.float32), width, axis=0)

  def decode(tokens):
    pos = tf.range(tf.shape(tokens)[1])
    return tf.gather_nd(table, tf.stack([tf.broadcast_to(pos, tf.shape(tokens)), tokens], -1)) + bias[:, None, :]
  return decode


def _brute_force(table, bias, vocab, full_codes, exclude=()):
  """[B, N] exact sequence log-probs of every valid SID under the bigram decoder (-inf for excluded rows)."""
  tok = vocab.tokens(full_codes)
  out = np.zeros((len(bias), len(full_codes)))
  for b in range(len(bias)):
    for i, seq in enumerate(tok):
      prev, lp = 1, 0.0  # BOS
      for l, (o, n) in enumerate(zip(vocab.level_offsets, vocab.level_sizes)):
        z = table[l, prev, o:o + n] + bias[b, o:o + n]
        lp += z[seq[l] - o] - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        prev = seq[l]
      out[b, i] = -np.inf if i in exclude else lp
  return out


def _random_case(rng, n_items, k=3, levels=2, suffix=3, n_queries=2):
  vocab = _vocab(k, levels, suffix)
  codes = rng.integers(0, k, (n_items, levels))
  ids = [f"i{j}" for j in range(n_items)]
  trie = Trie.from_sid_table(SidTable(ids, codes, k), vocab)
  table = rng.normal(0, 2, (vocab.num_levels, vocab.vocab_size, vocab.vocab_size))
  bias = rng.normal(0, 2, (n_queries, vocab.vocab_size))
  return vocab, trie, table, bias


def _search(vocab, trie, table, bias, width, k, exclude=None):
  rows, scores, tokens = constrained_beam_search(
      _bigram_decoder(table, bias, width), [tf.constant(c) for c in trie.children], vocab.level_offsets,
      vocab.level_sizes, tf.constant(len(bias)), width, k,
      exclude_rows=None if exclude is None else tf.constant(exclude, tf.int32))
  return rows.numpy(), scores.numpy(), tokens.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_is_exact_when_wide(seed):
  rng = np.random.default_rng(seed)
  vocab, trie, table, bias = _random_case(rng, n_items=7)
  # Width >= number of valid SIDs (7): nothing is pruned, so the top-5 is the brute-force top-5.
  rows, scores, _ = _search(vocab, trie, table, bias, width=7, k=5)
  exact = _brute_force(table, bias, vocab, trie.full_codes)
  for b in range(len(bias)):
    order = np.argsort(-exact[b], kind="stable")[:5]
    np.testing.assert_array_equal(rows[b], order)
    np.testing.assert_allclose(scores[b], exact[b, order], rtol=1e-5, atol=1e-4)


def test_beam_search_excludes_history_items_exactly():
  rng = np.random.default_rng(5)
  vocab, trie, table, bias = _random_case(rng, n_items=6, n_queries=1)
  exact = _brute_force(table, bias, vocab, trie.full_codes)
  top2 = np.argsort(-exact[0])[:2]
  rows, scores, _ = _search(vocab, trie, table, bias, width=6, k=3, exclude=[[top2[0], top2[1], 99]])
  masked = _brute_force(table, bias, vocab, trie.full_codes, exclude=set(top2.tolist()))
  np.testing.assert_array_equal(rows[0], np.argsort(-masked[0], kind="stable")[:3])
  assert not set(rows[0]) & set(top2.tolist())


@pytest.mark.parametrize("seed,width", list(itertools.product(range(4), [1, 2, 3])))
def test_beam_search_never_returns_an_invalid_sid(seed, width):
  rng = np.random.default_rng(100 + seed)
  vocab, trie, table, bias = _random_case(rng, n_items=int(rng.integers(2, 9)), k=4, levels=3, suffix=4,
                                          n_queries=3)
  k = width
  rows, scores, tokens = _search(vocab, trie, table, bias, width=width, k=k)
  for b in range(len(bias)):
    live = rows[b] >= 0
    # every result is a catalogue row, and its decoded tokens are exactly that item's SID
    np.testing.assert_array_equal(tokens[b][live], vocab.tokens(trie.full_codes[rows[b][live]]))
    assert len(set(rows[b][live])) == live.sum()
    assert (np.diff(scores[b][live]) <= 1e-6).all()
    assert (scores[b][~live] == NO_ITEM_SCORE).all()


def test_fewer_items_than_k_leaves_empty_slots():
  rng = np.random.default_rng(9)
  vocab, trie, table, bias = _random_case(rng, n_items=2, n_queries=1)
  rows, scores, _ = _search(vocab, trie, table, bias, width=4, k=4)
  assert sorted(rows[0][:2]) == [0, 1] and (rows[0][2:] == -1).all() and (scores[0][2:] == NO_ITEM_SCORE).all()


# ---- the Keras model ---------------------------------------------------------------------------------------


def test_layers_round_trip_through_config():
  block = TransformerBlock(8, 2, 16, 0.0, causal=True, cross_attention=True)
  x, mem = tf.random.stateless_normal([2, 3, 8], [1, 2]), tf.random.stateless_normal([2, 5, 8], [3, 4])
  mmask = tf.constant([[True] * 5, [True, True, False, False, False]])
  y = block(x, memory=mem, memory_mask=mmask)
  clone = TransformerBlock.from_config(block.get_config())
  clone(x, memory=mem, memory_mask=mmask)
  clone.set_weights(block.get_weights())
  np.testing.assert_allclose(clone(x, memory=mem, memory_mask=mmask), y, rtol=1e-5, atol=1e-6)
  vocab = _vocab()
  model = build_seq2seq(vocab, GenerativeConfig(d_model=8, num_heads=2, ff_dim=16, max_history=3, dropout=0.0,
                                                encoder_tokens="per_item"))
  inputs = {"history": tf.constant([[[0, 0, 0], [3, 8, 11], [4, 7, 12]]]), "decoder": tf.constant([[1, 3, 8]])}
  copy = SidSeq2Seq.from_config(model.get_config())
  copy(inputs)
  copy.set_weights(model.get_weights())
  np.testing.assert_allclose(copy(inputs), model(inputs), rtol=1e-5, atol=1e-5)
  # the step-t logits are restricted to level t: level 0 = tokens 3..6 only
  assert (model(inputs).numpy()[0, 0, 7:] < -1e8).all()


# ---- a trained tiny model ----------------------------------------------------------------------------------

N_ITEMS = 12


@pytest.fixture(scope="module")
def world():
  """12 items on a cycle i0 -> i1 -> ... -> i11 -> i0; 4 codes per level, some SIDs shared (suffix level)."""
  ids = [f"i{j}" for j in range(N_ITEMS)]
  codes = np.array([[j % 4, (j // 4) % 4] for j in range(N_ITEMS)])
  codes[11] = codes[10]  # i10 / i11 collide: told apart by the suffix only
  table = SidTable(ids, codes, 4)
  seqs = {f"u{u}": [ids[(u + t) % N_ITEMS] for t in range(6)] for u in range(48)}
  cfg = GenerativeConfig(d_model=32, num_heads=2, ff_dim=64, max_history=4, dropout=0.0, epochs=40, batch_size=32,
                         learning_rate=3e-3, beam_width=6, top_k=3)
  model = train_generative(seqs, table, cfg)
  return ids, table, seqs, model


def test_training_learns_the_cycle(world):
  ids, table, seqs, model = world
  hist = pad_left([[ids[j - 1], ids[j]] for j in range(1, N_ITEMS)], 4)
  got, scores = model.retrieve(hist, k=1)
  hits = np.mean([got[q, 0] == ids[(q + 2) % N_ITEMS] for q in range(len(hist))])
  # an untrained network decodes the right next item about 1 time in 12
  untrained = build_seq2seq(model.vocab, model.config)
  from semrec.generative import GenerativeModel
  base = GenerativeModel(untrained, model.vocab, model.config, model.item_ids, model.full_codes)
  base_hits = np.mean([base.retrieve(hist, k=1)[0][q, 0] == ids[(q + 2) % N_ITEMS] for q in range(len(hist))])
  assert hits >= 0.9 and base_hits <= 0.5, (hits, base_hits)
  assert model.training["epoch_seconds"] and len(model.training["loss"]) == 40


def test_served_results_equal_in_memory(world, tmp_path):
  from semrec.export import export_generative_retriever
  ids, table, seqs, model = world
  hist = pad_left([[ids[0], ids[1]], [ids[5]], [], [ids[3], ids[4], ids[5], ids[6], ids[7]]], 5)
  res = export_generative_retriever(str(tmp_path), model, hist, beam_width=6, top_k=3)
  fn = tf.saved_model.load(res.path).signatures["serving_default"]
  out = fn(history_item_id=tf.constant(hist.astype(str)))
  want_ids, want_scores = model.retrieve(hist, k=3, beam_width=6)
  np.testing.assert_array_equal(out["item_ids"].numpy().astype(str), want_ids.astype(str))
  np.testing.assert_allclose(out["scores"].numpy(), want_scores, rtol=1e-5, atol=1e-5)
  # history items are never returned
  assert not set(want_ids[0]) & {ids[0], ids[1]}
  # bad input in the graph: an unknown history item fails the request, naming the input and the item
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"history_item_id: unknown item id.*nope"):
    fn(history_item_id=tf.constant([["i1", "nope"]]))
  # and in memory: a DataError naming the item and the field, or dropped with unknown_items="ignore"
  with pytest.raises(DataError, match=r"item 'nope' \(field history_item_id"):
    model.retrieve(np.array([["i1", "nope"]], object))
  ignored, _ = model.retrieve(np.array([["nope", "i1"]], object), unknown_items="ignore")
  np.testing.assert_array_equal(ignored, model.retrieve(np.array([["", "i1"]], object))[0])


def test_empty_history_is_the_unpersonalised_prior(world):
  ids, table, seqs, model = world
  a, sa = model.retrieve(np.array([["", "", ""]], object), k=3)
  b, sb = model.retrieve(np.full((1, 4), "", object), k=3)
  np.testing.assert_array_equal(a, b)
  assert set(a[0]) <= set(ids) and len(set(a[0])) == 3 and (sb > NO_ITEM_SCORE).all()
  module = model.retrieval_module(6, 3)
  served = module.serve({"history_item_id": tf.constant([["", ""]])})
  np.testing.assert_array_equal(served["item_ids"].numpy().astype(str), a.astype(str))


def test_cold_items_become_generable_without_retraining(world):
  ids, table, seqs, model = world
  # a new item with an SID the model never saw (codes of i5 + suffix 1) and one on a new prefix
  new = SidTable(ids + ["new_a", "new_b"], np.vstack([table.codes, table.codes[5], [[3, 3]]]), 4)
  grown = model.with_sid_table(new)
  assert {"new_a", "new_b"} <= set(grown.trie.item_ids) and len(grown.trie) == N_ITEMS + 2
  # old items keep their training suffix; new_a takes the next free one in i5's group
  np.testing.assert_array_equal(grown.full_codes[:N_ITEMS], model.full_codes)
  assert grown.full_codes[N_ITEMS].tolist() == table.codes[5].tolist() + [1]
  got, _ = grown.retrieve(pad_left([[ids[3], ids[4]]], 4), k=2, candidates=["new_a", "new_b"])
  assert sorted(got[0]) == ["new_a", "new_b"]
  # the original model does not know them
  assert "new_a" not in set(model.trie.item_ids)


def test_source_and_catalogue_scores(world):
  ids, table, seqs, model = world
  src = GenerativeSource(model)
  hist = pad_left([[ids[2]], [ids[7], ids[8]]], 3)
  got, scores = src.retrieve(hist, 4)
  assert src.name == "generative" and got.shape == (2, 4) and got.dtype == object and scores.dtype == np.float32
  full = model.score_catalogue(hist, ids, k=4)
  for q in range(2):
    top = np.argsort(-full[q], kind="stable")[:4]
    np.testing.assert_array_equal(np.asarray(ids, object)[top], got[q])


def test_offline_table(world):
  ids, table, seqs, model = world
  inter = [x for s in seqs.values() for x in s]
  t = build_next_item_table(model, inter, num_items=3, k=2, beam_width=4)
  counts = pd.Series(inter).value_counts()
  assert t.coverage["interactions"] == pytest.approx(counts.loc[list(t.item_ids)].sum() / len(inter))
  np.testing.assert_array_equal(t.next_ids, model.retrieve(t.item_ids[:, None], k=2, beam_width=4)[0])
  module = NextItemTableModule(t)
  out = module.serve({"item_id": tf.constant([t.item_ids[1], "unknown"])})
  np.testing.assert_array_equal(out["found"].numpy(), [True, False])
  np.testing.assert_array_equal(out["item_ids"].numpy()[0].astype(str), t.next_ids[1].astype(str))
  assert (out["item_ids"].numpy()[1] == b"").all() and (out["scores"].numpy()[1] == NO_ITEM_SCORE).all()


def test_best_weights_are_restored_however_training_ends():
  from semrec.generative.retriever import _BestWeights
  model = tf.keras.Sequential([tf.keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
  model.build([None, 1])
  cb = _BestWeights()
  cb.set_model(model)
  cb.on_train_begin()
  for w, val in [(1.0, 0.5), (2.0, 0.3), (3.0, 0.4)]:  # epoch 2 (weight 2.0) has the lowest val_loss
    model.set_weights([np.array([[w]], np.float32)])
    cb.on_epoch_end(0, {"val_loss": val})
  cb.on_train_end()  # training ended by the epoch limit, not by early stopping
  assert model.get_weights()[0][0, 0] == 2.0
