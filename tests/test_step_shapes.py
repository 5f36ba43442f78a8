"""A training step has no data-dependent shapes: no op whose output size depends on tensor values (``unique``,
``nonzero``, boolean masks, ...) and no host read of a tensor value; on a GPU each of them waits for the device.
Checked under a dispatch mode on the CPU, for every model; ``benchmarks/gpu.sh`` checks the same on a GPU with
``torch.cuda.set_sync_debug_mode("error")``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch.utils._python_dispatch import TorchDispatchMode

from recgoat.utils.config import apply_experiment, compose_run
from tests.helpers import TINY_DATA, bpr, bpr_batches

CONF = Path(__file__).resolve().parents[1] / "conf"
aten = torch.ops.aten
# output size set by the values of an input, or a value read by the host
DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                  aten.unique_consecutive.default, aten._unique.default, aten.argwhere.default,
                  aten.repeat_interleave.Tensor, aten._local_scalar_dense.default, aten.is_nonzero.default}


class DataDependentOps(TorchDispatchMode):
    """Records every op of :data:`DATA_DEPENDENT`, and indexing with a boolean mask."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        masked = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        if func in DATA_DEPENDENT or masked:
            self.seen.append(str(func))
        return func(*args, **kwargs)


def test_the_detector_sees_what_it_looks_for():
    x = torch.tensor([3, 1, 3, 0])
    with DataDependentOps() as mode:
        torch.unique(x), x.nonzero(), x[x > 0], float(x.sum()), x.index_select(0, x)
    assert mode.seen == ["aten._unique2.default", "aten.nonzero.default", "aten.index.Tensor",
                         "aten._local_scalar_dense.default"]


@pytest.mark.parametrize("model", [p.stem for p in sorted((CONF / "model").glob("*.yaml"))
                                   if "authors" not in p.stem and p.stem not in ("recgoat_spec", "mostpop")])
def test_a_training_step_has_no_data_dependent_shapes(model):
    cfg, name = compose_run([f"model={model}", *TINY_DATA])
    apply_experiment(cfg, name)
    torch.manual_seed(0)
    dataset = instantiate(cfg.dataset)
    rec = instantiate(cfg.model)(dataset=dataset)
    batches = iter(bpr_batches(dataset, batch_size=64, seed=0, epoch_fn=lambda: 0))
    for model_epoch_batch in range(2):   # the first step may start warm state (the OT map's potentials)
        rec.on_train_epoch_start(0)
        batch = next(batches)
        with DataDependentOps() as mode:
            rec.loss(batch, bpr())["loss"].backward()
        if model_epoch_batch == 1:
            assert mode.seen == [], f"model={model}: {sorted(set(mode.seen))}"
