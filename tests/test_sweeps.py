"""Sweeps end to end: a real multirun with the parallel launcher, the report, the notebook, Optuna."""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recgoat.report import load_runs, main
from tests.helpers import TINY_DATA, run_cli

ROOT = Path(__file__).resolve().parents[1]
CLI = [*TINY_DATA, "trainer.enable_progress_bar=false", "logger=none", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """2 models x 2 seeds, run in parallel by the joblib launcher (which shares the cores among its jobs)."""
    sweep = tmp_path_factory.mktemp("sweep")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run_cli(["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "model=bpr,lightgcn", "seed=1,2",
             *CLI, f"hydra.sweep.dir={sweep}"], cwd=sweep, env=env, replace_env=True)
    return sweep


@pytest.mark.slow
@pytest.mark.xdist_group("multirun")  # one worker builds the module's multirun for both of its tests
def test_report_builds_table_and_plots_from_a_real_multirun(multirun):
    runs = load_runs(multirun)
    assert {r["timings"]["torch_threads"] for r in runs} == {max(1, len(os.sched_getaffinity(0)) // 2)}
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
    import csv
    with open(ROOT / "experiments" / "results" / "leaderboard_ml100k_mm.csv", newline="") as f:
        row = next(r for r in csv.reader(f) if r[0] == "recgoat_mgcn")
    assert f"| recgoat_mgcn | {row[1]} | {row[2]} |" in text                  # the report's leaderboard, from its CSV
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES) + 1                                      # the report's figures + the runs' bars


@pytest.mark.slow
def test_the_optuna_sweep_draws_from_the_leaderboards_space_and_never_scores_test(tmp_path):
    from recgoat.leaderboard.space import load_space
    sweep = tmp_path / "sweep"
    run_cli(["-m", "hydra/sweeper=space", "model=lightgcn", "hydra.sweeper.n_trials=3",
             "hydra.sweeper.sampler.n_startup_trials=2", *CLI, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
            env={"OMP_NUM_THREADS": "1"})
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    runs = sorted(load_runs(sweep), key=lambda r: r["config"]["optimizer"]["lr"])
    assert len(runs) == 3 and all(r["test"] is None for r in runs)           # valid only
    space = load_space(ROOT / "conf" / "leaderboard" / "space", "lightgcn")   # the leaderboard's space
    assert best["space"] == str(space.path) and set(best["best_params"]) == set(space.params)
    for r in runs:
        lr, reg = r["config"]["optimizer"]["lr"], r["config"]["model"]["reg_weight"]
        assert space.params["optimizer.lr"]["low"] <= lr <= space.params["optimizer.lr"]["high"]
        assert space.params["model.reg_weight"]["low"] <= reg <= space.params["model.reg_weight"]["high"]
    assert best["best_value"] == pytest.approx(max(r["valid"]["recall@20"] for r in runs))
    winner = max(runs, key=lambda r: r["valid"]["recall@20"])
    assert best["best_params"]["optimizer.lr"] == winner["config"]["optimizer"]["lr"]
    from hydra_plugins.recgoat_sweeper.sweeper import SpaceSweeper
    with pytest.raises(ValueError, match=re.escape("these overrides sweep: ['seed=1,2']")):
        SpaceSweeper._fixed(["model=lightgcn", "seed=1,2"], space)
    with pytest.raises(ValueError, match=re.escape("['optimizer.lr']: set on the command line but tuned by")):
        SpaceSweeper._fixed(["optimizer.lr=0.1"], space)
    assert SpaceSweeper._fixed(["model=lightgcn", "seed=3"], space) == ["model=lightgcn", "seed=3", "test=false"]
    proc = subprocess.run([sys.executable, "-m", "recgoat.run", "-m", "hydra/sweeper=space", "model=lightgcn", *CLI,
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"hydra.sweep.dir={sweep} holds the jobs of another sweep (3)" in proc.stderr
    assert len(load_runs(sweep)) == 3
