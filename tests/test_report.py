"""The report aggregates real runs: mean ± std across seeds per config."""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

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
    valid_only = run_in_process(["model=lightgcn", "seed=3", "name=lgcn_runs", "test=false", *TINY_DATA, *QUIET,
                                 "trainer.max_epochs=2"], tmp_path / "sweep" / "lgcn_runs-valid-only")
    assert valid_only["test"] is None and valid_only["valid"]["recall@20"] > 0
    assert len(load_runs(tmp_path / "sweep")) == 5
    table = main([str(tmp_path / "sweep"), "--metrics", "recall@20", "ndcg@20"])  # the valid-only run left out
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


def test_runs_that_differ_in_config_are_separate_rows_labelled_with_the_difference(tmp_path):
    def run(seed, dim, recall):
        config = {"seed": seed, "model": {"embedding_dim": dim}, "datamodule": {"seed": seed},
                  "callbacks": {"model_checkpoint": {"dirpath": f"/runs/{seed}-{dim}/checkpoints"}},
                  "paths": {"log_dir": "/runs"}}
        return {"name": None, "model": "LightGCN", "dataset": {"name": "toy"}, "seed": seed, "best_epoch": 1,
                "test": {"recall@20": recall}, "valid": {"recall@20": recall}, "timings": {}, "config": config,
                "valid_history": []}
    for i, (seed, dim, recall) in enumerate([(1, 4, 0.1), (2, 4, 0.2), (1, 64, 0.5), (2, 64, 0.7)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(run(seed, dim, recall)))
    (tmp_path / "4" / ".hydra").mkdir(parents=True)                   # a job of the multirun that failed
    (tmp_path / "4" / ".hydra" / "config.yaml").write_text("seed: 3\n")
    table = main([str(tmp_path), "--metrics", "recall@20"])
    rows = [line for line in table.splitlines() if line.startswith("| LightGCN")]
    assert len(rows) == 2
    assert table.endswith("1 run folder(s) have no results.json (failed, or still running) and are left out: 4; "
                          "each folder's .log says why.")
    assert rows[0].startswith("| LightGCN / toy (model.embedding_dim=4) | 2 | 0.1500 ± 0.0707")
    assert rows[1].startswith("| LightGCN / toy (model.embedding_dim=64) | 2 | **0.6000 ± 0.1414**")


def test_a_lone_surviving_run_is_marked_never_bolded_and_a_missing_folder_is_named(tmp_path):
    from recgoat.report import markdown

    def row(config, n, mean):
        return {"config": config, "n": n, "recall@20": (mean, 0.01 if n > 1 else 0.0), "best_epoch": 3,
                "epoch_s": 1.0}
    table = markdown([row("a", 3, 0.30), row("b", 1, 0.40)], metrics=["recall@20"])
    lines = table.splitlines()
    assert "| a | 3 | **0.3000 ± 0.0100** |" in lines[2]            # the best of the rows with a spread
    assert "| b | 1 of 3 | 0.4000 (1 run) |" in lines[3]           # higher, but one run: marked, not bold
    assert "fewer runs than the others" in table
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such folder"):
        main([str(tmp_path / "nowhere")])


def test_the_experiments_report_tables_equal_their_csvs_and_its_figures_exist(tmp_path):
    from recgoat.figures import EXPERIMENTS, FIGURES, TABLE, build_figures, sync_tables
    report = EXPERIMENTS / "README.md"
    text = report.read_text()
    assert sync_tables(report, write=False) == []                     # `make figures` has rendered every table
    tables = {m.group("csv") for m in TABLE.finditer(text)}
    assert tables == {f"results/{p.name}" for p in (EXPERIMENTS / "results").glob("*.csv")}  # every CSV is shown
    figures = set(re.findall(r"!\[[^\]]*\]\(figures/([^)]+)\)", text))
    assert figures == set(FIGURES)                                    # one figure per question, each referenced
    for name in figures:
        assert (EXPERIMENTS / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rebuilt = build_figures(out=tmp_path)                             # every figure rebuilds from the CSVs alone
    assert sorted(p.name for p in rebuilt) == sorted(figures) and all(p.stat().st_size > 10_000 for p in rebuilt)


def test_a_table_that_differs_from_its_csv_is_found_and_rewritten(tmp_path):
    from recgoat.figures import markdown_table, sync_tables
    (tmp_path / "t.csv").write_text("model,value\nrecgoat,0.35\na|b,1\n")
    report = tmp_path / "README.md"
    report.write_text("# x\n<!-- table: t.csv -->\n| model | value |\n|---|---|\n| recgoat | 0.36 |\n<!-- /table -->\n")
    assert sync_tables(report, write=False) == ["t.csv"]
    assert sync_tables(report) == ["t.csv"]
    assert markdown_table(tmp_path / "t.csv") in report.read_text() and "a\\|b" in report.read_text()
    assert sync_tables(report) == []


def test_the_readmes_link_only_files_inside_the_repository():
    root = Path(__file__).resolve().parents[1]
    for readme in (root / "README.md", root / "experiments" / "README.md", root / "docs" / "method.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", readme.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path = (readme.parent / target).resolve()
            assert path.is_relative_to(root), f"{readme.name} links {target}, outside the repository"
            assert path.exists(), f"{readme.name} links {target}, which does not exist"
