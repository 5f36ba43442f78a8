"""MovieLens-100K (``u.data``, ``u.item``) from a local folder, with an opt-in verified download."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from recgoat.data.dataset import RecDataset
from recgoat.data.errors import DataError
from recgoat.data.features import check_row_order, find_feature_files, load_item_features, load_user_features
from recgoat.data.splitting import assemble_splits, kcore_filter, remap_ids, split_per_user

log = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of the GroupLens files; checked after download, so a corrupted or altered archive is refused
ML100K_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_ml100k(folder: str | Path, url: str = ML100K_URL, timeout: float = 60.0) -> Path:
    """Download and unpack MovieLens-100K into ``folder`` (the files ``u.data``, ``u.item``, ...).

    Checksums of ``u.data`` and ``u.item`` are verified before anything is moved into place;
    on any failure ``folder`` is left as it was.
    """
    folder = Path(folder)
    log.info("downloading MovieLens-100K from %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            payload = r.read()
    except OSError as e:
        raise DataError(f"cannot download MovieLens-100K from {url}: {e}") from e
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as e:
            raise DataError(f"{url}: not a zip archive ({e})") from e
        found = {p.name: p for p in Path(tmp).rglob("u.*")}
        for fname, expected in ML100K_SHA256.items():
            if fname not in found:
                raise DataError(f"{url}: archive has no {fname}")
            got = _sha256(found[fname])
            if got != expected:
                raise DataError(f"{url}: checksum mismatch for {fname} (sha256 {got}, expected {expected})")
        src = found["u.data"].parent
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".ml100k-"))
        for p in src.iterdir():
            if p.is_file():
                shutil.copy2(p, staging / p.name)
        if folder.exists():
            for p in staging.iterdir():
                os.replace(p, folder / p.name)
            staging.rmdir()
        else:
            os.replace(staging, folder)
    return folder


def _read_u_item(path: Path) -> tuple[np.ndarray, list[str]]:
    ids, titles = [], []
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("|")
            if len(fields) < 24:
                raise DataError(f"{path}:{lineno}: {len(fields)} '|'-separated fields, expected 24 "
                                f"(movie id | title | release date | video date | url | 19 genre flags)")
            try:
                ids.append(int(fields[0]))
            except ValueError:
                raise DataError(f"{path}:{lineno}: field 'movie id' = {fields[0]!r} is not an integer") from None
            titles.append(fields[1])
    return np.asarray(ids, dtype=np.int64), titles


def _read_u_data(path: Path, min_rating: float) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    with open(path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 4:
                raise DataError(f"{path}:{lineno}: {len(fields)} tab-separated fields, expected 4 "
                                f"(user id, item id, rating, timestamp)")
            try:
                u, i, r = int(fields[0]), int(fields[1]), float(fields[2])
            except ValueError:
                raise DataError(
                    f"{path}:{lineno}: non-numeric user id, item id or rating in {line.strip()!r}") from None
            if r >= min_rating:
                users.append(u)
                items.append(i)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def load_movielens(path: str | Path, download: bool = False, url: str = ML100K_URL, min_rating: float = 0.0,
                   user_k: int = 0, item_k: int = 0, split_seed: int = 999, feature_dir: str | Path | None = None,
                   modalities: list[str] | None = None, user_features: bool = True,
                   name: str = "ml-100k") -> RecDataset:
    """MovieLens-100K as implicit feedback, split per user 8:1:1 with ``split_seed``.

    Ratings below ``min_rating`` are dropped; an optional k-core filter follows. Item indices
    follow the sorted movie ids of ``u.item`` (all 1,682 movies when nothing is filtered), so
    feature files in ``feature_dir`` must have their rows in that order.
    """
    folder = Path(path)
    data_file = folder / "u.data"
    if not data_file.exists():
        if not download:
            raise DataError(f"{data_file}: not found. Point dataset.path at a MovieLens-100K folder, or set "
                            f"dataset.download=true to fetch it from {url}")
        download_ml100k(folder, url)
    users_raw, items_raw = _read_u_data(data_file, min_rating)
    item_file = folder / "u.item"
    if item_file.exists():
        catalogue, _ = _read_u_item(item_file)
        unknown = ~np.isin(items_raw, catalogue)
        if unknown.any():
            raise DataError(f"{data_file}: item id {items_raw[unknown][0]} is not in {item_file}")
    else:
        catalogue = np.unique(items_raw)
    if user_k or item_k:
        keep = kcore_filter(users_raw, items_raw, user_k, item_k)
        users_raw, items_raw = users_raw[keep], items_raw[keep]
        catalogue = np.unique(items_raw)
    users, user_ids = remap_ids(users_raw)
    item_ids = np.unique(catalogue)
    items = np.searchsorted(item_ids, items_raw)
    labels = split_per_user(users, seed=split_seed)
    n_users, n_items = len(user_ids), len(item_ids)
    fdir = Path(feature_dir) if feature_dir else None
    feats = load_item_features(find_feature_files(fdir, modalities), n_items) if fdir else {}
    return check_row_order(assemble_splits(name, users, items, labels, n_users, n_items, source=str(data_file),
                           item_features=feats,
                           user_features=load_user_features(fdir, n_users, user_features) if fdir else None,
                           user_ids=user_ids, item_ids=item_ids), fdir)
