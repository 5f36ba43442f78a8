"""The report aggregates real runs: mean ± std across seeds per config."""
from __future__ import annotations

import statistics

import pytest

from recgoat.report import load_runs, main
from tests.helpers import QUIET, TINY_DATA, run_in_process


def test_report_table_from_real_runs(tmp_path):
    results = {}
    for name, model in (("bpr_runs", "bpr"), ("lgcn_runs", "lightgcn")):
        for seed in (1, 2):
            out = tmp_path / "sweep" / f"{name}-{seed}"
            results[(name, seed)] = run_in_process(
                [f"model={model}", f"seed={seed}", f"name={name}", *TINY_DATA, *QUIET, "trainer.max_epochs=2"], out)
    assert len(load_runs(tmp_path / "sweep")) == 4
    table = main([str(tmp_path / "sweep"), "--metrics", "recall@20", "ndcg@20"])
    for name in ("bpr_runs", "lgcn_runs"):
        values = [results[(name, s)]["test"]["recall@20"] for s in (1, 2)]
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} "))
        assert f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" in row
    assert table.count("**") == 4  # one best mean per metric, bold on both sides
    csv_rows = (tmp_path / "sweep" / "report.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("config,model,dataset,n,seeds")


def test_report_of_an_empty_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        main([str(tmp_path)])
