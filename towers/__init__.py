"""Two-tower retrieval: query/candidate towers, TFRS model, score blocks (Etsy quality vector, content similarity)
and their tuner, ScaNN/brute-force index, metrics."""
from semrec.towers.index import (IndexConfig, RetrievalIndex, brute_force_top_k, build_and_save_index, build_index,
                                 index_report, multi_query_top_k, recall_against_exact)
from semrec.towers.sharded_index import ShardedIndex, build_sharded_index, merge_top_k, shard_of
from semrec.towers.inputs import RetrievalInputs, item_frequencies, sequence_windows
from semrec.towers.evaluation import DEFAULT_KS, NDCG_KS, dot_scores, evaluate_scores, query_metrics
from semrec.towers.baselines import (BASELINES, ContentKnnBaseline, PopularityBaseline, TransitionBaseline,
                                    evaluate_baselines, select_knn_decay)
from semrec.towers.score_blocks import (MIX_POOLINGS, QUALITY_MODES, ContentBlock, QualityBlock, ScoreBlock,
                                        ScoreComposer, ScoreConfig)
from semrec.towers.model import (RetrieverConfig, TwoTowerRetriever, compile_retriever, embed_candidates,
                                 embed_queries, init_model, load_retriever, save_retriever)
from semrec.towers.sequential import SequentialQueryTower, SequentialTowerConfig
from semrec.towers.distributed import gather_candidates
from semrec.towers.tasks import MixedNegativeRetrieval
from semrec.towers.training import (FitConfig, ValidationEarlyStopping, evaluate_retriever, query_embeddings,
                                    query_features, selection_score, train_and_evaluate)
from semrec.towers.tuning import choose_point, tune_content_mix, tune_quality_weights
from semrec.towers.comparison_report import comparison_markdown, comparison_table, plot_comparison
from semrec.towers.comparison import (DEFAULT_VARIANTS, ITEM_REPRESENTATIONS, VARIANTS, ComparisonConfig, ItemSide,
                                      build_variant_retriever, prepare_item_side, run_retrieval_comparison, run_variant, select_served,
                                      served_retriever, variant_config)
from semrec.towers.quality import QualityConfig, QualityVector
from semrec.towers.residual import ContentResidual, content_basis
from semrec.towers.item_encoder import ItemEncoder, ItemEncoderConfig
from semrec.towers.towers import CandidateTower, CandidateTowerConfig, QueryTower, QueryTowerConfig

__all__ = [
    "ShardedIndex", "build_sharded_index", "merge_top_k", "shard_of",
    "IndexConfig", "RetrievalIndex", "brute_force_top_k", "build_and_save_index", "build_index", "index_report",
    "multi_query_top_k", "recall_against_exact", "RetrievalInputs", "item_frequencies", "sequence_windows", "SequentialQueryTower",
    "SequentialTowerConfig", "MixedNegativeRetrieval", "gather_candidates", "MIX_POOLINGS", "QUALITY_MODES",
    "ContentBlock", "QualityBlock", "ScoreBlock", "ScoreComposer", "ScoreConfig", "choose_point", "RetrieverConfig",
    "TwoTowerRetriever", "compile_retriever",
    "embed_candidates", "embed_queries", "init_model", "load_retriever", "save_retriever", "tune_quality_weights",
    "FitConfig", "ValidationEarlyStopping", "evaluate_retriever", "query_embeddings", "query_features",
    "tune_content_mix", "selection_score",
    "train_and_evaluate", "DEFAULT_VARIANTS", "ITEM_REPRESENTATIONS", "VARIANTS", "ComparisonConfig", "ItemSide",
    "build_variant_retriever", "comparison_markdown", "comparison_table", "plot_comparison", "prepare_item_side",
    "run_retrieval_comparison", "run_variant", "select_served", "served_retriever", "variant_config", "QualityConfig", "QualityVector",
    "CandidateTower", "CandidateTowerConfig", "ItemEncoder", "ItemEncoderConfig", "QueryTower", "QueryTowerConfig",
    "ContentResidual", "content_basis",
    "DEFAULT_KS", "NDCG_KS", "dot_scores", "evaluate_scores", "query_metrics", "BASELINES", "ContentKnnBaseline",
    "PopularityBaseline", "TransitionBaseline", "evaluate_baselines", "select_knn_decay",
]
