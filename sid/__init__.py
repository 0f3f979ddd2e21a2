"""Content-derived item IDs: cluster IDs, Semantic IDs and their adapters."""
from semrec.sid.adapters import ItemRepresentation, ItemRepresentationConfig  # noqa: E402
from semrec.sid.budget import budget_table, lookups_per_item, ngram_spans, table_rows  # noqa: E402
from semrec.sid.spm import SidSpm, SpmSegmenter, sid_to_string, train_sid_spm  # noqa: E402

__all__ = [
    "ItemRepresentation", "ItemRepresentationConfig", "budget_table", "lookups_per_item", "ngram_spans",
    "table_rows", "SidSpm", "SpmSegmenter", "sid_to_string", "train_sid_spm",
]
