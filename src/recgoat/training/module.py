"""The LightningModule: owns optimisation, logging and evaluation scheduling for any recommender."""
from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
from torch import Tensor

from recgoat.data import RecDataset
from recgoat.eval import FullRankingEvaluator, MetricSums
from recgoat.models.base import Recommender
from recgoat.nn.ranking import RankingObjective
from recgoat.training.checkpoint import META_KEY, metadata


class RecModule(pl.LightningModule):
    """Trains a :class:`Recommender` on the loss group's objective; evaluates by exact full ranking.

    Validation runs on the valid split every epoch (metrics logged as ``valid/<metric>@K``);
    test runs only when asked (``trainer.test``), normally once, on the best checkpoint.
    Metric sums and user counts are reduced over DDP ranks before dividing, so sharded
    evaluation equals single-process evaluation.

    Args:
        model: the recommender.
        dataset: the data (for masks and held-out sets).
        optimizer: a partial ``torch.optim`` constructor taking the parameters.
        evaluator: the full-ranking evaluator (built on ``dataset.train``).
        run_config: the resolved run config: the module's hyper-parameters (so loggers record it) and
            stored in checkpoints.
        objective: the loss group's ranking objective (``conf/loss/``), applied to every model's rankings.
    """

    def __init__(self, model: Recommender, dataset: RecDataset, optimizer: Callable,
                 evaluator: FullRankingEvaluator, run_config: dict, objective: RankingObjective):
        super().__init__()
        self.save_hyperparameters(run_config)
        self.model = model
        self.objective = objective   # a module: its buffers (item frequencies) follow the device
        self.dataset = dataset
        self.optimizer_factory = optimizer
        self.run_config = run_config
        self.evaluator = evaluator
        self._scorer = None
        self._sums: MetricSums | None = None
        self.last_metrics: dict[str, dict[str, float]] = {}

    # ---- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self.model.on_train_epoch_start(self.current_epoch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model.loss(batch, self.objective)
        n = batch["user"].numel()
        for name, value in out.items():
            if isinstance(value, Tensor) and value.numel() == 1:
                self.log(f"train/{name}", value.detach().float(), on_step=False, on_epoch=True,
                         prog_bar=name == "loss", batch_size=n)
        for name, value in self.model.logged_values().items():  # learned scalars: followed, not optimised
            self.log(f"param/{name}", value.detach().float(), on_step=False, on_epoch=True, batch_size=n)
        return out["loss"]

    def configure_optimizers(self):
        return self.optimizer_factory(params=[p for p in self.model.parameters() if p.requires_grad])

    # ---- evaluation -------------------------------------------------------------------------
    def _start_eval(self) -> None:
        self._scorer = self.model.scorer()
        self._sums = MetricSums(self.evaluator.names, self.device)

    def _eval_step(self, users: Tensor, split: str) -> None:
        self.evaluator.evaluate_users(self._scorer, users, self.dataset.split(split), self._sums)

    def _end_eval(self, split: str) -> dict[str, float]:
        sums = self._sums
        sums.values = self.trainer.strategy.reduce(sums.values, reduce_op="sum")
        metrics = sums.means()
        self._scorer, self._sums = None, None
        # already reduced over ranks; sync_dist averages identical values, which leaves them unchanged
        self.log_dict({f"{split}/{k}": v for k, v in metrics.items()}, sync_dist=True)
        self.last_metrics[split] = metrics
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, users: Tensor, batch_idx: int) -> None:
        self._eval_step(users, "valid")

    def on_validation_epoch_end(self) -> None:
        self._end_eval("valid")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[META_KEY] = metadata(self.run_config, self.dataset)

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, users: Tensor, batch_idx: int) -> None:
        self._eval_step(users, "test")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")
