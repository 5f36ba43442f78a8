"""Experiment operations end to end: DDP on 2 CPU processes, resume after a kill (in place and in a copy)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recgoat.inference import load_model
from recgoat.training.run_folder import (
    RunFolderError,
    check_resume_data,
    folder_lock,
    record_dir,
    refuse_used_run_dir,
    truncate_metrics,
)
from recgoat.utils.config import compose
from tests.helpers import QUIET, TINY_DATA, compose_cfg, load_results, make_evaluator, run_cli, run_in_process

QUIET_CLI = ["trainer.enable_progress_bar=false", "logger=none"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_single_process_evaluation(tmp_path):
    run_dir = tmp_path / "ddp"
    run_cli(["trainer=ddp", "trainer.devices=2", "trainer.max_epochs=3", *TINY_DATA, *QUIET_CLI,
             f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    res = load_results(run_dir)
    assert res["config"]["trainer"]["strategy"] == "ddp" and res["config"]["trainer"]["devices"] == 2
    loaded = load_model(res["best_checkpoint"])
    evaluator = make_evaluator(loaded.dataset.train, ks=[10, 20])
    scorer = loaded.model.scorer()
    single_test = evaluator.evaluate(scorer, loaded.dataset.test)
    single_valid = evaluator.evaluate(scorer, loaded.dataset.valid)
    # sums and counts are reduced over ranks, so sharded evaluation is exact, not a mean of means
    assert single_test == pytest.approx(res["test"], abs=1e-12)
    assert single_valid == pytest.approx(res["valid"], abs=1e-12)

    # a DDP run resumes in its own folder (rank 1's command names it): as if stopped after its last epoch
    (run_dir / "results.json").unlink()
    run_cli([f"resume={run_dir}", "trainer.max_epochs=4"], cwd=tmp_path)
    resumed = load_results(run_dir)
    assert [h["epoch"] for h in resumed["valid_history"]] == [0, 1, 2, 3], resumed["timings"]
    assert resumed["valid_history"][:3] == res["valid_history"]


def _last_epoch(ckpt) -> int:
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"])
    except Exception:  # being written
        return -1


README = Path(__file__).resolve().parents[1] / "README.md"
EPOCHS = 6
RESUME_ARGS = ["model=lightgcn", f"trainer.max_epochs={EPOCHS}", *TINY_DATA, "trainer.enable_progress_bar=false",
               "logger=csv", "callbacks.early_stopping.patience=100"]

# The command line, killed by SIGKILL from inside at a given moment (no poller racing the run): ``hook`` is the
# ModelCheckpoint hook after which the child kills itself, at epoch ``epoch``.
KILL_AT = """
import os, signal, sys
from recgoat.run import main
from recgoat.training import ModelCheckpoint
hook_name, epoch = sys.argv[1], int(sys.argv[2])
hook = getattr(ModelCheckpoint, hook_name)
def killing(self, trainer, pl_module):
    hook(self, trainer, pl_module)
    if trainer.current_epoch == epoch:
        os.kill(os.getpid(), signal.SIGKILL)
setattr(ModelCheckpoint, hook_name, killing)
sys.argv = ["recgoat.run", *sys.argv[3:]]
main()
"""


def readme_resume_args(run_dir: Path) -> list[str]:
    """The README's resume command, as printed, for ``run_dir``: its arguments after ``python -m recgoat.run``."""
    line = next(ln for ln in README.read_text().splitlines() if ln.startswith("python -m recgoat.run resume="))
    command = line.split("#")[0].replace("<run dir>", str(run_dir)).split()
    assert command[:3] == ["python", "-m", "recgoat.run"], line
    return command[3:]


