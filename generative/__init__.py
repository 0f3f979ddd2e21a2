"""Generative retrieval over Semantic IDs (TIGER-style): SID tokens, an encoder-decoder transformer, a trie of
the catalogue's valid SIDs, trie-constrained beam search in the graph, the offline next-item table, and a
candidate source for the ranking cascade. Imports ``data``, ``sid`` (and ``towers``' evaluation helpers)."""
from semrec.generative.vocab import (BOS, EOS, PAD, SidVocabulary, check_unique, item_rows, pad_left,  # noqa: E402
                                     stable_full_codes, table_full_codes)
from semrec.generative.model import ENCODER_TOKENS, GenerativeConfig, SidSeq2Seq, TransformerBlock, build_seq2seq
from semrec.generative.trie import Trie
from semrec.generative.beam import NEG, NO_ITEM_SCORE, constrained_beam_search
from semrec.generative.retriever import (HISTORY_INPUT, USER_INPUT, GenerativeModel, GenerativeRetrievalModule,
                                         GenerativeSource, module_item_ids, train_generative, training_examples,
                                         user_buckets)
from semrec.generative.table import NextItemTable, NextItemTableModule, build_next_item_table

__all__ = [
    "BOS", "EOS", "PAD", "SidVocabulary", "check_unique", "item_rows", "pad_left", "stable_full_codes",
    "table_full_codes", "ENCODER_TOKENS", "GenerativeConfig", "SidSeq2Seq", "TransformerBlock", "build_seq2seq",
    "Trie", "NEG", "NO_ITEM_SCORE", "constrained_beam_search", "HISTORY_INPUT", "USER_INPUT", "GenerativeModel",
    "GenerativeRetrievalModule", "GenerativeSource", "module_item_ids", "train_generative", "training_examples",
    "user_buckets", "NextItemTable", "NextItemTableModule", "build_next_item_table",
]
