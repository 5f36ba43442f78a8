"""k-core filtering, the seeded per-user 8:1:1 split of the protocol, and split assembly."""
from __future__ import annotations

import logging

import numpy as np

from recgoat.data.dataset import SPLITS, RecDataset, matrix_from_pairs
from recgoat.data.errors import DataError

log = logging.getLogger(__name__)

TRAIN, VALID, TEST = 0, 1, 2


def kcore_filter(users: np.ndarray, items: np.ndarray, user_k: int = 5, item_k: int = 5
                 ) -> np.ndarray:
    """Boolean mask of the interactions that survive iterative k-core filtering.

    Repeatedly drops users with fewer than ``user_k`` and items with fewer than ``item_k``
    interactions until both conditions hold for everything left. Duplicated pairs count once.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    keep = np.ones(len(users), dtype=bool)
    while True:
        u, ui = np.unique(users[keep], return_inverse=True)
        i, ii = np.unique(items[keep], return_inverse=True)
        u_deg = np.bincount(ui, minlength=len(u))
        i_deg = np.bincount(ii, minlength=len(i))
        bad = (u_deg[ui] < user_k) | (i_deg[ii] < item_k)
        if not bad.any():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[bad]] = False


def split_per_user(users: np.ndarray, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
                   ) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) per interaction: the protocol's random per-user split.

    A user's interactions are shuffled with ``seed``. With n interactions, a user with n < 10 gets
    n-2 train, 1 valid, 1 test; otherwise ``vt = int((1 - train_ratio) n)``, ``valid = vt // 2``,
    ``test = vt - valid``, the rest train (MMRec's recipe; ``ratios`` other than 8:1:1 scale ``vt``
    and its valid share). Users with fewer than 3 interactions keep all of them in train.
    Vectorised: no Python loop over users.
    """
    users = np.asarray(users)
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios {ratios} must sum to 1")
    rng = np.random.default_rng(seed)
    n = len(users)
    # shuffle within each user: sort by (user, random key)
    order = np.lexsort((rng.random(n), users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    per_user_n = np.repeat(counts, counts)

    held = np.floor((1.0 - ratios[0]) * per_user_n + 1e-9).astype(np.int64)
    valid_share = ratios[1] / (ratios[1] + ratios[2]) if ratios[1] + ratios[2] > 0 else 0.0
    n_valid = np.floor(held * valid_share + 1e-9).astype(np.int64)
    small = per_user_n < 10
    held = np.where(small, 2, held)
    n_valid = np.where(small, 1, n_valid)
    tiny = per_user_n < 3
    held = np.where(tiny, 0, held)
    n_valid = np.where(tiny, 0, n_valid)
    n_train = per_user_n - held

    label_sorted = np.full(n, TRAIN, dtype=np.int8)
    label_sorted[(rank >= n_train) & (rank < n_train + n_valid)] = VALID
    label_sorted[rank >= n_train + n_valid] = TEST
    labels = np.empty(n, dtype=np.int8)
    labels[order] = label_sorted
    return labels


def assemble_splits(name: str, users: np.ndarray, items: np.ndarray, labels: np.ndarray,
                    n_users: int, n_items: int, source: str, **kwargs) -> RecDataset:
    """Build a RecDataset from index arrays and split labels.

    Duplicate (user, item) pairs within a split are dropped with a warning; a pair held out in
    valid/test that is also in train is dropped from the held-out split (it is masked at ranking
    time, so it could never count), also with a warning. Empty splits are errors.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    labels = np.asarray(labels)
    keys = users * n_items + items
    mats = {}
    seen = np.empty(0, dtype=np.int64)
    for code, split in enumerate(SPLITS):
        sel = labels == code
        k = keys[sel]
        uniq = np.unique(k)
        if len(uniq) < len(k):
            log.warning("%s: %d duplicate interaction(s) in split '%s' dropped", source, len(k) - len(uniq), split)
        if code > TRAIN:
            clash = np.isin(uniq, seen, assume_unique=True)
            if clash.any():
                log.warning("%s: %d (user, item) pair(s) of split '%s' are also in an earlier split; "
                            "dropped from '%s'", source, int(clash.sum()), split, split)
                uniq = uniq[~clash]
        if len(uniq) == 0:
            raise DataError(f"{source}: split '{split}' is empty")
        seen = np.union1d(seen, uniq)
        mats[split] = matrix_from_pairs(uniq // n_items, uniq % n_items, n_users, n_items)
    return RecDataset(name=name, **mats, **kwargs)


def remap_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense 0-based indices for raw ids: (index per entry, sorted unique raw ids)."""
    uniq, inverse = np.unique(raw, return_inverse=True)
    return inverse.astype(np.int64), uniq
