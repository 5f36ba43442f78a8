"""Sweeps end to end: a real multirun with the parallel launcher, the report, the notebook, Optuna."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest
import yaml

from recgoat.report import load_runs, main
from tests.helpers import TINY_DATA, run_cli

ROOT = Path(__file__).resolve().parents[1]
CLI = [*TINY_DATA, "trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """2 models x 2 seeds, run in parallel by the joblib launcher."""
    sweep = tmp_path_factory.mktemp("sweep")
    run_cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "model=bpr,lightgcn", "seed=1,2",
             *CLI, f"hydra.sweep.dir={sweep}"], cwd=sweep, env={"OMP_NUM_THREADS": "1"})
    return sweep


@pytest.mark.slow
@pytest.mark.xdist_group("multirun")  # one worker builds the module's multirun for both of its tests
def test_report_builds_table_and_plots_from_a_real_multirun(multirun):
    runs = load_runs(multirun)
    assert sorted((r["model"], r["seed"]) for r in runs) == [("BPRMF", 1), ("BPRMF", 2), ("LightGCN", 1),
                                                            ("LightGCN", 2)]
    table = main([str(multirun), "--metrics", "recall@20", "ndcg@20"])
    for model in ("BPRMF", "LightGCN"):
        values = [r["test"]["recall@20"] for r in runs if r["model"] == model]
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} "))
        assert f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" in row
    for png in ("valid_curves.png", "bars.png"):
        data = (multirun / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.slow
@pytest.mark.xdist_group("multirun")
def test_results_notebook_executes_with_the_report_and_the_multirun(multirun, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from recgoat.figures import FIGURES
    monkeypatch.setenv("RECGOAT_RUNS", str(multirun))
    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "4 runs under" in text and "| LightGCN / synthetic |" in text       # the user's runs
    assert "| recgoat_mgcn | 4 | 0.3527 |" in text                             # the report's leaderboard, from its CSV
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES) + 1                                      # the report's figures + the runs' bars


@pytest.mark.slow
def test_optuna_sweep_optimises_valid_recall(tmp_path):
    run_cli(["-m", "+hparams_search=lightgcn_optuna", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.sampler.n_startup_trials=1", *CLI, f"hydra.sweep.dir={tmp_path}"],
            cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    runs = load_runs(tmp_path)
    assert len(runs) == 2
    assert best["best_value"] == pytest.approx(max(r["valid"]["recall@20"] for r in runs))
    assert os.path.exists(tmp_path / "0" / ".hydra" / "overrides.yaml")
