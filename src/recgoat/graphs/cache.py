"""On-disk cache of built graphs, keyed by everything they depend on.

The key hashes the builder's name and version, every input array's bytes (not just its shape or
a parameter such as k), and the parameters. New features therefore never reuse a stale graph —
the bug of toolboxes that key kNN caches by k alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recgoat.data import array_digest
from recgoat.utils.io import atomic_write

log = logging.getLogger(__name__)


def cache_key(builder: str, version: int, arrays: dict[str, np.ndarray], params: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"builder": builder, "version": version, "params": params}, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(array_digest(arrays[name]).encode())
    return h.hexdigest()[:32]


def cached_sparse(cache_dir: str | Path | None, builder: str, version: int, arrays: dict[str, np.ndarray],
                  params: dict, build: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
    """Load the matrix for this key from ``cache_dir`` or build and store it (atomically)."""
    if cache_dir is None:
        return sp.csr_matrix(build())
    return cached_sparse_by_key(cache_dir, builder, cache_key(builder, version, arrays, params), build)


def cached_sparse_by_key(cache_dir: str | Path, builder: str, key: str,
                         build: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
    """:func:`cached_sparse` for a key already computed with :func:`cache_key`."""
    path = Path(cache_dir) / "graphs" / f"{builder}-{key}.npz"
    if path.exists():
        try:
            return sp.load_npz(path).tocsr()
        except Exception as e:  # a damaged or truncated file (BadZipFile, EOFError, ...) is rebuilt, not trusted
            log.warning("graph cache %s unreadable (%s); rebuilding", path, e)
    m = sp.csr_matrix(build())

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: save_npz would append ".npz" to a name
            sp.save_npz(f, m)

    atomic_write(path, save)
    return m
