"""Two-tower retrieval: query/candidate towers, Etsy quality vector, TFRS model, ScaNN/brute-force index, metrics."""
from semrec.towers.index import (IndexConfig, RetrievalIndex, brute_force_top_k, build_and_save_index, build_index,
                                 index_report, recall_against_exact)
from semrec.towers.inputs import RetrievalInputs, item_frequencies
from semrec.towers.evaluation import DEFAULT_KS, NDCG_KS, evaluate_scores, query_metrics
from semrec.towers.baselines import (BASELINES, ContentKnnBaseline, PopularityBaseline, TransitionBaseline,
                                    evaluate_baselines)
from semrec.towers.metrics import metrics_from_ranks, rank_of_targets, sliced_metrics
from semrec.towers.model import (QUALITY_MODES, RetrieverConfig, TwoTowerRetriever, compile_retriever, embed_candidates,
                                 embed_queries, init_model, load_retriever, save_retriever)
from semrec.towers.comparison import (VARIANTS, ComparisonConfig, build_variant_retriever, fit_retriever,
                                      run_retrieval_comparison)
from semrec.towers.quality import QualityConfig, QualityVector, tune_quality_weights
from semrec.towers.residual import ContentResidual, content_basis
from semrec.towers.towers import (CandidateTower, CandidateTowerConfig, ItemEncoder, ItemEncoderConfig, QueryTower,
                                  QueryTowerConfig)

__all__ = [
    "IndexConfig", "RetrievalIndex", "brute_force_top_k", "build_and_save_index", "build_index", "index_report", "recall_against_exact",
    "RetrievalInputs", "item_frequencies", "metrics_from_ranks", "rank_of_targets", "sliced_metrics",
    "QUALITY_MODES", "RetrieverConfig", "TwoTowerRetriever", "compile_retriever", "embed_candidates", "embed_queries", "init_model",
    "load_retriever", "save_retriever", "tune_quality_weights", "VARIANTS", "ComparisonConfig", "build_variant_retriever", "fit_retriever", "run_retrieval_comparison", "QualityConfig", "QualityVector", "CandidateTower",
    "CandidateTowerConfig", "ContentResidual", "content_basis", "ItemEncoder", "ItemEncoderConfig", "QueryTower", "QueryTowerConfig",
    "DEFAULT_KS", "NDCG_KS", "evaluate_scores", "query_metrics", "BASELINES", "ContentKnnBaseline",
    "PopularityBaseline", "TransitionBaseline", "evaluate_baselines",
]
