"""Loaders for the two file layouts of the field's benchmarks.

- MMRec folder: ``<name>.inter`` (tab-separated, header ``userID itemID rating timestamp x_label``,
  any column order, rating and timestamp optional; ``x_label`` 0/1/2 = train/valid/test) plus
  ``<modality>_feat.npy`` files and an optional ``user_pref_feat.npy``.
- Split text files: ``train.txt``, ``valid.txt``, ``test.txt`` with one line per user
  ``user item item ...`` (0-based ids), e.g. ``../shared/data/amazon-baby``.
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
from pathlib import Path

import numpy as np

from recgoat.data.dataset import SPLITS, RecDataset
from recgoat.data.errors import DataError
from recgoat.data.features import check_row_order, find_feature_files, load_item_features, load_user_features
from recgoat.data.splitting import assemble_splits

REQUIRED_INTER_COLUMNS = ("userID", "itemID", "x_label")

log = logging.getLogger(__name__)


def _parse_id(token: str, path: Path, lineno: int, field: str, limit: int | None = None) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: field '{field}' = {token!r} is not an integer") from None
    if value < 0:
        raise DataError(f"{path}:{lineno}: field '{field}' = {value} is negative")
    if limit is not None and value >= limit:
        raise DataError(f"{path}:{lineno}: field '{field}' = {value} is not in 0..{limit - 1}")
    return value


def open_text(path: Path) -> io.StringIO:
    """The file's text, checked first: a byte that is not UTF-8 is named with its line and column, and a UTF-8
    byte-order mark (as spreadsheet programs write) is dropped with a warning instead of becoming part of the
    first column's name."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from e
    if data.startswith(codecs.BOM_UTF8):
        log.warning("%s: starts with a UTF-8 byte-order mark (BOM); ignored", path)
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{lineno}: byte {data[e.start]:#04x} at column {column} is not UTF-8 "
                        f"(save the file as UTF-8)") from None
    return io.StringIO(text, newline="")


def read_inter_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse an MMRec ``.inter`` file into (users, items, labels, line number of each row)."""
    users, items, labels, lines = [], [], [], []
    with open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty (expected a header line)") from None
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}:1: unreadable header ({e})") from None
        header = [h.strip().split(":")[0] for h in header]  # tolerate RecBole-style 'userID:token'
        missing = [c for c in REQUIRED_INTER_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}:1: header {header} lacks column(s) {missing}; expected tab-separated "
                            f"'userID itemID rating timestamp x_label' (rating, timestamp optional)")
        cols = {c: header.index(c) for c in REQUIRED_INTER_COLUMNS}
        lineno = 1
        try:
            for lineno, row in enumerate(reader, start=2):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{lineno}: {len(row)} field(s), the header has {len(header)} "
                                    f"({'/'.join(header)})")
                users.append(_parse_id(row[cols["userID"]], path, lineno, "userID"))
                items.append(_parse_id(row[cols["itemID"]], path, lineno, "itemID"))
                labels.append(_parse_id(row[cols["x_label"]], path, lineno, "x_label", limit=3))
                lines.append(lineno)
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}:{lineno + 1}: unreadable line ({e})") from None
    if not users:
        raise DataError(f"{path}: no interactions after the header")
    return (np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
            np.asarray(labels, dtype=np.int8), np.asarray(lines, dtype=np.int64))


def _read_id_map(path: Path) -> np.ndarray | None:
    """Raw ids ordered by index from a two-column ``raw<TAB>index`` csv with header (MMRec's maps)."""
    if not path.exists():
        return None
    raw: dict[int, str] = {}
    with open_text(path) as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows, None)
        for lineno, row in enumerate(rows, start=2):
            if len(row) < 2:
                raise DataError(f"{path}:{lineno}: expected 'raw_id<TAB>index', got {row!r}")
            raw[_parse_id(row[1], path, lineno, "index")] = row[0]
    n = max(raw) + 1
    if len(raw) != n:
        raise DataError(f"{path}: indices are not contiguous 0..{n - 1}")
    return np.asarray([raw[i] for i in range(n)], dtype=object)


def _attach_id_maps(folder: Path, n_users: int, n_items: int) -> dict:
    out = {}
    for key, fname, n in (("user_ids", "u_id_mapping.csv", n_users), ("item_ids", "i_id_mapping.csv", n_items)):
        ids = _read_id_map(folder / fname)
        if ids is not None:
            if len(ids) != n:
                raise DataError(f"{folder / fname}: maps {len(ids)} ids, the interactions have {n}")
            out[key] = ids
    return out


