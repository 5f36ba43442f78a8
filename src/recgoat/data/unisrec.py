"""UniSRec/RecBole sequential files (``<name>.test.inter``, ``<name>.valid.inter``, id maps) as a split dataset.

The test file holds each user's chronological history (``item_id_list``, last 50) and its last
item (``item_id``). The shipped leave-one-out split is kept: last item -> test, the one before
-> valid (checked against ``<name>.valid.inter``), the rest -> train.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from recgoat.data.dataset import RecDataset
from recgoat.data.errors import DataError
from recgoat.data.features import check_row_order, find_feature_files, load_item_features, load_user_features
from recgoat.data.splitting import TEST, TRAIN, VALID, assemble_splits


def _read_index(path: Path) -> np.ndarray:
    raw: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 'raw_id<TAB>index', got {line.strip()!r}")
            try:
                raw[int(parts[1])] = parts[0]
            except ValueError:
                raise DataError(f"{path}:{lineno}: field 'index' = {parts[1]!r} is not an integer") from None
    if sorted(raw) != list(range(len(raw))):
        raise DataError(f"{path}: indices are not contiguous 0..{len(raw) - 1}")
    return np.asarray([raw[i] for i in range(len(raw))], dtype=object)


def _read_sequences(path: Path, n_users: int, n_items: int) -> dict[int, tuple[list[int], int]]:
    out = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [h.split(":")[0] for h in next(reader, [])]
        if header[:3] != ["user_id", "item_id_list", "item_id"]:
            raise DataError(f"{path}:1: header {header} is not 'user_id item_id_list item_id'")
        for lineno, row in enumerate(reader, start=2):
            try:
                u, hist, target = int(row[0]), [int(t) for t in row[1].split()], int(row[2])
            except (ValueError, IndexError):
                raise DataError(f"{path}:{lineno}: malformed row {row!r}") from None
            bad = [i for i in (*hist, target) if not 0 <= i < n_items]
            if not 0 <= u < n_users or bad:
                raise DataError(f"{path}:{lineno}: user {u} or item(s) {bad} outside the id maps")
            out[u] = (hist, target)
    return out


def load_unisrec(path: str | Path, name: str = "Scientific", feature_dir: str | Path | None = None,
                 modalities: list[str] | None = None, user_features: bool = True) -> RecDataset:
    """Load a UniSRec-format folder (e.g. ``../shared/data/amazon-scientific-unisrec``)."""
    folder = Path(path)
    for suffix in ("test.inter", "valid.inter", "item2index", "user2index"):
        if not (folder / f"{name}.{suffix}").exists():
            raise DataError(f"{folder / f'{name}.{suffix}'}: not found")
    user_ids = _read_index(folder / f"{name}.user2index")
    item_ids = _read_index(folder / f"{name}.item2index")
    n_users, n_items = len(user_ids), len(item_ids)
    test = _read_sequences(folder / f"{name}.test.inter", n_users, n_items)
    valid = _read_sequences(folder / f"{name}.valid.inter", n_users, n_items)
    users, items, labels = [], [], []
    for u, (hist, target) in test.items():
        if len(hist) < 2:
            continue
        if u in valid and valid[u][1] != hist[-1]:
            raise DataError(f"{folder / f'{name}.valid.inter'}: user {u}'s valid item {valid[u][1]} is not the "
                            f"second-to-last item {hist[-1]} of the test history")
        seq = [*hist, target]
        users += [u] * len(seq)
        items += seq
        labels += [TRAIN] * (len(seq) - 2) + [VALID, TEST]
    fdir = Path(feature_dir) if feature_dir else None
    feats = load_item_features(find_feature_files(fdir, modalities), n_items) if fdir else {}
    dataset = assemble_splits(name, np.asarray(users), np.asarray(items), np.asarray(labels), n_users, n_items,
                              source=str(folder / f"{name}.test.inter"), item_features=feats,
                              user_features=load_user_features(fdir, n_users, user_features) if fdir else None,
                              user_ids=user_ids, item_ids=item_ids)
    return check_row_order(dataset, fdir)
