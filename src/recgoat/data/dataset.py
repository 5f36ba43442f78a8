"""The one in-memory dataset type every layer of recgoat shares.

Loaders produce it, graph builders and models read it, the evaluator reads its masks. It holds
no torch modules and no file handles: numpy and scipy only, so it pickles and hashes cheaply.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from recgoat.data.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass
class RecDataset:
    """Implicit-feedback interactions with a train/valid/test split and optional side features.

    Attributes:
        name: a short label used in logs and results.
        train, valid, test: binary CSR matrices of shape ``[n_users, n_items]``.
        item_features: ``{modality: float32[n_items, d_m]}``, e.g. ``{"text": ..., "image": ...}``.
        user_features: optional ``float32[n_users, d_u]`` (e.g. embedded LLM user preferences).
        user_ids, item_ids: the original ids, row ``k`` of the matrices is ``user_ids[k]``.
    """

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_features: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.train.shape
        for split in SPLITS:
            m = sp.csr_matrix(getattr(self, split), dtype=np.float32)
            if m.shape != shape:
                raise DataError(f"split '{split}' has shape {m.shape}, expected {shape} like 'train'")
            m.sum_duplicates()
            m.data[:] = 1.0
            m.sort_indices()
            setattr(self, split, m)
        if self.train.nnz == 0:
            raise DataError(f"dataset '{self.name}': the train split is empty")
        for modality, x in list(self.item_features.items()):
            self.item_features[modality] = check_feature_matrix(
                x, self.n_items, what=f"item feature '{modality}'", rows="items")
        if self.user_features is not None:
            self.user_features = check_feature_matrix(
                self.user_features, self.n_users, what="user features", rows="users")
        if self.user_ids is None:
            self.user_ids = np.arange(self.n_users)
        if self.item_ids is None:
            self.item_ids = np.arange(self.n_items)
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise DataError(
                f"dataset '{self.name}': id maps have {len(self.user_ids)} users / {len(self.item_ids)} "
                f"items, the matrices {self.n_users} / {self.n_items}")

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> sp.csr_matrix:
        if name not in SPLITS:
            raise KeyError(f"unknown split '{name}', expected one of {SPLITS}")
        return getattr(self, name)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of the training interactions, int64, sorted by user then item."""
        coo = self.train.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)

    def item_popularity(self) -> np.ndarray:
        """Number of training interactions per item."""
        return np.asarray(self.train.sum(axis=0)).ravel()

    def fingerprint(self) -> str:
        """A hash of everything a model or cache may depend on (interactions and features).

        Computed once per dataset object (datasets are not modified after loading).
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in SPLITS:
            m = self.split(split)
            h.update(split.encode())
            h.update(np.asarray(m.shape, dtype=np.int64).tobytes())
            h.update(m.indptr.astype(np.int64).tobytes())
            h.update(m.indices.astype(np.int64).tobytes())
        for modality in sorted(self.item_features):
            h.update(modality.encode())
            h.update(array_digest(self.item_features[modality]).encode())
        if self.user_features is not None:
            h.update(b"user_features")
            h.update(array_digest(self.user_features).encode())
        return h.hexdigest()

    def stats(self) -> dict:
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            **{f"n_{split}": int(self.split(split).nnz) for split in SPLITS},
            "density": float(sum(self.split(s).nnz for s in SPLITS) / (self.n_users * self.n_items)),
            "item_features": {m: int(x.shape[1]) for m, x in self.item_features.items()},
            "user_features": None if self.user_features is None else int(self.user_features.shape[1]),
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (f"RecDataset({s['name']}: {s['n_users']} users, {s['n_items']} items, "
                f"train/valid/test {s['n_train']}/{s['n_valid']}/{s['n_test']}, "
                f"item features {s['item_features']}, user features {s['user_features']})")


def array_digest(x: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    x = np.ascontiguousarray(x)
    h = hashlib.sha256()
    h.update(str(x.dtype).encode())
    h.update(np.asarray(x.shape, dtype=np.int64).tobytes())
    h.update(x.tobytes())
    return h.hexdigest()


def check_feature_matrix(x: np.ndarray, n_rows: int, what: str, rows: str, source: str = "") -> np.ndarray:
    """Validate a feature matrix and return it as contiguous float32.

    Raises DataError naming ``source`` (a file) and the first offending row.
    """
    where = f" ({source})" if source else ""
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{what}{where}: expected a 2-d array [{rows}, dim], got shape {x.shape}")
    if x.shape[0] != n_rows:
        raise DataError(
            f"{what}{where}: has {x.shape[0]} rows but the dataset has {n_rows} {rows}; "
            f"row k must hold the features of {rows[:-1]} index k")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what}{where}: dtype {x.dtype} is not numeric")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        n_bad_rows = int(bad.any(axis=1).sum())
        raise DataError(
            f"{what}{where}: {n_bad_rows} row(s) hold NaN or Inf, first at row {row} "
            f"(column {col}, value {x[row, col]})")
    return x


def matrix_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary CSR matrix from (user, item) index arrays."""
    data = np.ones(len(users), dtype=np.float32)
    m = sp.csr_matrix((data, (np.asarray(users), np.asarray(items))), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m
