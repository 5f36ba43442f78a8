"""The loss group: each objective against its equation written out in float64, the negatives' sampler (never a
training item; popularity in proportion to frequency ** power, with the log-probabilities the correction uses), and
every objective training every kind of model end to end."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from recgoat.nn.ranking import BCE, BPR, SampledSoftmax
from recgoat.utils.config import compose
from tests.helpers import QUIET, TINY_DATA, run_in_process

CONF = Path(__file__).resolve().parents[1] / "conf"


def vectors(b=6, n=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, p, neg = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((b, d), (b, d), (b, n, d)))
    return u, p, neg


def dot(a, b):
    return float(sum(x * y for x, y in zip(a.tolist(), b.tolist(), strict=True)))


def softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def test_bpr_and_bce_equal_their_equations_for_one_and_many_negatives():
    u, p, n = vectors()
    B, N = n.shape[:2]
    bpr = sum(softplus(dot(u[b], n[b, j]) - dot(u[b], p[b])) for b in range(B) for j in range(N)) / (B * N)
    assert BPR()(u, p, n, {}).item() == pytest.approx(bpr, rel=1e-12)
    one = sum(softplus(dot(u[b], n[b, 0]) - dot(u[b], p[b])) for b in range(B)) / B
    assert BPR()(u, p, n[:, 0], {}).item() == pytest.approx(one, rel=1e-12)          # [B, d]: one negative each
    bce = sum(softplus(-dot(u[b], p[b])) + sum(softplus(dot(u[b], n[b, j])) for j in range(N)) / N
              for b in range(B)) / B
    assert BCE()(u, p, n, {}).item() == pytest.approx(bce, rel=1e-12)


def test_sampled_softmax_equals_its_equation_with_the_log_q_correction_and_in_batch_negatives(tiny_synthetic):
    u, p, n = vectors(b=5, n=3)
    items = torch.tensor([4, 7, 4, 9, 2])                 # users 0 and 2 share a positive: not each other's negative
    neg_logq = torch.log(torch.rand(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    tau = 0.3
    counts = np.bincount(tiny_synthetic.train.indices, minlength=tiny_synthetic.n_items)
    share = np.log(np.maximum(counts, 1) / counts.sum())
    for in_batch in (False, True):
        for logq in (None, neg_logq):
            expected = 0.0
            for b in range(5):
                logits = [dot(u[b], p[b]) / tau]
                logits += [dot(u[b], n[b, j]) / tau - (0.0 if logq is None else logq[b, j].item()) for j in range(3)]
                if in_batch:
                    logits += [dot(u[b], p[o]) / tau - float(np.float32(share[items[o]]))
                               for o in range(5) if items[o] != items[b]]
                top = max(logits)
                expected += top + math.log(sum(math.exp(x - top) for x in logits)) - logits[0]
            objective = SampledSoftmax(tiny_synthetic, tau=tau, in_batch=in_batch).double()
            batch = {"pos": items, **({} if logq is None else {"neg_logq": logq})}
            assert objective(u, p, n, batch).item() == pytest.approx(expected / 5, rel=1e-9), (in_batch, logq)


def test_negatives_are_never_training_items_and_popularity_follows_frequency_to_the_power(tiny_synthetic):
    d = tiny_synthetic
    users = torch.from_numpy(d.train_pairs()[0]).repeat(40)
    dense = torch.from_numpy(d.train.toarray()).bool()
    for distribution in ("uniform", "popularity"):
        cfg = compose(["loss=softmax", "loss.negatives.n=8", f"loss.negatives.distribution={distribution}"])
        sampler = instantiate(cfg.loss.negatives)(dataset=d)
        neg = sampler.sample(users, torch.Generator().manual_seed(0))
        assert neg.shape == (len(users), 8) and not dense[users.unsqueeze(1), neg].any()
        log_q = sampler.log_q(neg)
        if distribution == "uniform":
            assert log_q is None                                        # a constant: no correction
            continue
        counts = np.bincount(d.train.indices, minlength=d.n_items) ** 0.75
        q = counts / counts.sum()
        torch.testing.assert_close(log_q, torch.from_numpy(np.log(q[neg.numpy()])).float())
        # drawn in proportion to q, then redrawn where a user's training item was hit: per item, the share of the
        # draws is q's share among the items a user may get, averaged over the pairs (checked on the popular items)
        allowed = ~dense[users]                                          # [P, items]
        expected = (allowed * torch.from_numpy(q)).div((allowed * torch.from_numpy(q)).sum(1, keepdim=True)).mean(0)
        seen = torch.bincount(neg.reshape(-1), minlength=d.n_items).double() / neg.numel()
        top = torch.argsort(expected, descending=True)[:10]
        torch.testing.assert_close(seen[top], expected[top], rtol=0.08, atol=0.002)


@pytest.mark.parametrize("loss", sorted(p.stem for p in (CONF / "loss").glob("*.yaml")))
def test_every_loss_config_composes_and_instantiates(loss, tiny_synthetic):
    cfg = compose([f"loss={loss}"])
    objective = instantiate(cfg.loss.objective)
    objective = objective(dataset=tiny_synthetic) if callable(objective) and not hasattr(objective, "name") \
        else objective
    assert objective.name == loss
    assert instantiate(cfg.loss.negatives)(dataset=tiny_synthetic).n == cfg.loss.negatives.n


@pytest.mark.parametrize("model, loss", [
    ("lightgcn", ["loss=softmax", "loss.negatives.n=8"]),
    ("lightgcn", ["loss=softmax", "loss.objective.in_batch=true", "loss.negatives.distribution=popularity"]),
    ("recgoat", ["loss=softmax", "loss.negatives.n=4"]),
    ("freedom", ["loss=bce"]),
    ("mgcn", ["loss=bpr", "loss.negatives.n=3"]),
])
def test_every_objective_trains_models_of_every_kind(tmp_path, model, loss):
    res = run_in_process([f"model={model}", *loss, *TINY_DATA, *QUIET, "logger=csv", "trainer.max_epochs=2"],
                         tmp_path)
    name = res["config"]["loss"]["objective"]["_target_"].rsplit(".", 1)[1]
    key = {"SampledSoftmax": "softmax", "BCE": "bce", "BPR": "bpr"}[name]
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(f"train/{key}")]
    assert len(rows) == 2 and all(math.isfinite(float(r[f"train/{key}"])) for r in rows)
    assert 0.0 < res["valid"]["recall@20"] <= 1.0