def killed_run(tmp_path: Path, name: str = "killed", args: list[str] = RESUME_ARGS, hook: str = "on_train_epoch_start",
               epoch: int = 3) -> Path:
    """A run of ``args`` killed (SIGKILL) right after ``ModelCheckpoint.<hook>`` of epoch ``epoch``: by default as
    epoch 3 starts, once epoch 2's checkpoint is in place."""
    run_dir = tmp_path / name
    proc = subprocess.run([sys.executable, "-c", KILL_AT, hook, str(epoch), *args, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    return run_dir


def metric_epochs(run_dir: Path, column: str) -> list[int]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get(column)]


@pytest.mark.slow
def test_the_readmes_resume_command_after_a_kill_equals_the_uninterrupted_run_in_place_and_in_a_copy(tmp_path):
    # RecGOAT: it carries state beyond its weights (the OT map's warm-start potentials, in the checkpoint)
    args = ["model=recgoat", *RESUME_ARGS[1:]]
    full = run_in_process(args, tmp_path / "full")   # the uninterrupted reference (the CLI's train function)
    killed = killed_run(tmp_path, args=args)
    before = {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()}

    # refused before anything is written: an override that would change the run, a new run into the folder, a fork
    with pytest.raises(RunFolderError, match=r"would change it and are refused: \['model.embedding_dim=8'\] \(a "
                                             r"resume accepts \['resume', 'trainer.max_epochs'"):
        run_in_process([f"resume={killed}", "model.embedding_dim=8"], killed)
    with pytest.raises(RunFolderError, match=rf"{killed} already holds a run .*resume={killed}"):
        run_in_process(args, killed)
    other = tmp_path / "fork"
    with pytest.raises(RunFolderError, match="would fork it into another one"):
        run_in_process([f"resume={killed}", f"hydra.run.dir={other}"], other)
    assert not other.exists()                          # the folder made for the refused fork is gone again
    with pytest.raises(RunFolderError, match="nowhere/.hydra/config.yaml not found; resume= takes the folder"):
        run_in_process([f"resume={tmp_path / 'nowhere'}"], tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    assert {p: p.read_bytes() for p in killed.rglob("*") if p.is_file()} == before   # byte-identical, nothing added

    copied = tmp_path / "moved" / "copy"
    shutil.copytree(killed, copied)
    for run_dir in (killed, copied):
        run_cli(readme_resume_args(run_dir), cwd=tmp_path)
        resumed = load_results(run_dir)
        for key in ("best_epoch", "valid", "test", "valid_history", "n_parameters", "dataset", "seed"):
            assert json.dumps(resumed[key]) == json.dumps(full[key]), (run_dir.name, key)
        assert resumed["timings"]["epochs"] == full["timings"]["epochs"] == EPOCHS
        assert resumed["best_checkpoint"].startswith(str(run_dir)) and Path(resumed["best_checkpoint"]).is_file()
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
            f"best-epoch{full['best_epoch']:04d}.ckpt", "last.ckpt"]                    # no last-v1.ckpt
        assert metric_epochs(run_dir, "valid/recall@20") == list(range(EPOCHS))          # each epoch once
        assert metric_epochs(run_dir, "train/loss") == list(range(EPOCHS))
        assert metric_epochs(run_dir, "test/recall@20") == metric_epochs(tmp_path / "full", "test/recall@20")
        for f in ("config.yaml", "overrides.yaml"):                                       # the original command
            assert (run_dir / ".hydra" / f).read_bytes() == before[killed / ".hydra" / f]
        assert any("resume=" in p.read_text() for p in (run_dir / ".hydra").glob("*/overrides.yaml"))
        assert train_losses(run_dir) == train_losses(tmp_path / "full")             # every digit, every epoch


def train_losses(run_dir: Path) -> list[str]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_a_kill_between_an_epochs_checkpoint_and_its_training_rows_resumes_to_the_uninterrupted_run(tmp_path):
    full = run_in_process(RESUME_ARGS, tmp_path / "full")
    # the worst moment for a kill: Lightning has checkpointed epoch 2 at the end of its validation, and logs the
    # epoch's training rows only after the epoch-end hooks; the child kills itself in the last of those hooks
    run_dir = killed_run(tmp_path, hook="on_train_epoch_end", epoch=2)
    # epoch 2 is validated but its training rows are not on disk: the resume point is still epoch 1
    assert metric_epochs(run_dir, "valid/recall@20") == [0, 1, 2]
    assert metric_epochs(run_dir, "train/loss") == [0, 1]
    assert _last_epoch(run_dir / "checkpoints" / "last.ckpt") == 1
    run_cli(readme_resume_args(run_dir), cwd=tmp_path)
    resumed = load_results(run_dir)
    for key in ("best_epoch", "valid", "test", "valid_history"):
        assert json.dumps(resumed[key]) == json.dumps(full[key]), key
    assert metric_epochs(run_dir, "train/loss") == metric_epochs(run_dir, "valid/recall@20") == list(range(EPOCHS))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"best-epoch{full['best_epoch']:04d}.ckpt", "last.ckpt"]


def test_a_folder_is_held_by_one_process_and_a_killed_holder_is_taken_over(tmp_path):
    # another process holding the folder the way folder_lock does (flock on .lock, its name in the file)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, socket, sys, time\n"
                               "f = open(sys.argv[1] + '/.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "f.write(f'pid {os.getpid()} on {socket.gethostname()} since now'); f.flush()\n"
                               "print('held', flush=True); time.sleep(600)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by pid {holder.pid} on .* since .*; this "
                                                 rf"resume is refused \(one process per folder\)"):
            with folder_lock(tmp_path, "this resume"):
                pass
    finally:
        holder.kill()
        holder.wait()
    stale = (tmp_path / ".lock").read_text()
    assert stale.startswith(f"pid {holder.pid} on ")             # killed: its name stays, the kernel freed the lock
    with folder_lock(tmp_path, "this run") as name_holder:        # taken over, its name replaced once the run starts
        assert (tmp_path / ".lock").read_text() == stale
        name_holder()
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    assert (tmp_path / ".lock").read_text() == ""                 # released in order
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(KeyError), folder_lock(fresh, "this run"):
        raise KeyError("refused before it was used")
    assert list(fresh.iterdir()) == []                             # a refused command leaves no lock file
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", record_dir(tmp_path).name)
    (fresh / "results.json").write_text("{}")
    with pytest.raises(RunFolderError, match=r"already holds a run .* or give the sweep another folder \(hydra.sweep"):
        refuse_used_run_dir(fresh, multirun=True)   # a job of a multirun: the sweep's folder is what to change


