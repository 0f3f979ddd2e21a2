"""The SID ranker: multitask DCN ranker, sequential training, cold-start AUC, the representation sweep, serving."""
from semrec.ranking.data import (CONTEXT_COLUMNS, CONTEXT_DIM, RankingExamples, RankingFeaturizer, SequentialSplit,
                                 context_features, daily_split, sequential_split)
from semrec.ranking.experiment import (ALL_MODES, HEADLINE_BUDGETS, HEADLINE_MODES, MODE_COMPONENTS,
                                       ExperimentResult, run_ranking_experiment)
from semrec.ranking.experiment_report import format_summary, plot_experiment
from semrec.ranking.metrics import auc, sliced_auc
from semrec.ranking.model import CrossStack, MlpStack, Ranker, RankerConfig, binary_task, needs_content
from semrec.ranking.piece_stats import lookup_statistics, piece_support, unseen_piece_share
from semrec.ranking.serving import ItemVectorCache, RankerServingModule
from semrec.ranking.training import (RankerRun, SequentialData, build_item_representation, evaluate,
                                     make_featurizer, predict, prepare_sequential, train_ranker, train_sequential)

__all__ = [
    "CONTEXT_COLUMNS", "CONTEXT_DIM", "RankingExamples", "RankingFeaturizer", "SequentialSplit", "context_features",
    "sequential_split", "daily_split", "CrossStack", "MlpStack", "binary_task", "lookup_statistics",
    "piece_support", "unseen_piece_share", "ALL_MODES", "HEADLINE_BUDGETS", "HEADLINE_MODES", "MODE_COMPONENTS", "ExperimentResult",
    "format_summary", "plot_experiment", "run_ranking_experiment", "auc", "sliced_auc", "Ranker", "RankerConfig",
    "needs_content", "ItemVectorCache", "RankerServingModule", "RankerRun",
    "SequentialData", "build_item_representation", "evaluate", "make_featurizer", "predict", "prepare_sequential",
    "train_ranker", "train_sequential",
]
