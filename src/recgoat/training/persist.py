"""Checkpoints and logs that a resumed run continues: nothing a killed run wrote is lost or rewritten."""
from __future__ import annotations

import csv
import os
from weakref import proxy

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint as _LightningModelCheckpoint
from pytorch_lightning.loggers import CSVLogger as _LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.trainer.states import TrainerFn


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
                os.replace(*self._pending_last)
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
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if filepath == self.last_model_path:
            self._pending_last = (tmp, filepath)
        elif trainer.is_global_zero:
            os.replace(tmp, filepath)
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


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (and its columns) instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger``, appending to the run's ``metrics.csv``: a resumed run continues the file (its
    rows after the checkpoint's epoch are dropped before the resume, see :func:`recgoat.training.resume`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