def test_a_restart_rewrites_the_record_and_a_resume_trains_with_it(tmp_path):
    run_dir = tmp_path / "run"
    args = ["model=lightgcn", *TINY_DATA, *QUIET_CLI]
    # the first attempt stopped before its first checkpoint (here refused after it was recorded): only its record
    with pytest.raises(ValueError, match="trainer.max_epochs must be >= 1"):
        run_in_process([*args, "trainer.max_epochs=0", "model.reg_weight=0.001"], run_dir)
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").model.reg_weight == 0.001
    with pytest.raises(RunFolderError, match=r"last.ckpt not found: the run was stopped before its first validation.*"
                                             r"start it again into the same folder"):
        run_in_process([f"resume={run_dir}"], run_dir)
    run_in_process([*args, "trainer.max_epochs=2", "model.reg_weight=0.5"], run_dir)
    record = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert record.model.reg_weight == 0.5 and record.trainer.max_epochs == 2
    assert load_results(run_dir)["config"]["model"]["reg_weight"] == 0.5
    assert "model.reg_weight=0.5" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")


def test_resume_onto_changed_data_is_refused_and_metrics_are_cut_at_the_checkpoint(tmp_path, tiny_synthetic):
    ckpt_run = run_in_process(["model=lightgcn", *TINY_DATA, "logger=none", "trainer.max_epochs=2"], tmp_path / "r")
    ckpt = Path(ckpt_run["best_checkpoint"])
    assert check_resume_data(ckpt, instantiate(compose(TINY_DATA).dataset)) == ckpt_run["best_epoch"]
    with pytest.raises(RunFolderError, match=r"but the data loaded now is 'synthetic' \(120 users.*the data changed"):
        check_resume_data(ckpt, tiny_synthetic)
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss,valid/recall@20\n0,1,0.5,\n0,1,,0.1\n1,2,0.4,\n1,2,,0.2\n2,3,0.3,\n")
    truncate_metrics(metrics, 1)
    assert metrics.read_text() == "epoch,step,train/loss,valid/recall@20\n0,1,0.5,\n0,1,,0.1\n1,2,0.4,\n1,2,,0.2\n"


def test_a_resume_from_another_directory_is_told_where_the_data_is_now(tmp_path, monkeypatch):
    from recgoat.run import train
    data = tmp_path / "project"
    data.mkdir()
    rows = "".join(f"u{u},i{(u * 7 + k) % 40}\n" for u in range(60) for k in range(10))
    (data / "events.csv").write_text("user_id,item_id\n" + rows)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(data)                                      # the run was started next to its data
    first = ["model=lightgcn", "dataset=csv", "dataset.path=events.csv", "dataset.name=events", "trainer.max_epochs=2",
             *QUIET, "callbacks.early_stopping.patience=100"]
    run_in_process(first, run_dir)                               # records its command, as the CLI does
    (run_dir / "results.json").unlink()                          # as if it had been stopped after epoch 2
    monkeypatch.chdir(tmp_path)                                  # resumed from elsewhere: the relative path fails
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RunFolderError, match=r"(?s)could not be loaded from dataset.path='events.csv' \(a relative "
                                             r"path is read from the current directory.*\+dataset.path=<path>"):
        train(compose_cfg([f"resume={run_dir}", "trainer.max_epochs=3"], run_dir), output_dir=run_dir)
    with pytest.raises(RunFolderError, match=r"trainer.max_epochs=1: the checkpoint has trained 2 epochs already; "
                                             r"give at least trainer.max_epochs=2"):
        train(compose_cfg([f"resume={run_dir}", "trainer.max_epochs=1", f"+dataset.path={data / 'events.csv'}"],
                          run_dir), output_dir=run_dir)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before      # refused: nothing written
    overrides = [f"resume={run_dir}", "trainer.max_epochs=3", f"+dataset.path={data / 'events.csv'}"]
    results = train(compose_cfg(overrides, run_dir), output_dir=run_dir)
    assert results["timings"]["epochs"] == 3                     # continued from its checkpoint


def test_a_checkpoint_that_cannot_be_written_names_the_real_cause(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    def save_checkpoint(self, filepath, weights_only=False):   # what a read-only folder gives through fsspec
        try:
            raise PermissionError(13, "Permission denied", str(filepath))
        except PermissionError:
            raise FileNotFoundError(2, "No such file or directory", str(filepath)) from None
    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_checkpoint)
    with pytest.raises(RunFolderError, match=r"best-epoch0000.ckpt: the checkpoint could not be written \("
                                             r"PermissionError: Permission denied at .*best-epoch0000.ckpt.tmp\); the "
                                             r"run folder must stay writable .*resume=.*run$"):
        run_in_process(["model=lightgcn", *TINY_DATA, *QUIET, "trainer.max_epochs=2"], tmp_path / "run")
