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
from tests.helpers import TINY_DATA, load_results, read_wandb_log, run_cli

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
    run_cli([*args, f"hydra.run.dir={tmp_path / 'full'}"], cwd=tmp_path)
    full = load_results(tmp_path / "full")

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


@pytest.mark.slow
def test_wandb_offline_run_files_hold_metrics_and_config(tmp_path):
    run_dir = tmp_path / "wb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"})
    subprocess.run([sys.executable, "-m", "recgoat.run", "logger=wandb", "trainer.max_epochs=2", *TINY_DATA,
                    "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=600)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B did not run offline without an API key"
    records = read_wandb_log(next(runs[0].glob("run-*.wandb")))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    results = load_results(run_dir)
    valid_curve = [h["valid/recall@20"] for h in history if "valid/recall@20" in h]
    assert valid_curve == pytest.approx([h["recall@20"] for h in results["valid_history"]], rel=1e-6)
    assert sum("train/loss" in h for h in history) == 2                       # per-epoch losses
    final = next(h for h in history if "final/test/recall@20" in h)
    assert final["final/test/recall@20"] == pytest.approx(results["test"]["recall@20"])
    assert config["seed"] == 999 and config["dataset"]["_target_"] == "recgoat.data.make_synthetic"
