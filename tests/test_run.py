"""The training spine end to end: configs compose, runs select on valid, results carry their config."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import QUIET, TINY_DATA, load_results, read_wandb_log, run_cli, run_in_process

CONF = Path(__file__).resolve().parents[1] / "conf"


# the d=800 preset is composed and instantiated by tests/test_config.py, and recgoat_spec is an alias of recgoat:
# training them here would add nothing
@pytest.mark.parametrize("model", [p.stem for p in sorted((CONF / "model").glob("*.yaml"))
                                   if "authors" not in p.stem and p.stem != "recgoat_spec"])
def test_every_model_config_trains_and_evaluates(tmp_path, model):
    res = run_in_process([f"model={model}", *TINY_DATA, *QUIET, "trainer.max_epochs=2"], tmp_path)
    assert (tmp_path / "results.json").exists()
    assert set(res["valid"]) == set(res["test"]) and "recall@20" in res["test"]
    assert res["config"]["model"]["_target_"].endswith(res["model"])
    if res["best_epoch"] is not None:
        history = res["valid_history"]
        assert [h["epoch"] for h in history] == [0, 1]
        best = max(history, key=lambda h: h["recall@20"])   # first maximum, like ModelCheckpoint
        assert res["best_epoch"] == best["epoch"]
        assert res["valid"]["recall@20"] == pytest.approx(best["recall@20"])
        assert res["timings"]["epochs"] == 2


def test_test_split_is_evaluated_once_at_the_end(tmp_path):
    res = run_in_process([*TINY_DATA, *QUIET, "trainer.max_epochs=4", "logger=csv"], tmp_path)
    metrics_csv = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    header = metrics_csv[0].split(",")
    test_col = header.index("test/recall@20")
    valid_col = header.index("valid/recall@20")
    test_rows = [r for r in metrics_csv[1:] if r.split(",")[test_col]]
    valid_rows = [r for r in metrics_csv[1:] if r.split(",")[valid_col]]
    assert len(test_rows) == 1 and len(valid_rows) == 4
    assert float(test_rows[0].split(",")[test_col]) == pytest.approx(res["test"]["recall@20"])


def test_runs_are_reproducible_on_cpu(tmp_path):
    args = [*TINY_DATA, *QUIET, "trainer.max_epochs=3", "model=lightgcn"]
    a = run_in_process(args, tmp_path / "a")
    b = run_in_process(args, tmp_path / "b")
    assert a["test"] == b["test"] and a["valid_history"] == b["valid_history"]
    c = run_in_process([*args, "seed=1"], tmp_path / "c")
    assert c["valid_history"] != a["valid_history"]


def test_bad_dataset_path_fails_with_a_clear_message(tmp_path):
    with pytest.raises(Exception, match=r"nowhere: dataset folder not found"):
        run_in_process(["dataset=amazon_baby", f"dataset.path={tmp_path / 'nowhere'}", *QUIET], tmp_path)


@pytest.mark.slow
def test_cli_from_another_directory_writes_results_logs_and_prints_the_table(tmp_path):
    """The real command line from an unrelated directory, with the CSV and the (offline) W&B logger at once."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"})
    proc = run_cli([*TINY_DATA, "trainer.max_epochs=2", "logger=[csv,wandb]", f"hydra.run.dir={run_dir}"],
                   cwd=tmp_path, env=env, replace_env=True)
    results = load_results(run_dir)
    assert "metric" in proc.stdout and f"{results['test']['recall@20']:.4f}" in proc.stdout  # the printed table
    assert results["config"]["seed"] == 999 and (run_dir / "csv" / "metrics.csv").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert "debug=tiny" in (run_dir / ".hydra" / "overrides.yaml").read_text()

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B did not run offline without an API key"
    records = read_wandb_log(next(runs[0].glob("run-*.wandb")))
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    config = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    valid_curve = [h["valid/recall@20"] for h in history if "valid/recall@20" in h]
    assert valid_curve == pytest.approx([h["recall@20"] for h in results["valid_history"]], rel=1e-6)
    assert sum("train/loss" in h for h in history) == 2                       # per-epoch losses
    final = next(h for h in history if "final/test/recall@20" in h)
    assert final["final/test/recall@20"] == pytest.approx(results["test"]["recall@20"])
    assert config["seed"] == 999 and config["dataset"]["_target_"] == "recgoat.data.make_synthetic"


def test_lightgcn_beats_popularity_on_the_tiny_data(tmp_path):
    """LightGCN must learn more than item popularity."""
    lgcn = run_in_process(["model=lightgcn", *TINY_DATA, *QUIET, "trainer.max_epochs=30",
                           "callbacks.early_stopping.warmup_epochs=30"], tmp_path / "lgcn")
    pop = run_in_process([*TINY_DATA, *QUIET, "model=mostpop"], tmp_path / "pop")
    assert lgcn["test"]["recall@20"] > 1.15 * pop["test"]["recall@20"]


def test_early_stopping_warmup_counts_patience_only_after_it(tmp_path):
    # a plateau of 3 evaluations would stop a patience-2 run at epoch 2; with a 4-epoch warm-up
    # it runs on, and patience counts from epoch 4
    base = [*TINY_DATA, *QUIET, "model=bpr", "optimizer.lr=1e-6", "trainer.max_epochs=12",
            "callbacks.early_stopping.patience=2"]
    plain = run_in_process(base, tmp_path / "plain")
    warm = run_in_process([*base, "callbacks.early_stopping.warmup_epochs=6"], tmp_path / "warm")
    assert len(plain["valid_history"]) < 6 <= len(warm["valid_history"])
    best = max(range(len(warm["valid_history"])), key=lambda e: warm["valid_history"][e]["recall@20"])
    # evaluations without improvement are counted from epoch 6 (or from the best, if later)
    assert len(warm["valid_history"]) == min(12, max(6, best + 1) + 2)
