"""The GPU path (``-m gpu``; every test skips without CUDA): ``trainer=gpu`` for every model, training steps that never
wait for the device (``set_sync_debug_mode("error")``), RecGOAT's forward and
evaluation on the GPU against the CPU, and mixed precision. Run by benchmarks/gpu.sh on a GPU machine."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import QUIET, TINY_DATA, bpr, bpr_batches, make_evaluator, run_in_process

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh)")]

MODELS = ["lightgcn", "vbpr", "freedom", "mgcn", "lgmrec", "recgoat", "recgoat_mgcn"]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_and_evaluates_with_trainer_gpu(tmp_path, model):
    res = run_in_process([f"model={model}", "trainer=gpu", *TINY_DATA, *QUIET, "trainer.max_epochs=3"], tmp_path)
    assert res["config"]["trainer"]["accelerator"] == "gpu"
    assert 0.0 < res["test"]["recall@20"] <= 1.0 and len(res["valid_history"]) == 3


def test_recgoat_on_the_gpu_computes_what_it_computes_on_the_cpu(tiny_synthetic, tmp_path):
    from tests.test_recgoat import small_recgoat

    cpu = small_recgoat(tiny_synthetic, tmp_path).eval()
    gpu = small_recgoat(tiny_synthetic, tmp_path).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    with torch.no_grad():
        a, b = cpu.representations(), gpu.representations()
    torch.testing.assert_close(b["user"].cpu(), a["user"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b["item"].cpu(), a["item"], atol=1e-4, rtol=1e-4)
    evaluator = make_evaluator(tiny_synthetic.train, ks=[10, 20])
    on_cpu = evaluator.evaluate(cpu.scorer(), tiny_synthetic.test)
    on_gpu = evaluator.evaluate(gpu.scorer(), tiny_synthetic.test, device="cuda")
    assert on_gpu == pytest.approx(on_cpu, abs=0.02)   # near-ties may rank differently across devices
    batch = next(iter(bpr_batches(tiny_synthetic, batch_size=64, seed=0, epoch_fn=lambda: 0)))
    batch = {k: v.cuda() for k, v in batch.items()}
    gpu.train()
    loss = gpu.loss(batch, bpr())["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in gpu.parameters() if p.requires_grad)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("model", ["lightgcn", "recgoat"])
def test_mixed_precision_trains_to_the_accuracy_of_full_precision(tmp_path, model, precision):
    args = [f"model={model}", "trainer=gpu", *TINY_DATA, *QUIET, "trainer.max_epochs=5", "seed=1"]
    full = run_in_process(args, tmp_path / "fp32")
    mixed = run_in_process([*args, f"+trainer.precision={precision}"], tmp_path / precision)
    assert mixed["config"]["trainer"]["precision"] == precision
    assert mixed["valid"]["recall@20"] == pytest.approx(full["valid"]["recall@20"], abs=0.05)


@pytest.mark.parametrize("model", MODELS)
def test_a_training_step_on_the_gpu_never_waits_for_the_device(model):
    from hydra.utils import instantiate

    from recgoat.utils.config import apply_experiment, compose_run
    cfg, name = compose_run([f"model={model}", *TINY_DATA])
    apply_experiment(cfg, name)
    dataset = instantiate(cfg.dataset)
    rec = instantiate(cfg.model)(dataset=dataset).cuda()
    batches = iter(bpr_batches(dataset, batch_size=64, seed=0, epoch_fn=lambda: 0))
    for step in range(2):   # the first step may start warm state (the OT map's potentials, solved to tol)
        rec.on_train_epoch_start(0)
        batch = {k: v.cuda() for k, v in next(batches).items()}
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step == 1 else "default")
        try:
            rec.loss(batch, bpr())["loss"].backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
