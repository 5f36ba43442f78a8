"""Your own interactions: a CSV / TSV (or Parquet) file with named columns.

    python -m recgoat.run dataset=csv dataset.path=interactions.csv dataset.columns.user=customer_id ...

Rows become implicit feedback (optionally only ratings >= ``min_rating``), duplicates count once, an optional
iterative k-core filter follows, and the split is the protocol's seeded per-user 8:1:1 split or a temporal
leave-one-out split (each user's last interaction is test, the one before valid). Ids may be any strings;
rows of the matrices follow the sorted ids (numerically when every id is an integer), kept as
``user_ids`` / ``item_ids`` so that feature files and recommendations map back to them.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from recgoat.data.dataset import RecDataset
from recgoat.data.errors import DataError
from recgoat.data.features import check_row_order, find_feature_files, load_item_features, load_user_features
from recgoat.data.mmrec import open_text
from recgoat.data.splitting import TEST, TRAIN, VALID, assemble_splits, kcore_filter, split_per_user

log = logging.getLogger(__name__)

SPLIT_KINDS = ("random", "temporal_loo")


def _canonical_int(s: str) -> int | None:
    """``s`` as an integer when it is written as Python writes that integer (``7``, ``-3``) and fits int64, else
    ``None``: ``007``, ``+7``, ``1_0`` and a 30-digit number stay strings, so two ids never become one."""
    try:
        value = int(s)
    except ValueError:
        return None
    return value if str(value) == s and -2**63 <= value < 2**63 else None


def _sorted_ids(raw: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(index per entry, ids in index order): ids that are all canonical integers are integers, sorted numerically;
    otherwise every id is the string as written (``7`` and ``007`` are two ids), sorted as strings."""
    uniq = sorted(set(raw))
    as_int = {s: _canonical_int(s) for s in uniq}
    if all(v is not None for v in as_int.values()):
        uniq = sorted(uniq, key=as_int.__getitem__)
        ids = np.asarray([as_int[s] for s in uniq], dtype=np.int64)
    else:
        ids = np.asarray(uniq, dtype=object)
    index = {s: k for k, s in enumerate(uniq)}
    return np.fromiter((index[s] for s in raw), dtype=np.int64, count=len(raw)), ids


def _number(token: str, path: Path, lineno: int, field: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: field '{field}' = {token!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{path}:{lineno}: field '{field}' = {token!r} is not finite")
    return value


def read_interactions(path: Path, columns: dict, delimiter: str | None) -> dict[str, list]:
    """Rows of the columns named in ``columns`` (``user``, ``item``; ``rating`` and ``timestamp`` optional,
    null when absent), with each row's line number; a row that cannot be read is named by file:line:field."""
    wanted = {k: v for k, v in columns.items() if v is not None}
    for key in ("user", "item"):
        if key not in wanted:
            raise DataError(f"dataset.columns.{key}: required (the column holding the {key} id)")
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path, wanted)
    delim = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab", ".inter") else ",")
    out: dict[str, list] = {k: [] for k in (*wanted, "line")}
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delim)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty (expected a header line naming the columns)")
        header = [h.strip() for h in header]
        missing = [f"{k}={v!r}" for k, v in wanted.items() if v not in header]
        if missing:
            raise DataError(f"{path}:1: no column {', '.join(missing)} in the header {header} (set "
                            f"dataset.columns.<user|item|rating|timestamp> to the file's names, dataset.delimiter "
                            f"if it is not {delim!r})")
        pos = {k: header.index(v) for k, v in wanted.items()}
        for row in reader:
            lineno = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: {len(row)} fields, the header has {len(header)}")
            if [c.strip() for c in row] == header:
                raise DataError(f"{path}:{lineno}: the header line again (files joined with their headers?); "
                                f"remove it, or its names would become a user and an item")
            for key, p in pos.items():
                token = row[p].strip()
                if key in ("user", "item"):
                    if not token:
                        raise DataError(f"{path}:{lineno}: field '{wanted[key]}' ({key} id) is empty")
                    if not token.isprintable():
                        raise DataError(f"{path}:{lineno}: field '{wanted[key]}' ({key} id) {token!r} holds a line "
                                        f"break or another control character; ids are single-line text")
                    out[key].append(token)
                else:
                    out[key].append(_number(token, path, lineno, wanted[key]))
            out["line"].append(lineno)
    if not out["line"]:
        raise DataError(f"{path}: no interactions below the header")
    return out


