"""The equal-budget leaderboard on the tiny data: search on valid only, seeds tested once, tables that equal the
runs, resume after SIGKILL without repeating a completed trial, and refusals to mix code, data or budgets."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from recgoat.leaderboard import LeaderboardError, SpaceError, load_space
from recgoat.leaderboard.__main__ import dataset_key_overrides, leaderboard
from recgoat.leaderboard.search import default_values
from recgoat.leaderboard.space import as_overrides
from recgoat.training.module import RecModule
from recgoat.utils.config import compose
from tests.test_data import write_mmrec

TINY_RUN = 'run=["debug=tiny"]'
ROOT = Path(__file__).resolve().parents[1]


def board(out: Path, *overrides: str) -> dict:
    """``python -m recgoat.leaderboard <overrides> out_dir=<out>`` in this process."""
    dataset = next((o.split("=", 1)[1] for o in overrides if o.startswith("dataset=")), "synthetic")
    return leaderboard(compose([*overrides, f"out_dir={out}"], config_name="leaderboard"), dataset,
                       dataset_key_overrides(list(overrides)))


def trials_of(out: Path, model: str) -> list:
    import optuna
    return optuna.load_study(study_name=model, storage=f"sqlite:///{out / 'study.db'}").get_trials(deepcopy=False)


def test_search_never_scores_test_and_the_table_equals_the_runs(tmp_path, monkeypatch):
    evaluated = []  # (split, run folder, time) of every evaluation
    original = RecModule._eval_step

    def recording(self, users, split):
        evaluated.append((split, Path(self.trainer.default_root_dir), time.time()))
        return original(self, users, split)

    monkeypatch.setattr(RecModule, "_eval_step", recording)
    out = tmp_path / "lb"
    payload = board(out, "models=[lightgcn,mgcn]", "trials=3", "seeds=2", TINY_RUN, "budget.max_epochs=4")

    for model in ("lightgcn", "mgcn"):
        trials = trials_of(out, model)
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3
        search_end = max(t.datetime_complete.timestamp() for t in trials)
        search_dirs = {out / model / "search" / f"trial_{t.number:03d}" for t in trials}
        tests = [(d, at) for split, d, at in evaluated if split == "test" and model in d.parts]
        valid_dirs = {d for split, d, _ in evaluated if split == "valid"}
        assert search_dirs <= valid_dirs  # every trial was evaluated, on valid
        assert not any(d in search_dirs for d, _ in tests)  # ... and never on test
        assert {d.name for d, _ in tests} == {"seed_1", "seed_2"}
        assert all(at >= search_end - 1e-3 for _, at in tests)  # test only once the model's search had ended
        for t in trials:
            results = json.loads((out / t.user_attrs["run_dir"] / "results.json").read_text())
            assert results["test"] is None and t.value == results["valid"]["recall@20"]
            assert not (out / t.user_attrs["run_dir"] / "checkpoints").exists()  # keep_checkpoints=false

    # the table is what the runs' results.json files say
    metrics = payload["metrics"]
    with open(out / "leaderboard.csv", newline="") as f:
        csv_rows = {r["model"]: r for r in csv.DictReader(f)}
    md = (out / "leaderboard.md").read_text()
    for row in json.loads((out / "leaderboard.json").read_text())["rows"]:
        runs = [json.loads((out / r["path"]).read_text()) for r in row["runs"]]
        assert [r["seed"] for r in runs] == [1, 2]
        best = max(trials_of(out, row["model"]), key=lambda t: t.value)
        assert row["search_valid"] == best.value and row["best_params"] == best.params
        for r in runs:  # the seed runs trained the best trial's parameters
            for key, value in best.params.items():
                assert OmegaConf.select(OmegaConf.create(r["config"]), key) == pytest.approx(value)
        for m in metrics:
            values = [r["test"][m] for r in runs]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            assert row["test"][m] == pytest.approx([mean, std])
            assert float(csv_rows[row["model"]][f"test_{m}_mean"]) == pytest.approx(mean)
            assert f"{mean:.4f} ± {std:.4f}" in md
        valid = [r["valid"]["recall@20"] for r in runs]
        assert row["valid"]["recall@20"] == pytest.approx([statistics.fmean(valid), statistics.stdev(valid)])
        assert row["status"] == "done" and row["trials"] == 3 and row["cpu_s"] > 0
    assert (out / "leaderboard.png").stat().st_size > 0
    assert (out / "spaces" / "mgcn.yaml").read_text() == load_space(compose(
        [], config_name="leaderboard").space_dir, "mgcn").text

    # the same command again reuses everything: no run, no evaluation
    evaluated.clear()
    again = board(out, "models=[lightgcn,mgcn]", "trials=3", "seeds=2", TINY_RUN, "budget.max_epochs=4")
    assert evaluated == [] and again["rows"] == payload["rows"]


KILLED_BOARD = ("models=[lightgcn]", "trials=3", "seeds=1", TINY_RUN, "budget.max_epochs=6", "budget.patience=1000")


def _cli(out: Path) -> list[str]:
    return [sys.executable, "-m", "recgoat.leaderboard", *KILLED_BOARD, f"out_dir={out}"]


def _summary(out: Path) -> list[tuple]:
    """The completed trials in order: their parameters and valid metric."""
    return [(t.params, t.value) for t in trials_of(out, "lightgcn") if t.state.name == "COMPLETE"]


def test_sigkill_mid_trial_then_the_same_command_continues_without_repeating_a_trial(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    board(reference, *KILLED_BOARD)                    # the uninterrupted leaderboard, in this process

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill once trial 0 is told and trial 1 has trained at least one epoch
            if (out / "study.db").exists() and (out / "lightgcn/search/trial_001/checkpoints/last.ckpt").exists():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the leaderboard never reached its second trial")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = trials_of(out, "lightgcn")
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    first_value = before[0].value

    done = subprocess.run(_cli(out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = trials_of(out, "lightgcn")
    states = [(t.state.name, bool(t.user_attrs.get("killed"))) for t in after]
    assert states == [("COMPLETE", False), ("FAIL", True), ("COMPLETE", False), ("COMPLETE", False)]
    assert after[0].value == first_value and after[0].datetime_complete == before[0].datetime_complete  # not rerun
    assert after[2].params == before[1].params and after[2].user_attrs["retry_of"] == 1  # the killed one, again
    assert not (out / "lightgcn/search/trial_001").exists()
    # an interrupted leaderboard ends where an uninterrupted one does (same trials, same values, same test)
    assert _summary(out) == _summary(reference)
    rows = [json.loads((d / "leaderboard.json").read_text())["rows"][0] for d in (out, reference)]
    assert rows[0]["test"] == rows[1]["test"] and rows[0]["trials"] == 3


def test_a_changed_data_fingerprint_is_refused_and_nothing_is_touched(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(u, i, 5, 0, 0 if k < 6 else 1 if k < 8 else 2)
            for u in range(40) for k, i in enumerate(rng.choice(30, size=10, replace=False))]
    data = write_mmrec(tmp_path / "data", rows)
    out = tmp_path / "lb"
    args = ("models=[lightgcn]", "trials=1", "seeds=1", "budget.max_epochs=2", "dataset=mmrec",
            f"dataset.path={data}")
    board(out, *args)
    manifest = (out / "manifest.json").read_text()
    db = (out / "study.db").read_bytes()

    write_mmrec(data, rows[:-1])  # one interaction fewer
    with pytest.raises(LeaderboardError, match=r"manifest.json: this command would mix runs of different "
                                               r"data_fingerprint"):
        board(out, *args)
    assert (out / "manifest.json").read_text() == manifest and (out / "study.db").read_bytes() == db

    write_mmrec(data, rows)  # the data back as it was: the command goes on (nothing to do)
    board(out, *args)


def test_a_changed_budget_or_space_is_refused(tmp_path):
    out = tmp_path / "lb"
    board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=2")
    with pytest.raises(LeaderboardError, match=r"different budget_overrides.*trainer.max_epochs=3"):
        board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=3")
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    text = (Path(compose([], config_name="leaderboard").space_dir) / "lightgcn.yaml").read_text()
    (spaces / "lightgcn.yaml").write_text(text.replace("high: 4", "high: 3"))
    with pytest.raises(LeaderboardError, match=r"differs from the space lightgcn was searched over"):
        board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=2", f"space_dir={spaces}")
    # more trials on the same folder continue the search (the seeds then retrain the new best)
    payload = board(out, "models=[lightgcn]", "trials=2", "seeds=1", TINY_RUN, "budget.max_epochs=2")
    assert payload["rows"][0]["trials"] == 2 and len(trials_of(out, "lightgcn")) == 2
    board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=2")  # lowered: says so
    heading = (out / "leaderboard.md").read_text().split("\n| model")[0]
    assert "1 search trials asked (`trials` lowered after more had run" in heading and "lightgcn 2)" in heading


def test_a_reused_run_of_other_code_is_refused(tmp_path):
    out = tmp_path / "lb"
    payload = board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=2")
    path = out / payload["rows"][0]["runs"][0]["path"]
    results = json.loads(path.read_text())
    results["provenance"]["code_hash"] = "0" * 64
    path.write_text(json.dumps(results))
    with pytest.raises(LeaderboardError, match=r"seed_1/results.json: this finished run's code differs"):
        board(out, "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, "budget.max_epochs=2")


def test_space_files_are_checked_with_file_and_key(tmp_path):
    (tmp_path / "bad.yaml").write_text("run: [model=lightgcn]\nparams:\n  optimizer.lr: {type: float, low: 0.1, "
                                       "high: 0.01}\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: params.optimizer.lr: float needs low < high"):
        load_space(tmp_path, "bad")
    (tmp_path / "typo.yaml").write_text("run: [model=lightgcn]\nparams:\n  model.n_layers: {type: int, low: 1, "
                                        "hihg: 4}\n")
    with pytest.raises(SpaceError, match=r"typo.yaml: params.model.n_layers: unknown field\(s\) \['hihg'\]"):
        load_space(tmp_path, "typo")
    with pytest.raises(SpaceError, match=r"no search space .*missing.yaml for 'missing' \(spaces in .*: \['bad', "
                                         r"'typo'\]\)"):
        load_space(tmp_path, "missing")
    assert as_overrides({"a.b": True, "c": None, "d": 0.5, "e": 3}) == ["a.b=true", "c=null", "d=0.5", "e=3"]


def test_every_shipped_space_composes_into_a_run_config_the_model_accepts():
    from hydra.utils import instantiate

    from recgoat.utils.config import check_targets
    cfg = compose([], config_name="leaderboard")
    check_targets(cfg)
    assert instantiate(cfg.sampler)(seed=0) is not None
    names = sorted(p.stem for p in Path(cfg.space_dir).glob("*.yaml"))
    assert set(cfg.models) <= set(names) and {"recgoat", "recgoat_mgcn"} <= set(names)
    for name in names:
        space = load_space(cfg.space_dir, name)
        mid = {k: (s["choices"][-1] if s["type"] == "categorical" else s["high"]) for k, s in space.params.items()}
        run_cfg = compose([*space.run, *as_overrides(mid)])
        check_targets(run_cfg)  # every tuned key is a key the model's components take
        for key, value in mid.items():
            assert OmegaConf.select(run_cfg, key) == value, (name, key)
        # defaults_first: the model's own config lies inside its space (a trial the space could ask)
        plan = SimpleNamespace(common=())
        defaults = default_values(plan, space)
        assert defaults == {k: OmegaConf.select(compose(space.run), k) for k in space.params}, name


def test_the_first_trial_is_the_models_default_and_a_default_outside_the_space_is_named(tmp_path):
    out = tmp_path / "lb"
    board(out, "models=[lightgcn]", "trials=2", "seeds=1", TINY_RUN, "budget.max_epochs=2")
    first, second = trials_of(out, "lightgcn")
    assert first.params == {"optimizer.lr": 1.0e-3, "model.reg_weight": 1.0e-4, "model.n_layers": 3}
    assert second.params != first.params
    space = tmp_path / "space"
    space.mkdir()
    (space / "lightgcn.yaml").write_text("run: [model=lightgcn]\nparams:\n  model.n_layers: {type: int, low: 1, "
                                         "high: 2}\n")
    with pytest.raises(LeaderboardError, match=r"lightgcn.yaml: lightgcn's config sets model.n_layers=3, outside "
                                               r"its search space"):
        board(tmp_path / "lb2", "models=[lightgcn]", "trials=1", "seeds=1", TINY_RUN, f"space_dir={space}")


def test_models_and_their_runs_in_parallel_processes_give_the_sequential_leaderboard(tmp_path):
    import torch
    args = ("trials=3", "seeds=1", TINY_RUN, "budget.max_epochs=2", "threads_per_job=1")
    threads = torch.get_num_threads()
    try:
        sequential = board(tmp_path / "one", "models=[lightgcn,vbpr]", *args)
    finally:
        torch.set_num_threads(threads)
    # both models at once (jobs=2), each in a joblib worker with its own pool of 3 (run_pool: the same code as a
    # pool in this process)
    nested = board(tmp_path / "three", "models=[lightgcn,vbpr]", *args, "model_jobs=3", "jobs=2")
    keys = ("model", "best_params", "search_valid", "test")
    assert [[r[k] for k in keys] for r in nested["rows"]] == [[r[k] for k in keys] for r in sequential["rows"]]
    assert [r["status"] for r in nested["rows"]] == ["done", "done"]
    # the same trials were asked (trial 0: the default; 1, 2: the sampler seeded by their position)
    for folder, model in (("three", "lightgcn"), ("three", "vbpr")):
        assert [t.params for t in trials_of(tmp_path / "one", model)] == \
               [t.params for t in trials_of(tmp_path / folder, model)]
    lines = (tmp_path / "three" / "progress.log").read_text().splitlines()
    assert len(lines) == 8 and lines[-1].split("| ")[1].startswith("8/8 runs done")
    with pytest.raises(ValueError, match="model_jobs must be >= 1"):
        board(tmp_path / "four", "models=[lightgcn]", *args, "model_jobs=0")


def test_the_run_spelling_leaderboard_yaml_suggests_parses_and_the_bare_one_does_not():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    comment = (Path(__file__).resolve().parents[1] / "conf" / "leaderboard.yaml").read_text()
    suggested = re.search(r"'(run=\[[^']*\])'", comment).group(1)
    parser = OverridesParser.create()
    assert parser.parse_overrides([suggested])[0].value() == ["debug=tiny"]
    with pytest.raises(OverrideParseException):
        parser.parse_overrides(["run=[debug=tiny]"])


def test_an_unquoted_override_in_run_gets_the_quoting_it_needs():
    from recgoat.leaderboard.__main__ import check_list_overrides
    with pytest.raises(SystemExit, match=re.escape("run=[debug=tiny,trainer.max_epochs=2]: each recgoat.run override "
                                                   "in the list needs quotes of its own, inside the shell's: "
                                                   "'run=[\"debug=tiny\", \"trainer.max_epochs=2\"]'")):
        check_list_overrides(["models=[lightgcn]", "run=[debug=tiny,trainer.max_epochs=2]"])
    check_list_overrides(['run=["debug=tiny"]', "run=[]", "models=[a,b]"])   # quoted, empty, not run: no error


def test_a_loss_joins_every_models_space_with_its_own_parameters(tmp_path):
    space = load_space(ROOT / "conf" / "leaderboard" / "space", "lightgcn", loss="softmax")
    assert {"loss.objective.tau", "loss.negatives.n", "optimizer.lr"} <= set(space.params)
    assert load_space(ROOT / "conf" / "leaderboard" / "space", "lightgcn", loss="bpr").params == \
        load_space(ROOT / "conf" / "leaderboard" / "space", "lightgcn").params      # BPR has nothing of its own to tune
    out = tmp_path / "lb"
    payload = board(out, "models=[lightgcn]", "trials=2", "seeds=1", 'run=["debug=tiny","loss=softmax"]',
                    "budget.max_epochs=2")
    assert payload["rows"][0]["status"] == "done"
    trials = trials_of(out, "lightgcn")
    assert trials[0].params["loss.objective.tau"] == 0.2 and trials[0].params["loss.negatives.n"] == 64  # its yaml's
    runs = [json.loads(p.read_text()) for p in out.rglob("results.json")]
    assert len(runs) == 3 and {r["config"]["loss"]["objective"]["_target_"] for r in runs} == {
        "recgoat.nn.ranking.SampledSoftmax"}
    assert load_space(out / "spaces", "lightgcn").text == space.text    # the folder's copy reads back the same
