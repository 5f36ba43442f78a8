"""Reading feature files that sit beside interaction files (MMRec's ``<modality>_feat.npy``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recgoat.data.dataset import check_feature_matrix
from recgoat.data.errors import DataError

USER_FEATURE_FILE = "user_pref_feat.npy"
FEATURE_SUFFIX = "_feat.npy"


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
