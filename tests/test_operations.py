"""Experiment operations end to end: DDP on 2 CPU processes, resume after a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from recgoat.eval import FullRankingEvaluator
from recgoat.inference import load_model
from tests.helpers import TINY_DATA, load_results, run_cli, run_in_process

QUIET_CLI = ["trainer.enable_progress_bar=false", "logger=none"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_single_process_evaluation(tmp_path):
    run_dir = tmp_path / "ddp"
    run_cli(["trainer=ddp", "trainer.devices=2", "trainer.max_epochs=3", *TINY_DATA, *QUIET_CLI,
             f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    res = load_results(run_dir)
    assert res["config"]["trainer"]["strategy"] == "ddp" and res["config"]["trainer"]["devices"] == 2
    loaded = load_model(res["best_checkpoint"])
    evaluator = FullRankingEvaluator(loaded.dataset.train, ks=[10, 20])
    scorer = loaded.model.scorer()
    single_test = evaluator.evaluate(scorer, loaded.dataset.test)
    single_valid = evaluator.evaluate(scorer, loaded.dataset.valid)
    # sums and counts are reduced over ranks, so sharded evaluation is exact, not a mean of means
    assert single_test == pytest.approx(res["test"], abs=1e-12)
    assert single_valid == pytest.approx(res["valid"], abs=1e-12)


def _last_epoch(ckpt) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # being written
        return -1


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(tmp_path):
    args = ["model=lightgcn", "trainer.max_epochs=8", *TINY_DATA, *QUIET_CLI, "callbacks.early_stopping.patience=100"]
    full = run_in_process(args, tmp_path / "full")  # the uninterrupted reference (same train function as the CLI)

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recgoat.run", *args, f"hydra.run.dir={killed}"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and not (last.exists() and _last_epoch(last) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    epoch_at_kill = _last_epoch(last)
    assert 2 <= epoch_at_kill < 7
    run_cli([*args, f"hydra.run.dir={killed}", f"ckpt_path={last}"], cwd=tmp_path)
    resumed = load_results(killed)
    assert resumed["test"] == full["test"] and resumed["best_epoch"] == full["best_epoch"]
    assert [h["recall@20"] for h in resumed["valid_history"]] == [h["recall@20"] for h in full["valid_history"]]
    assert json.dumps(resumed["valid"]) == json.dumps(full["valid"])
