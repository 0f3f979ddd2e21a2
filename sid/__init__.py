"""Content-derived item IDs: cluster IDs, Semantic IDs and their adapters."""
from semrec.sid.adapters import ID_KNOWN, ItemRepresentation, ItemRepresentationConfig, cluster_feature  # noqa: E402
from semrec.sid.budget import budget_table, lookups_per_item, ngram_spans, table_rows  # noqa: E402
from semrec.sid.spm import SidSpm, SpmSegmenter, sid_to_string, train_sid_spm  # noqa: E402
from semrec.sid.kmeans import (ClusterIdEmbedding, ClusterIdLayer, fit_cluster_granularities, fit_kmeans,  # noqa: E402
                                lloyd_statistics, lloyd_update, refine_kmeans,
                                validate_embeddings)
from semrec.sid.quantizer import ResidualQuantizer, rq_vae_loss  # noqa: E402
from semrec.sid.assign import (InputNormalizer, SidAssigner, assign_shard, assign_sids, collect_table,  # noqa: E402
                               predict_codes, shard_starts)
from semrec.sid.rqvae import RQVAE, RQVAEConfig  # noqa: E402
from semrec.sid.model import SidModel  # noqa: E402
from semrec.sid.training import train_sid_model  # noqa: E402
from semrec.sid.table import SidTable, compute_suffix  # noqa: E402
from semrec.sid.health import format_health_table, plot_code_usage, sid_health, write_health_report  # noqa: E402

__all__ = [
    "ID_KNOWN", "ItemRepresentation", "ItemRepresentationConfig", "cluster_feature", "budget_table", "lookups_per_item", "ngram_spans",
    "table_rows", "SidSpm", "SpmSegmenter", "sid_to_string", "train_sid_spm",
    "ClusterIdEmbedding", "ClusterIdLayer", "fit_cluster_granularities", "fit_kmeans", "validate_embeddings",
    "lloyd_statistics", "lloyd_update", "refine_kmeans",
    "ResidualQuantizer", "rq_vae_loss", "InputNormalizer", "SidAssigner", "assign_sids", "assign_shard",
    "collect_table", "shard_starts", "predict_codes",
    "RQVAE", "RQVAEConfig", "SidModel", "train_sid_model", "SidTable", "compute_suffix",
    "format_health_table", "plot_code_usage", "sid_health", "write_health_report",
]