def compact_ids(users: np.ndarray, items: np.ndarray, source: str, n_users: int, n_items: int, features: dict,
                user_features: np.ndarray | None, id_maps: dict) -> dict:
    """Indices for the ids that occur. Ids are row numbers of the feature files, so a file may skip some; the
    skipped ids would otherwise become users or items that are in no file (recommended, counted, allocated: a
    single id of 10,000,000 would make ten million users). They are dropped with a warning, the feature rows
    and id maps follow, and ``user_ids``/``item_ids`` keep the file's ids."""
    kept_users, users = np.unique(users, return_inverse=True)
    kept_items, items = np.unique(items, return_inverse=True)
    for what, kept, n in (("user", kept_users, n_users), ("item", kept_items, n_items)):
        if len(kept) < n:
            log.warning("%s: %d of the %s ids 0..%d occur in no interaction; %ss are re-indexed to the %d that "
                        "occur (the original ids are kept as %s_ids)", source, n - len(kept), what, n - 1, what,
                        len(kept), what)
    maps = {"user_ids": id_maps.get("user_ids", np.arange(n_users))[kept_users],
            "item_ids": id_maps.get("item_ids", np.arange(n_items))[kept_items]}
    return {"users": users, "items": items, "n_users": len(kept_users), "n_items": len(kept_items),
            "item_features": {m: x[kept_items] for m, x in features.items()},
            "user_features": None if user_features is None else user_features[kept_users], **maps}


def load_mmrec(path: str | Path, name: str | None = None, modalities: list[str] | None = None,
               user_features: bool = True) -> RecDataset:
    """Load an MMRec dataset folder (``<name>.inter`` + ``*_feat.npy``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    if name is None:
        inters = sorted(folder.glob("*.inter"))
        if len(inters) != 1:
            raise DataError(f"{folder}: expected exactly one *.inter file (or set name=), found "
                            f"{[p.name for p in inters]}")
        inter_path = inters[0]
        name = inter_path.stem
    else:
        inter_path = folder / f"{name}.inter"
    users, items, labels, lines = read_inter_file(inter_path)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    top = int(items.argmax())
    feats = load_item_features(find_feature_files(folder, modalities), n_items,
                               max_item_ref=(int(items[top]), f"{inter_path}:{lines[top]}"))
    data = compact_ids(users, items, str(inter_path), n_users, n_items, feats,
                       load_user_features(folder, n_users, user_features), _attach_id_maps(folder, n_users, n_items))
    return check_row_order(assemble_splits(name, labels=labels, source=str(inter_path), **data), folder)


def read_user_items_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``user item item ...`` file (one user per line, 0-based ids)."""
    users, items = [], []
    with open_text(path) as f:
        try:
            for lineno, line in enumerate(f, start=1):
                tokens = line.split()
                if not tokens:
                    continue
                u = _parse_id(tokens[0], path, lineno, "user (token 1)")
                for pos, tok in enumerate(tokens[1:], start=2):
                    items.append(_parse_id(tok, path, lineno, f"item (token {pos})"))
                    users.append(u)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from None
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def load_split_txt(path: str | Path, name: str | None = None, feature_dir: str | Path | None = None,
                   modalities: list[str] | None = None, user_features: bool = True) -> RecDataset:
    """Load ``train.txt``/``valid.txt``/``test.txt`` (``user item item ...`` per line).

    Features (``<modality>_feat.npy``) are read from ``feature_dir`` (default: the same folder);
    MMRec id maps (``u_id_mapping.csv``, ``i_id_mapping.csv``) are attached when present.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    parts = []
    for code, split in enumerate(SPLITS):
        p = folder / f"{split}.txt"
        if not p.exists():
            raise DataError(f"{p}: split file not found (expected train.txt, valid.txt, test.txt)")
        u, i = read_user_items_file(p)
        if len(u) == 0:
            raise DataError(f"{p}: split '{split}' is empty")
        parts.append((u, i, np.full(len(u), code, dtype=np.int8), p))
    users = np.concatenate([p[0] for p in parts])
    items = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    fdir = Path(feature_dir) if feature_dir else folder
    feats = {}
    files = find_feature_files(fdir, modalities)
    if files:
        top = int(items.argmax())
        offsets = np.cumsum([0] + [len(p[0]) for p in parts])
        which = int(np.searchsorted(offsets, top, side="right")) - 1
        feats = load_item_features(files, n_items, max_item_ref=(int(items.max()), f"in {parts[which][3]}"))
    data = compact_ids(users, items, str(folder), n_users, n_items, feats,
                       load_user_features(fdir, n_users, user_features), _attach_id_maps(folder, n_users, n_items))
    return check_row_order(assemble_splits(name or folder.name, labels=labels, source=str(folder), **data), fdir)
