"""Callbacks: wall-clock timings, a one-line summary per epoch, the run's results after the test."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping as _LightningEarlyStopping

from recgoat.training.run_folder import RunState
from recgoat.utils.provenance import provenance
from recgoat.utils.results import metrics_table, write_json_atomic

log = logging.getLogger("recgoat")


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's early stopping with a warm-up: no patience runs out before ``warmup_epochs``.

    The best score is tracked from the first epoch, but the patience counter only starts at
    ``warmup_epochs``. (Lightning's ``Trainer(min_epochs=...)`` is not the same: a stop decided
    during the minimum epochs sticks and ends the run right after them, even if the metric is
    improving by then.) LightGCN on popularity-skewed data sits on a popularity plateau for its
    first ~20-40 epochs; a warm-up keeps patience-20 early stopping from ending it there.
    """

    def __init__(self, *args, warmup_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.warmup_epochs = warmup_epochs

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.current_epoch >= self.warmup_epochs:
            return super()._run_early_stopping_check(trainer)
        current = trainer.callback_metrics.get(self.monitor)
        if current is not None and self.monitor_op(current.squeeze() - self.min_delta,
                                                   self.best_score.to(current.device)):
            self.best_score = current.squeeze().detach()
        self.wait_count = 0


class Timings(pl.Callback):
    """Seconds spent training (without evaluation) and evaluating, per epoch."""

    def __init__(self):
        self.train_epoch_s: list[float] = []
        self.valid_s: list[float] = []
        self.test_s: list[float] = []
        self._t0 = self._v0 = 0.0
        self._val_in_epoch = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()
        self._val_in_epoch = 0.0

    def on_train_epoch_end(self, trainer, pl_module):
        self.train_epoch_s.append(time.perf_counter() - self._t0 - self._val_in_epoch)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._v0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        dt = time.perf_counter() - self._v0
        self.valid_s.append(dt)
        self._val_in_epoch += dt

    def on_test_epoch_start(self, trainer, pl_module):
        self._v0 = time.perf_counter()

    def on_test_epoch_end(self, trainer, pl_module):
        self.test_s.append(time.perf_counter() - self._v0)

    def summary(self) -> dict[str, float]:
        def mean(xs):
            return sum(xs) / len(xs) if xs else None
        return {"train_epoch_s": mean(self.train_epoch_s), "valid_eval_s": mean(self.valid_s),
                "test_eval_s": mean(self.test_s), "epochs": len(self.train_epoch_s),
                "train_total_s": sum(self.train_epoch_s), "valid_total_s": sum(self.valid_s)}


class EpochSummary(pl.Callback):
    """Logs one line per epoch: losses, learned scalars, the monitored metric, and the best so far."""

    def __init__(self, monitor: str, extra: list[str]):
        self.monitor = monitor
        self.extra = tuple(extra)
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch:4d}"]
        parts += [f"{k.split('/', 1)[1]} {float(v):.4f}" for k, v in m.items() if k.startswith("train/")]
        parts += [f"{k.split('/', 1)[1]} {float(v):.4f}" for k, v in m.items() if k.startswith("param/")]
        if self.monitor in m:
            state = RunState.of(trainer)
            best_epoch = state.best_epoch()
            best = next(h for h in state.history if h["epoch"] == best_epoch)[state.monitor]
            parts.append(f"{self.monitor} {float(m[self.monitor]):.4f}")
            parts += [f"{k} {float(m[k]):.4f}" for k in self.extra if k in m]
            parts.append(f"best {best:.4f}@{best_epoch}")
        parts.append(f"{time.perf_counter() - self._t0:.1f}s")
        log.info(" | ".join(parts))


