"""Shared fixtures. Third-party data is read in place from ../shared/data; tests that need it skip."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECGOAT_DATA_DIR", ROOT.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path of a dataset folder under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"third-party dataset {path} not present (it is read in place, never committed)")
    return path


@pytest.fixture
def tiny_synthetic():
    from tests.helpers import synthetic
    return synthetic(n_users=120, n_items=90, n_factors=4, n_clusters=4, mean_interactions=12,
                          modalities={"text": {"dim": 8, "noise": 0.3}, "image": {"dim": 12, "noise": 0.6}},
                          user_feature_dim=6, seed=3)
