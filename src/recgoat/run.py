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
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recgoat.training import RecModule, RunSummary, Timings
from recgoat.training.resume import (
    ResumeError,
    check_resume_data,
    refuse_other_run_dir,
    refuse_used_run_dir,
    resume_config,
    saved_model_choice,
    truncate_metrics,
    write_resume_record,
)
from recgoat.utils.config import apply_experiment, check_root_keys, check_targets, conf_dir, typed

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


def check_run(cfg: DictConfig, evaluator, model) -> None:
    """What would otherwise fail late (after training) or deep (in Lightning or torch), said up front."""
    if cfg.monitor not in evaluator.names:
        raise ValueError(f"monitor={cfg.monitor} is not among the evaluated metrics {evaluator.names}; add its cut-off "
                         f"to evaluation.ks (now {list(cfg.evaluation.ks)}) or set monitor to one of them")
    max_epochs = cfg.trainer.get("max_epochs")  # typed at start-up
    if model.trainable and max_epochs is not None and max_epochs < 1:
        raise ValueError(f"trainer.max_epochs must be >= 1 to train {type(model).__name__} (got {max_epochs}); "
                         f"the best epoch is selected on valid, so at least one epoch must run")
    if cfg.get("ckpt_path") and cfg.get("resume") is None:  # a resume has read it (check_resume_data)
        from recgoat.training.checkpoint import read_checkpoint
        read_checkpoint(cfg.ckpt_path)  # a missing, empty or truncated file: a message naming it, before any work


@task_wrapper
def train(cfg: DictConfig, output_dir: str | Path | None = None, resume_overrides: list[str] = (),
          model_name: str | None = None) -> dict:
    """Run one experiment from a composed config; returns the results dict written to results.json.
    ``resume_overrides``: the command line of a resume, recorded in the run folder once the resume is accepted.
    ``model_name``: the model group's choice (``recgoat``, ``recgoat_mgcn``, ...), for messages and the results."""
    output_dir = Path(output_dir or HydraConfig.get().runtime.output_dir)
    apply_experiment(cfg, model_name)
    check_targets(cfg)
    check_root_keys(cfg)
    for key, kind in (("seed", int), ("optimizer.lr", float), ("datamodule.batch_size", int)):
        typed(cfg, key, kind)
    typed(cfg, "trainer.max_epochs", int, optional=True)
    resuming = cfg.get("resume") is not None
    if not resuming:
        refuse_used_run_dir(output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    t0 = time.perf_counter()
    try:
        dataset = instantiate(cfg.dataset)
    except Exception as e:
        if not resuming or cfg.dataset.get("path") is None:
            raise
        raise ResumeError(f"resume={cfg.resume}: the run's data could not be loaded from dataset.path="
                          f"{cfg.dataset.path!r} (a relative path is read from the current directory, {Path.cwd()}): "
                          f"{e.__cause__ or e}; say where it is now with +dataset.path=<path> (it must have the data "
                          f"fingerprint "
                          f"the checkpoint recorded)") from e
    load_s = time.perf_counter() - t0
    log.info("%r (loaded in %.1fs)", dataset, load_s)
    if resuming:  # the data the checkpoint was trained on, or nothing in the run folder is touched
        truncate_metrics(output_dir / "csv" / "metrics.csv", check_resume_data(cfg.ckpt_path, dataset))
        write_resume_record(output_dir, cfg, resume_overrides)
    model = instantiate(cfg.model)(dataset=dataset)
    log.info("model=%s (%s)", model_name or "?", type(model).__name__)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    evaluator = instantiate(cfg.evaluation)(train=dataset.train)
    check_run(cfg, evaluator, model)
    module = RecModule(model, dataset, optimizer=instantiate(cfg.optimizer), evaluator=evaluator,
                       run_config=resolved)
    datamodule = instantiate(cfg.datamodule)(dataset=dataset)

    timings = Timings()
    summary = RunSummary(output_dir, timings, run_config=resolved, dataset=dataset, model=model, load_s=load_s,
                         test=cfg.test, model_name=model_name)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=[*instantiate_group(cfg.get("callbacks")), timings,
                                                              summary],
                                      logger=instantiate_group(cfg.get("logger")) or False)
    if model.trainable:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    else:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    if cfg.test:  # once, on the best epoch
        trainer.test(module, datamodule=datamodule, ckpt_path="best" if model.trainable else None, verbose=False)
    return summary.results


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    overrides = list(HydraConfig.get().overrides.task)
    if cfg.get("resume") is not None:
        refuse_other_run_dir(list(HydraConfig.get().overrides.hydra))
        cfg = resume_config(cfg, overrides)
        return train(cfg, resume_overrides=overrides, model_name=saved_model_choice(cfg.resume))["valid"][cfg.monitor]
    model_name = HydraConfig.get().runtime.choices.get("model")
    return train(cfg, model_name=model_name)["valid"][cfg.monitor]  # what sweepers (e.g. Optuna) optimise


if __name__ == "__main__":
    main()
