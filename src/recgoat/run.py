"""Train and evaluate a recommender chosen by Hydra config groups.

    python -m recgoat.run                                  # LightGCN on the synthetic default data
    python -m recgoat.run model=bpr dataset=amazon_baby    # any model x dataset
    python -m recgoat.run -m model=bpr,lightgcn seed=1,2,3 # a sweep
    python -m recgoat.run debug=fast                       # a smoke run in seconds
    python -m recgoat.run resume=logs/train/runs/<time>    # continue a killed run in its folder

Prints valid and test metrics at the best valid epoch and writes ``results.json`` (metrics, best
epoch, timings, dataset statistics, the resolved config) into the run directory.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recgoat.training import RecModule, RunSummary, Timings
from recgoat.training.run_folder import RunFolder, RunFolderError, RunState, claim
from recgoat.utils.config import (
    ConfigError,
    apply_experiment,
    check_root_keys,
    check_targets,
    conf_dir,
    threads_per_job,
    typed,
)

log = logging.getLogger("recgoat")


def instantiate_group(group: DictConfig | None) -> list:
    """The components of a config group holding several (callbacks, loggers), in their order."""
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def task_wrapper(task):
    """Runs a task so that a failure still closes a W&B run (marked failed) instead of leaving it open, e.g.
    when one job of a sweep raises and the next one starts in the same process."""
    @functools.wraps(task)
    def wrapped(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        finally:
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)
    return wrapped


def check_run(cfg: DictConfig, dataset, evaluator, model) -> None:
    """What would otherwise fail late (after training) or deep (in Lightning or torch), said up front."""
    if cfg.monitor not in evaluator.names:
        raise ValueError(f"monitor={cfg.monitor} is not among the evaluated metrics {evaluator.names}; add its cut-off "
                         f"to evaluation.ks (now {list(cfg.evaluation.ks)}) or set monitor to one of them")
    max_epochs = cfg.trainer.get("max_epochs")  # typed at start-up
    if model.trainable and max_epochs is not None and max_epochs < 1:
        raise ValueError(f"trainer.max_epochs must be >= 1 to train {type(model).__name__} (got {max_epochs}); "
                         f"the best epoch is selected on valid, so at least one epoch must run")
    if cfg.get("ckpt_path") and cfg.get("resume") is None:  # a resume has read it (RunFolder.accept)
        from recgoat.training.checkpoint import check_start, read_checkpoint
        # a missing, empty or truncated file, other data or another model: a message naming it, before any work
        check_start(cfg.ckpt_path, read_checkpoint(cfg.ckpt_path), dataset, model)


@task_wrapper
def train(cfg: DictConfig, output_dir: str | Path | None = None, model_name: str | None = None) -> dict:
    """Run one experiment from a composed config (``resume=`` set: continue the run in that folder); returns the
    results dict written to results.json. ``model_name``: the model group's choice (``recgoat``, ``recgoat_mgcn``,
    ...), for messages and the results (a resume reads the run's own)."""
    output_dir = Path(output_dir or HydraConfig.get().runtime.output_dir)
    with claim(output_dir, cfg, model_name) as folder:   # this process's folder; nothing written until accepted
        return train_in(folder)


def train_in(folder: RunFolder) -> dict:
    cfg, model_name = folder.config, folder.model_name
    apply_experiment(cfg, model_name)
    try:
        check_targets(cfg)
    except ConfigError as e:
        raise ConfigError(f"{e}{debug_hint(str(e))}") from None
    check_root_keys(cfg)
    typed(cfg, "seed", int)   # the root's own value (check_targets checks every component's)
    set_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    t0 = time.perf_counter()
    dataset = load_dataset(cfg)
    load_s = time.perf_counter() - t0
    folder.accept(dataset)   # the data is the checkpoint's (a resume); the record and the log are written
    log.info("%r (loaded in %.1fs)", dataset, load_s)
    model = instantiate(cfg.model)(dataset=dataset)
    log.info("model=%s (%s)", model_name or "?", type(model).__name__)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    evaluator = instantiate(cfg.evaluation)(train=dataset.train)
    check_run(cfg, dataset, evaluator, model)
    module = RecModule(model, dataset, optimizer=instantiate(cfg.optimizer), evaluator=evaluator,
                       run_config=resolved, objective=ranking_objective(cfg, dataset))
    datamodule = instantiate(cfg.datamodule)(dataset=dataset)

    state = RunState(cfg.monitor, Timings())
    summary = RunSummary(folder.path, state, run_config=resolved, dataset=dataset, model=model, load_s=load_s,
                         test=cfg.test, model_name=model_name)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), state,
                                                              state.timings, summary],
                                      logger=instantiate_group(cfg.get("logger")) or False)
    if model.trainable:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    else:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if cfg.test:  # once, on the best epoch
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if model.trainable else None, verbose=False)
    return summary.results


def debug_hint(message: str) -> str:
    """debug=tiny and debug=fast set keys of their own data (dataset.n_users, ...): with another dataset= those keys
    are unknown to it, and the message says where they came from."""
    debug = HydraConfig.get().runtime.choices.get("debug") if HydraConfig.initialized() else None
    if debug in (None, "null") or not message.startswith("dataset: unknown key"):
        return ""
    return (f"; debug={debug} brought these keys (its own data's, conf/debug/{debug}.yaml): to run your data at its "
            f"settings, drop debug= and give them yourself (e.g. trainer.max_epochs=3)")


def set_threads(cfg: DictConfig) -> None:
    """``threads`` torch threads, or in a parallel multirun (a launcher with ``n_jobs``) the cores shared among its
    jobs; ``OMP_NUM_THREADS``, where set, is the user's choice and kept."""
    jobs = 1
    if HydraConfig.initialized() and "OMP_NUM_THREADS" not in os.environ:
        jobs = HydraConfig.get().launcher.get("n_jobs") or 1
        jobs = len(os.sched_getaffinity(0)) if jobs < 0 else jobs    # joblib's -1: one job per core
    threads = threads_per_job(jobs, typed(cfg, "threads", int, optional=True))
    if threads is not None:
        torch.set_num_threads(threads)


def ranking_objective(cfg: DictConfig, dataset):
    """The loss group's objective; a partial one (it needs the data: item frequencies) is given the dataset."""
    objective = instantiate(cfg.loss.objective)
    return objective(dataset=dataset) if isinstance(objective, functools.partial) else objective


def load_dataset(cfg: DictConfig):
    try:
        return instantiate(cfg.dataset)
    except Exception as e:
        if cfg.get("resume") is None or cfg.dataset.get("path") is None:
            raise
        raise RunFolderError(f"resume={cfg.resume}: the run's data could not be loaded from dataset.path="
                             f"{cfg.dataset.path!r} (a relative path is read from the current directory, "
                             f"{Path.cwd()}): {e.__cause__ or e}; say where it is now with +dataset.path=<path> (it "
                             f"must have the data fingerprint the checkpoint recorded)") from e


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    results = train(cfg, model_name=HydraConfig.get().runtime.choices.get("model"))
    return results["valid"][results["config"]["monitor"]]  # what sweepers (e.g. Optuna) optimise; a resume's own


if __name__ == "__main__":
    main()
