"""recgoat benchmarks on Baby-sized data: evaluation vs its lower bound, training seconds per epoch.

    make bench                       # or: python benchmarks/bench.py --models bpr lightgcn

Uses ../shared/data/amazon-baby when present (19,445 users, 7,050 items), otherwise a synthetic
dataset of the same size. Prints a markdown table and writes logs/bench/bench-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import pytorch_lightning as pl
import torch

from recgoat.data import load_split_txt, make_synthetic
from recgoat.eval import FullRankingEvaluator, users_with_items
from recgoat.models import BPRMF, LightGCN, MostPop
from recgoat.training import RecDataModule, RecModule, Timings
from recgoat.utils.config import project_root

MODELS = {"mostpop": MostPop, "bpr": BPRMF, "lightgcn": LightGCN}


def baby_sized():
    path = project_root().parent / "shared" / "data" / "amazon-baby"
    if path.exists():
        return load_split_txt(path), "amazon-baby (real)"
    d = make_synthetic(n_users=19445, n_items=7050, mean_interactions=8.3, min_interactions=5, seed=0,
                       modalities={"text": {"dim": 384, "noise": 0.5}, "image": {"dim": 4096, "noise": 1.0}})
    return d, "synthetic, Baby-sized"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_eval(dataset, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    model = LightGCN(dataset, embedding_dim=64)
    scorer = model.scorer()
    users = torch.as_tensor(users_with_items(dataset.test))
    k = 20
    # the bound: bare score product + top-k over all users, same batch size
    bound = []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in range(0, len(users), 2048):
            torch.topk(scorer.user_emb[users[b:b + 2048]] @ scorer.item_emb.T, k, dim=1)
        bound.append(time.perf_counter() - t)
    evaluator = FullRankingEvaluator(dataset.train, ks=[10, 20], user_batch=2048)
    full = []
    for _ in range(repeats):
        t = time.perf_counter()
        evaluator.evaluate(scorer, dataset.test)
        full.append(time.perf_counter() - t)
    t = time.perf_counter()
    model.scorer()
    propagate = time.perf_counter() - t
    return {"users": len(users), "items": int(dataset.n_items), "bound_s": min(bound),
            "evaluate_s": min(full), "ratio": min(full) / min(bound), "lightgcn_final_embeddings_s": propagate}


def bench_train(dataset, name: str, epochs: int = 3) -> dict:
    pl.seed_everything(0, verbose=False)
    model = MODELS[name](dataset)
    module = RecModule(model, dataset, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    timings = Timings()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timings],
                         use_distributed_sampler=False)
    trainer.fit(module, datamodule=RecDataModule(dataset, batch_size=2048))
    steady = timings.train_epoch_s[1:] or timings.train_epoch_s
    return {"model": name, "epoch_s": float(np.mean(steady)), "epochs_timed": len(steady)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bpr", "lightgcn"],
                        choices=[m for m in MODELS if m != "mostpop"])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    dataset, source = baby_sized()
    print(f"data: {source}: {dataset.n_users} users, {dataset.n_items} items, {dataset.train.nnz} train pairs")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    ev = bench_eval(dataset)
    print("\n## Full-ranking evaluation (all users with test items, Recall/NDCG/Precision/MAP/Hit @10,20)")
    print("| bound: score product + top-20 (s) | recgoat evaluator (s) | ratio (target <= 1.5) |")
    print("|---|---|---|")
    print(f"| {ev['bound_s']:.3f} | {ev['evaluate_s']:.3f} | {ev['ratio']:.2f} |")
    rows = [bench_train(dataset, m, args.epochs) for m in args.models]
    print("\n## Training seconds per epoch (batch 2048, d=64, Adam)")
    print("| model | s / epoch |")
    print("|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['epoch_s']:.2f} |")
    print(f"\npeak RSS: {peak_rss_mb():.0f} MB")
    out = project_root() / "logs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"data": source, "eval": ev, "train": rows, "peak_rss_mb": peak_rss_mb(),
                                "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
