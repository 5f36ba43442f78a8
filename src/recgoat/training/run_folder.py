"""The one owner of a run folder: who writes in it, what it records, and how a run in it continues.

- A folder belongs to one process (:func:`folder_lock`): a second run, resume or leaderboard command into a
  held folder is refused at once, naming the holder.
- :func:`claim` checks everything a new run, a restart or a resume needs before anything is written, so a
  refused command leaves the folder byte-identical (no record, no log line, no created folder);
  :meth:`RunFolder.accept` then writes the record (``.hydra/`` for a new run or a restart, ``.hydra/<time>/``
  beside it for a resume) and starts the run's log (the lines logged before it included).
- :class:`RunState` carries what a resumed run continues besides the weights and the optimiser (which Lightning
  restores): the valid history, the random state, the timings. It is the one place the best epoch is read from.
- :class:`ModelCheckpoint` and :class:`CSVLogger` write checkpoints and ``metrics.csv`` so that a kill at any
  moment loses at most the epoch in flight.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import logging
import logging.handlers
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from weakref import proxy

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.trainer.states import TrainerFn

from recgoat.utils.io import atomic_write

log = logging.getLogger("recgoat")

PROCESS_STARTED = time.time()  # a folder made after this (by Hydra, for this command) is removed if it is refused
LOCK_FILE = ".lock"
RUN_LOG_BUFFER = "run_log_buffer"  # the job-logging handler holding lines until the run is accepted (conf/hydra)
# command-line overrides that a resume accepts: they change how long or how visibly the run goes on, not what
# it computes; dataset.path only says where the data is now (it must have the fingerprint the checkpoint recorded)
RESUME_SAFE_OVERRIDES = ("resume", "trainer.max_epochs", "trainer.enable_progress_bar", "dataset.path")


class RunFolderError(ValueError):
    """A command that cannot use the run folder it names (held, used, or not a run that can continue)."""


# ---- one process per folder -----------------------------------------------------------------------------------
def _holder(f) -> str:
    f.seek(0)
    return f.read().strip()


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator:
    """Holds ``folder`` for this process: an advisory ``flock`` on ``folder/.lock``, which the kernel releases
    when the process ends, so a killed holder leaves no lock behind, only its name in the file (taken over, with
    a warning). Yields ``name_holder()``, to call once the folder is really used: it writes this process's pid,
    host and start into the file. Before that call nothing is written (a lock file this call created is removed
    again), so a refused command leaves the folder as it was. ``what``: this command, for the refusal message."""
    path = folder / LOCK_FILE
    try:
        fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        fd, created = os.open(path, os.O_RDWR), False
    except OSError as e:
        raise RunFolderError(f"{folder}: cannot create its lock file {path}: {e.strerror}") from e
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(f"{folder} is in use by {_holder(f) or 'another process'}; {what} is refused (one "
                                 f"process per folder): wait for it to end, or stop it") from None
        previous, named = _holder(f), False

        def name_holder() -> None:
            nonlocal named
            if previous:
                log.warning("%s was held by %s, which ended without releasing it (killed?); taken over", folder,
                            previous)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            named = True
        try:
            yield name_holder
        finally:
            if named:         # ended in order (done or failed): nothing to take over
                f.seek(0)
                f.truncate()
            elif created:
                path.unlink(missing_ok=True)


def follower_rank() -> bool:
    """A process of a multi-process run other than rank 0 (Lightning starts the command again for each): it works
    in the folder rank 0 holds and writes no record."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _held_by_another(folder: Path) -> bool:
    try:
        with open(folder / LOCK_FILE) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
    except FileNotFoundError:
        return False
    except OSError:
        return True


# ---- the run's record and log ---------------------------------------------------------------------------------
def record_dir(run_dir: Path) -> Path:
    """A new ``.hydra/<time>`` beside a folder's existing record, never over it."""
    return run_dir / ".hydra" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.perf_counter_ns() % 10**6:06d}"


def write_record(folder: Path, task_config: str, hydra_node, overrides: list[str]) -> None:
    """What Hydra would record of the command (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``), each file
    written whole or not at all."""
    files = {"config.yaml": task_config, "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(overrides)))}
    if hydra_node is not None:
        files["hydra.yaml"] = OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_node}))
    for name, text in files.items():
        atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text))


def start_run_log(path: Path) -> None:
    """Sends the command's log to ``path`` (appending), the lines logged so far first. Only where Hydra's job
    logging holds them back (``conf/hydra/default.yaml``); a run started from Python logs as its caller set up."""
    root = logging.getLogger()
    buffer = next((h for h in root.handlers if h.get_name() == RUN_LOG_BUFFER), None)
    if buffer is None:
        return
    file = logging.FileHandler(path)
    file.setFormatter(buffer.formatter)
    root.removeHandler(buffer)
    for record in buffer.buffer:
        file.handle(record)
    buffer.close()
    root.addHandler(file)


