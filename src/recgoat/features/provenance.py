"""Feature files with JSON sidecars: what produced them, from which inputs, in which row order.

``<name>_feat.npy`` sits beside ``<name>_feat.json``. Re-running with unchanged inputs is a no-op
(the sidecar's input hash and encoder match); anything else re-encodes. Both files are written
to temporary names and renamed, so an interrupted run never leaves a half-written pair.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from recgoat.utils.io import atomic_write


def sidecar_path(npy: Path) -> Path:
    return Path(npy).with_suffix(".json")


def read_sidecar(npy: Path) -> dict | None:
    path = sidecar_path(npy)
    if not path.exists() or not Path(npy).exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_up_to_date(npy: Path, encoder: dict, inputs_sha256: str) -> bool:
    side = read_sidecar(npy)
    return bool(side) and side.get("inputs_sha256") == inputs_sha256 and side.get("encoder") == encoder


def write_features(npy: Path, x: np.ndarray, encoder: dict, inputs_sha256: str, **provenance) -> dict:
    """Write ``x`` (float32) and its sidecar; returns the sidecar."""
    npy = Path(npy)
    side = {"file": npy.name, "shape": list(x.shape), "dtype": "float32", "encoder": encoder,
            "inputs_sha256": inputs_sha256, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **provenance}

    def save_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(x, dtype=np.float32))

    atomic_write(npy, save_npy)
    atomic_write(sidecar_path(npy), lambda tmp: Path(tmp).write_text(json.dumps(side, indent=2, default=str) + "\n"))
    return side
