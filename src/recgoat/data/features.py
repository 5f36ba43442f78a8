"""Reading feature files that sit beside interaction files (MMRec's ``<modality>_feat.npy``)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from recgoat.data.dataset import check_feature_matrix
from recgoat.data.errors import DataError

USER_FEATURE_FILE = "user_pref_feat.npy"
FEATURE_SUFFIX = "_feat.npy"


def digest(parts) -> str:
    """sha256 over an iterable of str/bytes, each length-prefixed so boundaries count."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def ids_digest(ids) -> str:
    """The digest of an id list that feature sidecars record (``row_order.item_ids_sha256`` / ``user_ids_sha256``)."""
    return digest(str(i) for i in ids)


def train_digest(dataset) -> str:
    """The digest of the training interactions (which split a user profile, built from training items, belongs to)."""
    train = dataset.train
    return digest([np.asarray(train.shape, np.int64).tobytes(), train.indptr.astype(np.int64).tobytes(),
                   train.indices.astype(np.int64).tobytes()])


def check_row_order(dataset, folder: Path | None):
    """``dataset``, once every feature file in ``folder`` whose sidecar (``<file>.json``, written by
    ``python -m recgoat.features``) records the ids its rows follow was built for this dataset's ids, and a file built
    from training interactions (the user profiles) from this dataset's split: features built before an id changed would
    otherwise be attached to the wrong items or users, and profiles of another split would name this split's held-out
    items, silently."""
    if folder is None:
        return dataset
    for npy in sorted(Path(folder).glob(f"*{FEATURE_SUFFIX}")):
        side = npy.with_suffix(".json")
        if not side.is_file():
            continue
        try:
            order = json.loads(side.read_text()).get("row_order") or {}
        except (OSError, ValueError):
            continue  # not our sidecar
        for key, ids, what in (("item_ids_sha256", dataset.item_ids, "item"), ("user_ids_sha256", dataset.user_ids,
                                                                               "user")):
            if key in order and order[key] != ids_digest(ids):
                raise DataError(
                    f"{npy}: built for other {what} ids than dataset '{dataset.name}' has (its sidecar {side.name} "
                    f"records {what} ids sha256 {order[key][:12]}, the data's are {ids_digest(ids)[:12]}): its rows "
                    f"would belong to other {what}s. Rebuild the features for this data: python -m recgoat.features "
                    f"<the same dataset overrides> (it rebuilds what changed), or point dataset.feature_dir elsewhere")
        if "train_sha256" in order and order["train_sha256"] != train_digest(dataset):
            raise DataError(
                f"{npy}: built from the training interactions of another split than dataset '{dataset.name}' has now "
                f"(its sidecar {side.name} records train sha256 {order['train_sha256'][:12]}, {order.get('split', '')}"
                f"; this run's split has {train_digest(dataset)[:12]}): its profiles are built from training items "
                f"only, so under this split they would name items of the valid and test sets. Build the features for "
                f"this split into a folder of its own: python -m recgoat.features <the same dataset overrides> "
                f"out_dir=<folder>, then dataset.feature_dir=<folder>")
    return dataset


def find_feature_files(folder: Path, modalities: list[str] | None = None) -> dict[str, Path]:
    """``{modality: path}`` of the item feature files in ``folder``.

    Every ``<modality>_feat.npy`` except the user file counts; ``modalities`` selects and orders
    them and each one asked for must exist.
    """
    folder = Path(folder)
    found = {p.name[: -len(FEATURE_SUFFIX)]: p for p in sorted(folder.glob(f"*{FEATURE_SUFFIX}"))
             if p.name != USER_FEATURE_FILE}
    if modalities is None:
        return found
    missing = [m for m in modalities if m not in found]
    if missing:
        raise DataError(f"{folder}: no feature file for modality {missing} "
                        f"(expected {[m + FEATURE_SUFFIX for m in missing]}; found {sorted(found)})")
    return {m: found[m] for m in modalities}


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as a .npy array ({e})") from e


def load_item_features(paths: dict[str, Path], n_items: int, max_item_ref: tuple[int, str] | None = None
                       ) -> dict[str, np.ndarray]:
    """Load and validate item feature matrices; each must have one row per item.

    ``max_item_ref`` = (largest item id, where it occurs) lets the error say which interaction
    line points beyond the feature rows.
    """
    out = {}
    for modality, path in paths.items():
        x = load_npy(path)
        if x.ndim == 2 and x.shape[0] < n_items and max_item_ref is not None:
            item, where = max_item_ref
            raise DataError(f"{path}: has {x.shape[0]} rows, but item id {item} ({where}) is beyond "
                            f"the feature rows (valid ids 0..{x.shape[0] - 1})")
        out[modality] = check_feature_matrix(x, n_items, what=f"item feature '{modality}'", rows="items",
                                             source=str(path))
    return out


def load_user_features(folder: Path, n_users: int, enabled: bool = True) -> np.ndarray | None:
    path = Path(folder) / USER_FEATURE_FILE
    if not enabled or not path.exists():
        return None
    return check_feature_matrix(load_npy(path), n_users, what="user features", rows="users", source=str(path))