def _read_parquet(path: Path, wanted: dict) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or save it as CSV") from None
    table = pq.read_table(path)
    missing = [f"{k}={v!r}" for k, v in wanted.items() if v not in table.column_names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (columns: {table.column_names})")
    out = {}
    for key, name in wanted.items():
        values = table.column(name).to_pylist()
        for k, v in enumerate(values):
            if v is None:
                raise DataError(f"{path}: row {k + 1}: field '{name}' is empty")
            if key in ("user", "item") and not str(v).isprintable():
                raise DataError(f"{path}: row {k + 1}: field '{name}' ({key} id) {str(v)!r} holds a line break or "
                                f"another control character; ids are single-line text")
        out[key] = [str(v) for v in values] if key in ("user", "item") else [float(v) for v in values]
    out["line"] = list(range(1, len(out["user"]) + 1))
    return out


def temporal_leave_one_out(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Split label per interaction: each user's latest interaction is test, the one before valid, the rest
    train (ties in time keep the file's order); users with fewer than 3 interactions keep all in train."""
    n = len(users)
    order = np.lexsort((np.arange(n), timestamps, users))  # by user, then time, then file order
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, n])
    from_end = np.repeat(starts + counts, counts) - np.arange(n)  # 1 for the latest
    per_user_n = np.repeat(counts, counts)
    label_sorted = np.full(n, TRAIN, dtype=np.int8)
    held = per_user_n >= 3
    label_sorted[held & (from_end == 1)] = TEST
    label_sorted[held & (from_end == 2)] = VALID
    labels = np.empty(n, dtype=np.int8)
    labels[order] = label_sorted
    return labels


def load_csv(path: str | Path, *, columns: dict, delimiter: str | None, min_rating: float | None, user_k: int,
             item_k: int, split: str, split_seed: int, name: str | None, feature_dir: str | Path | None,
             modalities: list[str] | None, user_features: bool) -> RecDataset:
    """Interactions from a CSV / TSV / Parquet file (see the module docstring).

    Args:
        path: the file (``.csv``: comma, ``.tsv``: tab, unless ``delimiter`` is set; ``.parquet`` with pyarrow).
        columns: ``{user, item, rating, timestamp}``: the header names (rating, timestamp: null if absent).
        delimiter: the field separator; null: from the file's suffix.
        min_rating: keep rows with rating >= this (needs ``columns.rating``); null: every row is feedback.
        user_k, item_k: iterative k-core after de-duplication (0: off).
        split: ``random`` (the protocol's seeded per-user 8:1:1) or ``temporal_loo`` (needs a timestamp).
        split_seed: the seed of the random split.
        name: the dataset's label; null: the file's stem.
        feature_dir: a folder of ``<modality>_feat.npy`` / ``user_pref_feat.npy`` in the row order of the sorted
            ids (what ``python -m recgoat.features`` writes); null: none.
        modalities, user_features: which feature files to read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: interactions file not found (dataset.path)")
    if split not in SPLIT_KINDS:
        raise DataError(f"dataset.split={split!r}: one of {SPLIT_KINDS}")
    if min_rating is not None and columns.get("rating") is None:
        raise DataError(f"dataset.min_rating={min_rating} needs dataset.columns.rating (the rating column's name)")
    if split == "temporal_loo" and columns.get("timestamp") is None:
        raise DataError("dataset.split=temporal_loo needs dataset.columns.timestamp (the time column's name)")
    rows = read_interactions(path, dict(columns), delimiter)
    keep = np.ones(len(rows["line"]), dtype=bool)
    if min_rating is not None:
        keep &= np.asarray(rows["rating"]) >= min_rating
        log.info("%s: %d of %d rows have rating >= %s", path, int(keep.sum()), len(keep), min_rating)
        if not keep.any():
            raise DataError(f"{path}: no row has {columns['rating']} >= {min_rating} (dataset.min_rating)")
    idx = np.flatnonzero(keep)
    raw_users = [rows["user"][k] for k in idx]
    raw_items = [rows["item"][k] for k in idx]
    times = np.asarray(rows["timestamp"], dtype=np.float64)[idx] if "timestamp" in rows else None
    # duplicates count once: a user's first row of an item (its earliest, for the temporal split)
    pairs: dict[tuple[str, str], int] = {}
    for k, key in enumerate(zip(raw_users, raw_items, strict=True)):
        if key not in pairs or (times is not None and times[k] < times[pairs[key]]):
            pairs[key] = k
    if len(pairs) < len(raw_users):
        log.warning("%s: %d duplicate (user, item) row(s) merged", path, len(raw_users) - len(pairs))
    first = np.asarray(sorted(pairs.values()), dtype=np.int64)
    raw_users = [raw_users[k] for k in first]
    raw_items = [raw_items[k] for k in first]
    times = times[first] if times is not None else None
    if user_k or item_k:
        core = kcore_filter(np.asarray(raw_users), np.asarray(raw_items), user_k, item_k)  # any id type
        if not core.any():
            raise DataError(f"{path}: nothing survives the {user_k}/{item_k}-core filter (dataset.user_k, item_k)")
        raw_users = [u for u, c in zip(raw_users, core, strict=True) if c]
        raw_items = [i for i, c in zip(raw_items, core, strict=True) if c]
        times = times[core] if times is not None else None
    users, user_ids = _sorted_ids(raw_users)
    items, item_ids = _sorted_ids(raw_items)
    labels = (temporal_leave_one_out(users, times) if split == "temporal_loo"
              else split_per_user(users, seed=split_seed))
    n_users, n_items = len(user_ids), len(item_ids)
    fdir = Path(feature_dir) if feature_dir else None
    feats = load_item_features(find_feature_files(fdir, modalities), n_items) if fdir else {}
    return check_row_order(assemble_splits(name or path.stem, users, items, labels, n_users, n_items, source=str(path),
                           item_features=feats,
                           user_features=load_user_features(fdir, n_users, user_features) if fdir else None,
                           user_ids=user_ids, item_ids=item_ids), fdir)
