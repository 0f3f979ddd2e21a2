"""The second stage: candidate sources and their merge, the cascade ranker, and the SID ranker: multitask DCN ranker, sequential training, cold-start AUC, the representation sweep, serving."""
from semrec.ranking.candidates import (MergedCandidates, ScoreSource, SourceResult, candidate_recall,
                                       fresh_item_filter, merge_candidates)
from semrec.ranking.cascade import (Cascade, CascadeConfig, build_sources, candidate_stage, evaluate_cascade,
                                    train_cascade)
from semrec.ranking.data import (CONTEXT_COLUMNS, CONTEXT_DIM, RankingExamples, RankingFeaturizer, SequentialSplit,
                                 context_features, daily_split, sequential_split)
from semrec.ranking.experiment import (ALL_MODES, HEADLINE_BUDGETS, HEADLINE_MODES, MODE_COMPONENTS,
                                       ExperimentResult, run_ranking_experiment)
from semrec.ranking.experiment_report import format_summary, plot_experiment
from semrec.ranking.metrics import auc, sliced_auc
from semrec.ranking.model import CrossStack, MlpStack, Ranker, RankerConfig, binary_task, needs_content
from semrec.ranking.piece_stats import lookup_statistics, piece_support, unseen_piece_share
from semrec.ranking.serving import ItemVectorCache, RankerServingModule
from semrec.ranking.two_stage import run_two_stage, two_stage_table
from semrec.ranking.training import (RankerRun, SequentialData, build_item_representation, evaluate,
                                     make_featurizer, predict, prepare_sequential, train_ranker, train_sequential)

__all__ = [
    "Cascade", "CascadeConfig", "MergedCandidates", "ScoreSource", "SourceResult", "build_sources", "candidate_recall",
    "candidate_stage", "evaluate_cascade", "fresh_item_filter", "merge_candidates", "run_two_stage",
    "train_cascade", "two_stage_table",
    "CONTEXT_COLUMNS", "CONTEXT_DIM", "RankingExamples", "RankingFeaturizer", "SequentialSplit", "context_features",
    "sequential_split", "daily_split", "CrossStack", "MlpStack", "binary_task", "lookup_statistics",
    "piece_support", "unseen_piece_share", "ALL_MODES", "HEADLINE_BUDGETS", "HEADLINE_MODES", "MODE_COMPONENTS", "ExperimentResult",
    "format_summary", "plot_experiment", "run_ranking_experiment", "auc", "sliced_auc", "Ranker", "RankerConfig",
    "needs_content", "ItemVectorCache", "RankerServingModule", "RankerRun",
    "SequentialData", "build_item_representation", "evaluate", "make_featurizer", "predict", "prepare_sequential",
    "train_ranker", "train_sequential",
]
