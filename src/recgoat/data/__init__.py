"""Datasets: one in-memory type and loaders for the field's formats."""
from recgoat.data.dataset import SPLITS, RecDataset, array_digest, check_feature_matrix, matrix_from_pairs
from recgoat.data.errors import DataError
from recgoat.data.interaction_table import load_csv
from recgoat.data.mmrec import load_mmrec, load_split_txt
from recgoat.data.movielens import download_ml100k, load_movielens
from recgoat.data.splitting import assemble_splits, kcore_filter, split_per_user
from recgoat.data.synthetic import make_synthetic
from recgoat.data.unisrec import load_unisrec

__all__ = [
    "SPLITS", "DataError", "RecDataset", "array_digest", "assemble_splits", "check_feature_matrix",
    "download_ml100k", "kcore_filter", "load_csv", "load_mmrec", "load_movielens", "load_split_txt", "load_unisrec",
    "make_synthetic", "matrix_from_pairs", "split_per_user",
]
