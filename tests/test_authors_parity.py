"""benchmarks/authors_parity.py: its results file keeps every row when a run adds a column."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("authors_parity", ROOT / "benchmarks" / "authors_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_with_a_new_column_rewrites_the_header_and_keeps_the_earlier_rows(tmp_path):
    append = load_script().append
    path = tmp_path / "parity.csv"
    append(path, {"model": "smore", "seed": 1, "test": 0.08})
    append(path, {"model": "smore", "seed": 2, "test": 0.09})
    append(path, {"model": "smore", "setting": "model.cl_weight=0.001", "seed": 1, "test": 0.18})
    append(path, {"model": "smore", "setting": "model.cl_weight=0.001", "seed": 2, "test": 0.17})
    lines = path.read_text().splitlines()
    assert lines[0] == "model,setting,seed,test"                     # one header, the new column in the row's place
    rows = list(csv.DictReader(open(path)))
    assert [(r["setting"], r["seed"], r["test"]) for r in rows] == [
        ("", "1", "0.08"), ("", "2", "0.09"), ("model.cl_weight=0.001", "1", "0.18"),
        ("model.cl_weight=0.001", "2", "0.17")]
    assert not list(tmp_path.glob("*.tmp"))
