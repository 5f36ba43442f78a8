"""Item and user side features as the multimodal models consume them: checked, never silently zero."""
from __future__ import annotations

import logging

import numpy as np

from recgoat.data import DataError, RecDataset

log = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "mean")


def fill_missing_rows(name: str, x: np.ndarray, policy: str) -> np.ndarray:
    """All-zero rows mean "no feature" (MMRec's files use them): ``error`` (default) or fill with the ``mean``
    of the present rows."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing_features must be one of {MISSING_POLICIES}, got {policy!r}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise DataError(f"{name}: shape {x.shape} has no feature columns; expected [rows, dim] with dim >= 1")
    missing = ~np.any(x != 0, axis=1)
    if not missing.any():
        return x
    if missing.all():
        raise DataError(f"{name}: all {len(x)} rows are all zeros: there are no features (nothing to fill "
                        f"missing rows from, even with model.missing_features=mean); check the feature file")
    first = int(np.flatnonzero(missing)[0])
    if policy == "error":
        raise DataError(
            f"{name}: {int(missing.sum())} of {len(x)} rows are all zeros (missing), first at row {first}; "
            f"set model.missing_features=mean to fill them with the mean of the present rows")
    log.warning("%s: %d rows missing (all zeros), filled with the mean of the others", name, int(missing.sum()))
    x = x.copy()
    x[missing] = x[~missing].mean(axis=0)
    return x


def item_modalities(dataset: RecDataset, model: str, modalities: list[str] | None = None,
                    missing_features: str = "error") -> dict[str, np.ndarray]:
    """``{modality: float32[n_items, d_m]}`` of the requested modalities (default: all of the dataset's, in its
    order), with missing rows handled by ``missing_features``. A clear error when there are none."""
    if not dataset.item_features:
        raise DataError(f"{model} needs item modality features, and dataset '{dataset.name}' has none; add "
                        f"<modality>_feat.npy files (python -m recgoat.features) or use model=lightgcn")
    names = list(dataset.item_features) if modalities is None else list(modalities)
    unknown = [m for m in names if m not in dataset.item_features]
    if unknown or not names:
        raise DataError(f"modalities {names} must be a non-empty subset of dataset '{dataset.name}''s "
                        f"{list(dataset.item_features)}")
    return {m: fill_missing_rows(f"item feature '{m}'", dataset.item_features[m], missing_features) for m in names}


def mixing_weights(modalities: list[str], given: dict[str, float]) -> dict[str, float]:
    """Weights per modality summing to 1: the ``given`` ones, the rest shared equally by the others. Weights
    of modalities the model does not use are ignored (one config serves text-only and text+image data)."""
    given = {m: w for m, w in given.items() if m in modalities}
    if any(w < 0 for w in given.values()):
        raise ValueError(f"modality_weights must be >= 0, got {given}")
    rest = [m for m in modalities if m not in given]
    left = 1.0 - sum(given.values())
    if rest and left < 0:
        raise ValueError(f"modality_weights {given} leave nothing for {rest}")
    w = {m: float(given.get(m, left / len(rest) if rest else 0.0)) for m in modalities}
    total = sum(w.values())
    if total <= 0:
        raise ValueError(f"modality_weights must not all be 0: {given}")
    return {m: v / total for m, v in w.items()}
