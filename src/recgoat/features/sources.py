"""Item metadata sources: raw item id -> text fields and image path, per dataset format."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from recgoat.data import DataError

log = logging.getLogger(__name__)

ML100K_GENRES = ["genre_unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "FilmNoir", "Horror", "Musical", "Mystery", "Romance", "SciFi", "Thriller",
                 "War", "Western"]


def ml100k_items(path: str | Path) -> dict:
    """``{movie_id: {"title", "genres", "year", "overview", "image"}}`` from ml100k-multimodal.

    Reads ``items_tmdb.csv`` (first row per ``movie_id``) and ``posters/<movie_id>.jpg``.
    """
    folder = Path(path)
    table = folder / "items_tmdb.csv"
    if not table.exists():
        raise DataError(f"{table}: not found (expected the ml100k-multimodal folder)")
    items: dict[int, dict] = {}
    with open(table, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("movie_id", "title", "overview", "year") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}:1: missing column(s) {missing}")
        for lineno, row in enumerate(reader, start=2):
            try:
                movie = int(row["movie_id"])
            except (TypeError, ValueError):
                # a bad line costs its item's metadata (listed in the sidecar), not the run
                log.warning("%s:%d: field 'movie_id' = %r is not an integer; line skipped", table, lineno,
                            row.get("movie_id"))
                continue
            if movie in items:
                continue
            genres = [g.replace("genre_", "") for g in ML100K_GENRES if row.get(g) == "1"]
            year = row["year"].split(".")[0] if row["year"] else ""
            poster = folder / "posters" / f"{movie}.jpg"
            items[movie] = {"title": row["title"].strip() or None, "genres": ", ".join(genres) or None,
                            "year": year or None, "overview": row["overview"].strip() or None,
                            "category": genres[0] if genres else None,
                            "image": poster if poster.exists() else None}
    return items


def scientific_items(path: str | Path) -> dict:
    """``{asin: {"title": text}}`` from the UniSRec ``Scientific.text`` file (text only)."""
    table = Path(path) / "Scientific.text"
    items: dict[str, dict] = {}
    with open(table, encoding="utf-8") as f:
        next(f, None)
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) != 2:
                log.warning("%s:%d: malformed line skipped (expected 'item_id<TAB>text')", table, lineno)
                continue
            items[parts[0]] = {"title": parts[1].strip() or None, "image": None}
    return items


def amazon_items(path: str | Path) -> dict:
    """``{asin: {"title", "brand", "category", "description", "image"}}`` of a converted Amazon folder.

    Reads ``item_meta.jsonl`` (written by :func:`recgoat.data.amazon.convert_amazon`); images are
    ``images/<asin>.jpg`` where the user downloaded them (their URLs are in the metadata).
    """
    folder = Path(path)
    table = folder / "item_meta.jsonl"
    if not table.exists():
        raise DataError(f"{table}: not found (convert the raw files with recgoat.data.amazon.convert_amazon)")
    items = {}
    with open(table, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: malformed line skipped", table, lineno)
                continue
            image = folder / "images" / f"{rec['asin']}.jpg"
            items[rec["asin"]] = {**rec, "image": image if image.exists() else None}
    return items


def item_text(meta: dict | None, fields: list[str]) -> tuple[str, list[str]]:
    """``"Field: value. ..."`` over ``fields``; returns (text, fields that were missing)."""
    parts, missing = [], []
    for name in fields:
        value = meta.get(name) if meta else None
        if value:
            parts.append(f"{name.capitalize()}: {value}.")
        else:
            missing.append(name)
    return " ".join(parts), missing


def table_items(path: str | Path, id_column: str, text_columns: list[str], image_column: str | None = None,
                delimiter: str | None = None) -> dict:
    """``{item_id: {<text column>: value, ..., "image": path}}`` from your own table: CSV, TSV or JSONL (one
    object per line). Ids are strings (the dataset's ids are matched to them as strings); ``image_column``
    holds local image paths, relative to the table's folder (a missing file counts as no image). A row without
    an id is an error naming its line; a repeated id keeps its first row, with a warning."""
    table = Path(path)
    if not table.is_file():
        raise DataError(f"{table}: item table not found (features.source.path)")
    wanted = [id_column, *text_columns] + ([image_column] if image_column else [])
    if table.suffix.lower() in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(table)
    else:
        from recgoat.data.mmrec import open_text
        delim = delimiter or ("\t" if table.suffix.lower() in (".tsv", ".tab") else ",")
        reader = csv.DictReader(open_text(table), delimiter=delim)
        header = reader.fieldnames or []
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"{table}:1: no column(s) {missing} in the header {header} (features.source.id_column, "
                            f"text_columns, image_column)")
        rows = ((reader.line_num, row) for row in reader)
    items: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    repeated: list[str] = []   # "id (line n, first on line m)"
    for lineno, row in rows:
        item = str(row.get(id_column) or "").strip()
        if not item:
            raise DataError(f"{table}:{lineno}: field '{id_column}' (the item id) is empty")
        if item in items:
            repeated.append(f"{item!r} (line {lineno}, first on line {first_line[item]})")
            continue
        first_line[item] = lineno
        meta = {c: (str(row[c]).strip() or None) if row.get(c) is not None else None for c in text_columns}
        image = None
        if image_column and row.get(image_column):
            candidate = (table.parent / str(row[image_column]).strip())
            image = candidate if candidate.is_file() else None
        items[item] = {**meta, "image": image}
    if repeated:
        log.warning("%s: %d repeated item id(s), the first row of each is used: %s%s", table, len(repeated),
                    ", ".join(repeated[:10]), " ..." if len(repeated) > 10 else "")
    return items


def _jsonl_rows(table: Path):
    with open(table, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{table}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{table}:{lineno}: not a JSON object")
            yield lineno, row