# ---- claiming a folder: new run, restart, resume --------------------------------------------------------------
def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def refuse_used_run_dir(run_dir: Path, multirun: bool = False) -> None:
    """A new run never writes into a folder that holds another run's checkpoints or metrics; a folder that holds
    only the record of a run stopped before its first checkpoint is started again (its record rewritten).
    ``multirun``: the run is a job of a sweep, whose folders ``hydra.sweep.dir`` names."""
    used = [p for p in (run_dir / "checkpoints", run_dir / "csv" / "metrics.csv", run_dir / "results.json")
            if p.is_file() or p.is_dir() and any(p.iterdir())]
    if used:
        elsewhere = ("give the sweep another folder (hydra.sweep.dir=...)" if multirun else
                     "give this run another folder (hydra.run.dir=...)")
        raise RunFolderError(f"{run_dir} already holds a run ({', '.join(str(p) for p in used)}); resume it with "
                             f"python -m recgoat.run resume={run_dir}, or {elsewhere}")


def resume_config(cfg: DictConfig, overrides: list[str], hydra_overrides: list[str]) -> DictConfig:
    """The run's own saved config, with the safe ``overrides`` of this command applied and ``ckpt_path`` set to
    its last checkpoint; refuses anything else with a message saying why."""
    run_dir = Path(cfg.resume).resolve()
    moved = [o for o in hydra_overrides if o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir"
             and Path(o.split("=", 1)[1].strip("'\"")).resolve() != run_dir]
    if moved:
        raise RunFolderError(f"resume= continues the run in its own folder; {moved} would fork it into another one. "
                             f"To continue a copy, copy the folder and resume the copy (resume=<copy>)")
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        raise RunFolderError(f"resume={cfg.resume}: {saved_path} not found; resume= takes the folder a run wrote "
                             f"(logs/train/runs/<time>, or the hydra.run.dir it was given)")
    if (run_dir / "results.json").exists():
        raise RunFolderError(f"resume={cfg.resume}: the run has finished ({run_dir / 'results.json'}); nothing to "
                             f"resume")
    ckpt = last_checkpoint(run_dir)
    if not ckpt.is_file():
        raise RunFolderError(f"resume={cfg.resume}: {ckpt} not found: the run was stopped before its first "
                             f"validation, so there is nothing to continue; start it again into the same folder "
                             f"(hydra.run.dir={run_dir}), which rewrites its record")
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    unsafe = [o for o, k in zip(overrides, keys, strict=True) if k not in RESUME_SAFE_OVERRIDES]
    if unsafe:
        raise RunFolderError(f"resume= continues the run with its own config ({saved_path}); these overrides would "
                             f"change it and are refused: {unsafe} (a resume accepts {list(RESUME_SAFE_OVERRIDES)})")
    saved = OmegaConf.load(saved_path)
    with open_dict(saved):
        for key in keys:
            if key != "resume":
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
        saved.resume = str(run_dir)
        saved.ckpt_path = str(ckpt)
    return saved


def saved_model_choice(run_dir: str | Path) -> str | None:
    """The model group's choice the run in ``run_dir`` was started with (its ``.hydra/hydra.yaml``), if recorded."""
    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices.model")


def check_resume_data(ckpt_path: str | Path, dataset) -> int:
    """The epoch of the checkpoint, after checking that it is readable and that ``dataset`` is the data it was
    trained on (the one read of the checkpoint before Lightning restores it)."""
    from recgoat.training.checkpoint import data_mismatch, read_checkpoint, read_metadata

    ckpt = read_checkpoint(ckpt_path)
    mismatch = data_mismatch(ckpt_path, read_metadata(ckpt)["dataset"], dataset)
    if mismatch:
        raise RunFolderError(f"{mismatch}: the data changed since the run started, so it cannot be continued")
    return int(ckpt["epoch"])


def truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop the rows of ``metrics.csv`` logged after ``last_epoch`` (the resumed run logs those epochs again)."""
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if not r.get("epoch") or int(float(r["epoch"])) <= last_epoch]
    if len(kept) == len(rows):
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write(path, lambda tmp: Path(tmp).write_text(out.getvalue()))


class RunFolder:
    """A run folder claimed by this process (see :func:`claim`): ``config`` is what the run trains with (a
    resume's own saved config), ``model_name`` the model group's choice."""

    def __init__(self, path: Path, config: DictConfig, model_name: str | None, hydra, name_holder):
        self.path = path
        self.config = config
        self.model_name = model_name
        self.resuming = config.get("resume") is not None
        self._hydra = hydra
        self._name_holder = name_holder
        self._record = OmegaConf.to_yaml(config)   # before the run adds to it (ablations applied, ...)
        self.accepted = False

    def accept(self, dataset) -> None:
        """Everything checked: the data is the checkpoint's (a resume), the folder's record and log are written."""
        cfg = self.config
        if self.resuming:
            epoch = check_resume_data(cfg.ckpt_path, dataset)
            max_epochs = cfg.trainer.get("max_epochs")
            if max_epochs is not None and max_epochs < epoch + 1:
                raise RunFolderError(f"resume={cfg.resume} trainer.max_epochs={max_epochs}: the checkpoint has "
                                     f"trained {epoch + 1} epochs already; give at least trainer.max_epochs="
                                     f"{epoch + 1}")
        if self._name_holder is not None:   # rank 0 (or a single process)
            self._name_holder()
            overrides = list(self._hydra.overrides.task) if self._hydra is not None else []
            if self.resuming:
                truncate_metrics(self.path / "csv" / "metrics.csv", epoch)
                write_record(record_dir(self.path), self._record, None, overrides)
            else:
                write_record(self.path / ".hydra", self._record, self._hydra, overrides)
        if self._hydra is not None:
            start_run_log(self.path / f"{self._hydra.job.name}.log")
        self.accepted = True


@contextlib.contextmanager
def claim(path: Path, cfg: DictConfig, model_name: str | None) -> Iterator[RunFolder]:
    """Takes ``path`` for the run of ``cfg`` (``resume=`` set: continues the run there) and checks that the command
    may use it; nothing is written until :meth:`RunFolder.accept`. A command refused before that leaves the folder
    as it was, and removes it if it was made for this command and is empty."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    path = Path(path)
    folder = None
    try:
        path.mkdir(parents=True, exist_ok=True)   # Hydra made it already; a run started from Python may not have
        with contextlib.ExitStack() as stack:
            if follower_rank():
                if not _held_by_another(path):
                    raise RunFolderError(f"{path}: this process has a DDP rank above 0 ({os.environ.get('RANK')}, "
                                         f"{os.environ.get('LOCAL_RANK')}) but no rank 0 holds the folder")
                name_holder = None
            else:
                name_holder = stack.enter_context(folder_lock(path, "this run" if cfg.get("resume") is None
                                                              else "this resume"))
            if cfg.get("resume") is not None:
                hydra_overrides = list(hydra.overrides.hydra) if hydra is not None else []
                overrides = list(hydra.overrides.task) if hydra is not None else []
                cfg, model_name = resume_config(cfg, overrides, hydra_overrides), saved_model_choice(cfg.resume)
            elif name_holder is not None:
                refuse_used_run_dir(path, multirun=hydra is not None and str(hydra.mode) == "RunMode.MULTIRUN")
            folder = RunFolder(path, cfg, model_name, hydra, name_holder)
            yield folder
    except BaseException:
        if folder is None or not folder.accepted:
            remove_made_for_this_command(path)
        raise


def remove_made_for_this_command(path: Path) -> None:
    """Removes the run folder if it is empty and was made since this process started (by Hydra, for a command then
    refused). Parents Hydra made with it stay: a parent's time changes with its children, so it cannot tell."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not any(path.iterdir()) and path.stat().st_mtime >= PROCESS_STARTED - 1:
            path.rmdir()


# ---- what a resumed run continues -----------------------------------------------------------------------------
class RunState(pl.Callback):
    """The valid metrics of every epoch, the random state (dropout, negative sampling, OT subsampling) and the
    timings, in every checkpoint, restored when a fit resumes, so that a resumed run continues exactly as an
    uninterrupted one. The best epoch is read from here (:meth:`best_epoch`).

    Args:
        monitor: the valid metric epochs are selected on (``recall@20``).
        timings: the run's :class:`~recgoat.training.callbacks.Timings`, saved and restored with the state.
    """

    def __init__(self, monitor: str, timings):
        self.monitor = monitor
        self.timings = timings
        self.history: list[dict[str, float]] = []   # {"epoch": e, "recall@20": ..., ...} per validation of the fit

    @staticmethod
    def of(trainer: pl.Trainer) -> RunState:
        return next(c for c in trainer.callbacks if isinstance(c, RunState))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # callbacks see the end of validation before the checkpoint callback, which Lightning runs last
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.history.append({"epoch": trainer.current_epoch, **pl_module.last_metrics["valid"]})

    def best_epoch(self) -> int | None:
        """The first epoch with the best monitored value, compared at the precision it is logged at (float32), as
        the checkpoint callback compares it: the epoch whose checkpoint ``best`` is."""
        if not self.history:
            return None
        values = torch.tensor([h[self.monitor] for h in self.history], dtype=torch.float32)
        return self.history[int(torch.argmax(values))]["epoch"]   # argmax: the first maximum

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["recgoat_run_state"] = {
            "history": list(self.history),
            "timings": {"train_epoch_s": list(self.timings.train_epoch_s), "valid_s": list(self.timings.valid_s)},
            # plain types and tensors only, so the checkpoint still loads with weights_only=True
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != TrainerFn.FITTING:   # testing the best checkpoint keeps the whole fit's state
            return
        state = checkpoint["recgoat_run_state"]
        self.history = list(state["history"])
        self.timings.train_epoch_s = list(state["timings"]["train_epoch_s"])
        self.timings.valid_s = list(state["timings"]["valid_s"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---- checkpoints and metrics that a resume continues ----------------------------------------------------------
class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, made safe to resume from:

    - ``last.ckpt`` is written after every validation (Lightning writes it only when a top-k checkpoint was
      saved in the same step), so a killed run loses at most the epoch in flight;
    - every checkpoint is written to a temporary file and renamed, so a kill never leaves a truncated one;
    - the loggers are flushed first, so ``metrics.csv`` on disk holds every epoch a checkpoint holds; the
      epoch's training rows are logged by Lightning only after its validation, so ``last.ckpt`` is renamed
      into place once they are flushed too (at the next epoch's start, or the end of training): a run killed
      in between resumes from the epoch before and runs that epoch again;
    - a run folder that was moved or copied keeps its best score and checkpoint paths (Lightning drops them
      when the folder changed, and would then report a wrong best epoch and write ``last-v1.ckpt``).
    """

    _last_saved_step_of_last: int | None = None
    _pending_last: tuple[str, str] | None = None  # (written, final path) of a last.ckpt not yet in place

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._promote_last(trainer)  # the previous epoch's training rows, logged after its checkpoint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._promote_last(trainer)

    def _promote_last(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:
            logger.save()
        if self._pending_last is not None:
            if trainer.is_global_zero:
                try:
                    os.replace(*self._pending_last)
                except OSError as e:
                    raise unwritable(self._pending_last[1], e) from e
            self._pending_last = None

    # Lightning saves either at the end of validation or at the end of the training epoch (its choice, see
    # ``_should_save_on_train_epoch_end``); at the same moment, last.ckpt is written if Lightning did not
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _save_last_if_missing(self, trainer: pl.Trainer) -> None:
        if (self.save_last and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and not trainer.fast_dev_run and self._last_saved_step_of_last != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_step_of_last = trainer.global_step

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        for logger in trainer.loggers:
            logger.save()
        tmp = f"{filepath}.tmp"
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if filepath == self.last_model_path:
                self._pending_last = (tmp, filepath)
            elif trainer.is_global_zero:
                os.replace(tmp, filepath)
        except OSError as e:
            raise unwritable(filepath, e) from e
        trainer.strategy.barrier("recgoat_checkpoint_renamed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and os.path.abspath(old) != os.path.abspath(new):
            def moved(path):
                if isinstance(path, str) and path.startswith(old.rstrip(os.sep) + os.sep):
                    return os.path.join(new, os.path.relpath(path, old))
                return path
            state_dict = {**state_dict, "dirpath": new,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                   "last_model_path")},
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


def unwritable(path: str, error: OSError) -> RunFolderError:
    """A checkpoint that could not be written, with the first cause in the chain (a file system's transaction that
    fails to clean up raises ``FileNotFoundError`` over the ``PermissionError`` that stopped the write)."""
    cause, seen = error, error
    while seen is not None:
        if isinstance(seen, OSError) and not isinstance(seen, FileNotFoundError):
            cause = seen
            break
        seen = seen.__context__ or seen.__cause__
    where = getattr(cause, "filename", None) or path
    return RunFolderError(f"{path}: the checkpoint could not be written ({type(cause).__name__}: "
                          f"{cause.strerror or cause} at {where}); the run folder must stay writable while the run "
                          f"goes on (free space, permissions), then resume it: python -m recgoat.run "
                          f"resume={Path(path).parent.parent}")


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (and its columns) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger``, appending to the run's ``metrics.csv``: a resumed run continues the file (its
    rows after the checkpoint's epoch are dropped when the resume is accepted, :meth:`RunFolder.accept`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
