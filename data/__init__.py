"""Datasets: the bundled MovieLens, the synthetic multimodal world, the generic format, splits, tf.data."""
from semrec.data.dataset import DataError, DataWarning, RecDataset
from semrec.data.generic import load_generic, read_table
from semrec.data.movielens import MOVIELENS_DIR, load_movielens
from semrec.data.pipelines import PAD_ITEM, ItemFeatures, make_tf_dataset, user_histories
from semrec.data.queries import SPLITS, EvalSplit, Queries
from semrec.data.split import TemporalSplit, make_split, temporal_split, time_periods
from semrec.data.synthetic import SyntheticConfig, make_synthetic, write_wav

__all__ = [
    "DataError", "DataWarning", "RecDataset", "load_generic", "read_table", "MOVIELENS_DIR", "load_movielens", "PAD_ITEM",
    "ItemFeatures", "make_tf_dataset", "user_histories", "TemporalSplit", "temporal_split", "time_periods",
    "SPLITS", "EvalSplit", "Queries", "make_split",
    "SyntheticConfig", "make_synthetic", "write_wav",
]
