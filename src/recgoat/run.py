"""Train and evaluate a recommender chosen by Hydra config groups.

    python -m recgoat.run                                  # LightGCN on the synthetic default data
    python -m recgoat.run model=bpr dataset=amazon_baby    # any model x dataset
    python -m recgoat.run -m model=bpr,lightgcn seed=1,2,3 # a sweep

Prints valid and test metrics at the best valid epoch and writes ``results.json`` (metrics, best
epoch, timings, dataset statistics, the resolved config) into the run directory.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from recgoat.training import RecDataModule, RecModule, Timings
from recgoat.utils.config import conf_dir
from recgoat.utils.results import metrics_table, write_json_atomic

log = logging.getLogger("recgoat")


def _instantiate_all(group: DictConfig | None) -> list:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> dict:
    """Run one experiment from a composed config; returns the results dict written to results.json."""
    output_dir = Path(output_dir or HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    t0 = time.perf_counter()
    dataset = instantiate(cfg.dataset)
    load_s = time.perf_counter() - t0
    log.info("%r (loaded in %.1fs)", dataset, load_s)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    model = instantiate(cfg.model)(dataset=dataset)
    n_params = sum(p.numel() for p in model.parameters())
    module = RecModule(model, dataset, optimizer=instantiate(cfg.optimizer), ks=list(cfg.evaluation.ks),
                       eval_user_batch=cfg.evaluation.user_batch, eval_item_chunk=cfg.evaluation.item_chunk,
                       run_config=resolved)
    datamodule = RecDataModule(dataset, batch_size=cfg.datamodule.batch_size,
                               eval_batch_size=cfg.evaluation.user_batch, seed=cfg.seed)

    timings = Timings()
    callbacks = _instantiate_all(cfg.get("callbacks")) + [timings]
    checkpoint = next((c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)), None)
    loggers = _instantiate_all(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(resolved)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    best_epoch = None
    t_fit = time.perf_counter()
    if model.trainable:
        if checkpoint is None:
            raise ValueError("training needs a ModelCheckpoint callback (callbacks.model_checkpoint) to "
                             "select the best epoch on valid")
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best_path = checkpoint.best_model_path
        if not best_path:
            raise RuntimeError("no checkpoint was saved: did validation run? (trainer.limit_val_batches)")
        state = torch.load(best_path, map_location="cpu", weights_only=False)
        best_epoch = int(state["epoch"])
        module.load_state_dict(state["state_dict"])
        history = module.valid_history
        valid = next((h for h in history if h["epoch"] == best_epoch), None)
        valid = {k: v for k, v in valid.items() if k != "epoch"} if valid else None
    else:
        best_path, history, valid = None, [], None
    fit_s = time.perf_counter() - t_fit
    if valid is None:  # untrained models, or a history lost with an old checkpoint
        trainer.validate(module, datamodule=datamodule, verbose=False)
        valid = module.last_metrics["valid"]
    trainer.test(module, datamodule=datamodule, verbose=False)  # once, on the best weights
    test = module.last_metrics["test"]

    results = {
        "name": cfg.get("name"),
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "dataset": dataset.stats(),
        "seed": cfg.seed,
        "best_epoch": best_epoch,
        "best_checkpoint": best_path,
        "valid": valid,
        "test": test,
        "valid_history": history,
        "n_parameters": n_params,
        "timings": {"load_s": load_s, "fit_s": fit_s, **timings.summary()},
        "config": resolved,
    }
    final = {f"final/{split}/{k}": v for split, m in (("valid", valid), ("test", test)) for k, v in m.items()}
    for lg in loggers:
        lg.log_metrics({**final, "final/best_epoch": best_epoch if best_epoch is not None else -1})
        if hasattr(lg, "log_table"):  # W&B: the final valid/test table
            lg.log_table(key="final_metrics", columns=["metric", "valid", "test"],
                         data=[[k, valid[k], test[k]] for k in test])
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()  # flush summary and config now, not at interpreter exit
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "results.json", results)
        title = (f"{results['model']} on {dataset.name}: metrics at the best valid epoch "
                 f"({best_epoch if best_epoch is not None else 'untrained'}), seed {cfg.seed}")
        print("\n" + metrics_table({"valid": valid, "test": test}, title=title))
        print(f"results: {output_dir / 'results.json'}")
    return results


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    results = train(cfg)
    return results["valid"][cfg.evaluation.monitor]  # what sweepers (e.g. Optuna) optimise


if __name__ == "__main__":
    main()
