"""Raw Amazon review dumps (5-core reviews + metadata, ``.json`` or ``.json.gz`` lines) -> an MMRec folder.

Reviews need ``reviewerID`` and ``asin`` (``overall`` and ``unixReviewTime`` are kept when present).
Metadata lines may be JSON (2018 dumps) or Python literals (the 2014 dumps, single-quoted); lines
that are neither are counted and skipped with a warning naming the line, never a crash.
The output folder holds ``<name>.inter`` (``userID itemID rating timestamp x_label``, k-core
filtered, seeded per-user 8:1:1 split), ``u_id_mapping.csv``, ``i_id_mapping.csv`` and, with
metadata, ``item_meta.jsonl`` (title, brand, first category, description, image URL) for the
feature pipeline.
"""
from __future__ import annotations

import ast
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recgoat.data.errors import DataError
from recgoat.data.splitting import kcore_filter, remap_ids, split_per_user

log = logging.getLogger(__name__)


def read_records(path: str | Path, counter: dict) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines or Python-literal-lines file, gzipped or not."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    rec = None
            if not isinstance(rec, dict):
                counter["malformed"] = counter.get("malformed", 0) + 1
                if counter["malformed"] <= 5:
                    log.warning("%s:%d: neither JSON nor a Python dict literal; skipped", path, lineno)
                continue
            yield lineno, rec


def _meta_fields(rec: dict) -> dict:
    cats = rec.get("categories") or rec.get("category") or []
    first = cats[0] if cats and isinstance(cats[0], list) else cats
    category = first[-1] if isinstance(first, list) and first else (first if isinstance(first, str) else None)
    desc = rec.get("description")
    if isinstance(desc, list):
        desc = " ".join(desc)
    image = rec.get("imUrl") or (rec.get("imageURLHighRes") or rec.get("imageURL") or [None])[0]
    return {"title": rec.get("title"), "brand": rec.get("brand"), "category": category, "description": desc,
            "image_url": image}


def convert_amazon(reviews: str | Path, out_dir: str | Path, meta: str | Path | None = None, name: str | None = None,
                   user_k: int = 5, item_k: int = 5, min_rating: float = 0.0, seed: int = 999) -> dict:
    """Convert raw Amazon files into an MMRec folder; returns a summary of what was read and written."""
    from recgoat.utils.io import atomic_write

    out = Path(out_dir)
    name = name or Path(reviews).name.split(".")[0]
    counts: dict = {}
    users, items, ratings, times = [], [], [], []
    for lineno, rec in read_records(reviews, counts):
        if "reviewerID" not in rec or "asin" not in rec:
            counts["missing_ids"] = counts.get("missing_ids", 0) + 1
            if counts["missing_ids"] <= 5:
                log.warning("%s:%d: no reviewerID/asin; skipped", reviews, lineno)
            continue
        rating = float(rec.get("overall", 0) or 0)
        if rating < min_rating:
            continue
        users.append(str(rec["reviewerID"]))
        items.append(str(rec["asin"]))
        ratings.append(rating)
        times.append(int(rec.get("unixReviewTime", 0) or 0))
    if not users:
        raise DataError(f"{reviews}: no usable review lines")
    users_a, items_a = np.asarray(users, dtype=object), np.asarray(items, dtype=object)
    keep = kcore_filter(users_a, items_a, user_k, item_k)
    if not keep.any():
        raise DataError(f"{reviews}: nothing survives the {user_k}/{item_k}-core filter")
    u_idx, u_raw = remap_ids(users_a[keep])
    i_idx, i_raw = remap_ids(items_a[keep])
    labels = split_per_user(u_idx, seed=seed)
    r, t = np.asarray(ratings)[keep], np.asarray(times)[keep]
    lines = ["userID\titemID\trating\ttimestamp\tx_label\n"]
    lines += [f"{u}\t{i}\t{rr:g}\t{tt}\t{lab}\n" for u, i, rr, tt, lab in zip(u_idx, i_idx, r, t, labels, strict=True)]
    atomic_write(out / f"{name}.inter", lambda tmp: Path(tmp).write_text("".join(lines)))
    atomic_write(out / "u_id_mapping.csv", lambda tmp: Path(tmp).write_text(
        "user_id\tuserID\n" + "".join(f"{raw}\t{k}\n" for k, raw in enumerate(u_raw))))
    atomic_write(out / "i_id_mapping.csv", lambda tmp: Path(tmp).write_text(
        "asin\titemID\n" + "".join(f"{raw}\t{k}\n" for k, raw in enumerate(i_raw))))
    summary = {"name": name, "reviews_read": len(users), "interactions": int(keep.sum()), "users": len(u_raw),
               "items": len(i_raw), "malformed_review_lines": counts.get("malformed", 0),
               "reviews_without_ids": counts.get("missing_ids", 0)}
    if meta is not None:
        wanted = {a: k for k, a in enumerate(i_raw)}
        meta_counts: dict = {}
        rows = {}
        for _, rec in read_records(meta, meta_counts):
            asin = rec.get("asin")
            if asin in wanted:
                rows[asin] = {"asin": asin, **_meta_fields(rec)}
        atomic_write(out / "item_meta.jsonl", lambda tmp: Path(tmp).write_text(
            "".join(json.dumps(rows.get(a, {"asin": a})) + "\n" for a in i_raw)))
        summary.update({"items_with_metadata": len(rows), "malformed_meta_lines": meta_counts.get("malformed", 0)})
    log.info("converted %s: %s", reviews, summary)
    return summary