class RunSummary(pl.Callback):
    """The one owner of a run's results: after the test (once, on the best checkpoint), or, for a valid-only run
    (``test=False``), after the fit (or the validation of an untrained model), it builds the results, logs the final
    metrics to every logger (a table on W&B), and on rank 0 writes ``results.json`` and prints the table.

    Args:
        output_dir: the run directory.
        state: the run's :class:`~recgoat.training.run_folder.RunState` (valid history, best epoch, timings).
        run_config: the resolved run config (its ``name``, ``seed``, ``monitor``; recorded whole).
        dataset: the run's data (statistics and fingerprint).
        model: the recommender (its class and parameter count).
        load_s: seconds spent loading the data.
        test: whether the run scores the test split (then the results are built after it).
        model_name: the model group's choice (``recgoat``, ``recgoat_mgcn``, ...), or ``None`` where unknown.
    """

    def __init__(self, output_dir: str | Path, state: RunState, *, run_config: dict, dataset, model, load_s: float,
                 test: bool, model_name: str | None):
        self.output_dir = Path(output_dir)
        self.state = state
        self.test = test
        self.info = {"name": run_config.get("name"), "model": type(model).__name__, "model_config": model_name,
                     "dataset": dataset.stats(),
                     "seed": run_config["seed"], "monitor": run_config["monitor"],
                     "n_parameters": sum(p.numel() for p in model.parameters()),
                     "provenance": provenance(run_config, dataset.fingerprint()), "config": run_config,
                     "load_s": load_s}
        self.results: dict | None = None
        self._fit_t0 = None
        self._fit_s = 0.0

    def on_fit_start(self, trainer, pl_module):
        self._fit_t0 = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        self._fit_s = time.perf_counter() - self._fit_t0
        if not self.test:  # valid only: the test split is never scored (the leaderboard's search trials)
            self.finish(trainer, pl_module, test=None)

    def on_validation_end(self, trainer, pl_module):
        if not self.test and trainer.state.fn == "validate":  # an untrained model, validated once
            self.finish(trainer, pl_module, test=None)

    def on_test_end(self, trainer, pl_module):
        self.finish(trainer, pl_module, test=pl_module.last_metrics["test"])

    def finish(self, trainer, pl_module, test: dict[str, float] | None) -> None:
        """The results; ``test=None`` for a run that never evaluated the test split (``test=false``)."""
        trained = pl_module.model.trainable
        history = self.state.history
        best_epoch = self.state.best_epoch() if trained else None   # the epoch of the checkpoint the test loaded
        valid = next((dict(h) for h in history if h["epoch"] == best_epoch), None)
        if valid is None:  # an untrained model, validated once
            valid = dict(pl_module.last_metrics["valid"])
        valid.pop("epoch", None)
        best_path = trainer.checkpoint_callback.best_model_path if trained and trainer.checkpoint_callback else None
        self.results = {
            **{k: self.info[k] for k in ("name", "model", "model_config", "dataset", "seed")},
            "best_epoch": best_epoch, "best_checkpoint": best_path or None,
            "valid": valid, "test": test, "valid_history": history,
            "n_parameters": self.info["n_parameters"],
            "timings": {"load_s": self.info["load_s"], "fit_s": self._fit_s, **self.state.timings.summary(),
                        "torch_threads": torch.get_num_threads()},
            "provenance": self.info["provenance"],
            "config": self.info["config"],
        }
        splits = (("valid", valid),) + ((("test", test),) if test is not None else ())
        final = {f"final/{split}/{k}": v for split, m in splits for k, v in m.items()}
        for lg in trainer.loggers:
            lg.log_metrics({**final, "final/best_epoch": best_epoch if best_epoch is not None else -1})
            if hasattr(lg, "log_table") and test is not None:  # W&B: the final valid/test table
                lg.log_table(key="final_metrics", columns=["metric", "valid", "test"],
                             data=[[k, valid[k], test[k]] for k in test])
        if trainer.is_global_zero:
            write_json_atomic(self.output_dir / "results.json", self.results)
            label = f"model={model_name}" if (model_name := self.info["model_config"]) else self.results["model"]
            title = (f"{label}{' ' + self.info['name'] if self.info['name'] else ''} on "
                     f"{self.results['dataset']['name']}: metrics at the best valid epoch "
                     f"({best_epoch if best_epoch is not None else 'untrained'}), seed {self.results['seed']}"
                     + ("" if test is not None else " (valid only: test=false)"))
            print("\n" + metrics_table(dict(splits), title=title))
            print(f"results: {self.output_dir / 'results.json'}")
