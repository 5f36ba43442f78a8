"""recgoat benchmarks on Baby-sized data.

    make bench                       # or: python benchmarks/bench.py --models bpr lightgcn recgoat

Uses ../shared/data/amazon-baby when present (19,445 users, 7,050 items), otherwise a synthetic
dataset of the same size; RecGOAT gets random 384-d and 4096-d item modalities and 384-d user
features (timings do not depend on the values). Reports: full-ranking evaluation vs its bound
(score product + top-k), training seconds per epoch per model (RecGOAT's share in OAT and peak
memory), and top-20 recommendation for all users (time, peak memory). Prints markdown tables and
writes logs/bench/bench-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import threading
import time

import numpy as np
import psutil
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile

from recgoat.data import RecDataset, load_split_txt
from recgoat.eval import users_with_items
from recgoat.inference import LoadedModel
from recgoat.recommend import recommend
from recgoat.training import BPRBatches, RecModule, Timings
from recgoat.utils.config import build_model, compose, project_root

# every model is built from its real config (conf/model/<name>.yaml), as `python -m recgoat.run model=<name>` trains it
MODELS = ["bpr", "lightgcn", "vbpr", "freedom", "mgcn", "lgmrec", "recgoat", "recgoat_mgcn"]
MULTIMODAL = {"vbpr", "freedom", "mgcn", "lgmrec", "recgoat", "recgoat_mgcn"}
OAT_SCOPES = ("recgoat.oat_map", "recgoat.oat_w1")
TRAIN_BATCH = 2048


def train_batches(dataset: RecDataset, **loss_overrides: str) -> BPRBatches:
    """An epoch of the run's training batches, with the loss group's negatives (``loss_overrides``: e.g.
    ``{"loss.negatives.n": "16"}``; none: ``conf/loss/bpr.yaml``)."""
    cfg = compose([f"{k}={v}" for k, v in loss_overrides.items()])
    return BPRBatches(dataset, TRAIN_BATCH, seed=0, epoch_fn=lambda: 0,
                      negatives=instantiate(cfg.loss.negatives)(dataset=dataset))


def objective():
    """The default loss group's ranking objective (``conf/loss/bpr.yaml``)."""
    return instantiate(compose([]).loss.objective)


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms), in MB."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.peak_mb = self.peak / 2**20
        self.increase_mb = (self.peak - self.start) / 2**20


def baby_sized():
    path = project_root().parent / "shared" / "data" / "amazon-baby"
    if path.exists():
        return load_split_txt(path), "amazon-baby (real)"
    d = instantiate(compose(["dataset=synthetic", "dataset.n_users=19445", "dataset.n_items=7050",   # Baby's size
                             "dataset.mean_interactions=8.3", "dataset.modalities.text.dim=384",
                             "dataset.modalities.image.dim=4096"]).dataset)
    return d, "synthetic, Baby-sized"


def with_random_features(d: RecDataset) -> RecDataset:
    rng = np.random.default_rng(0)
    if d.item_features and d.user_features is not None:
        return d
    return RecDataset(d.name, d.train, d.valid, d.test,
                      item_features={"text": rng.normal(size=(d.n_items, 384)).astype(np.float32),
                                     "image": rng.normal(size=(d.n_items, 4096)).astype(np.float32)},
                      user_features=rng.normal(size=(d.n_users, 384)).astype(np.float32),
                      user_ids=d.user_ids, item_ids=d.item_ids)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_eval(dataset, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    model = build_model(dataset, ["model=lightgcn"])
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
    evaluator = instantiate(compose(["evaluation.ks=[10,20]"]).evaluation)(train=dataset.train)
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


def bench_train(dataset, name: str, epochs: int, cache_dir: str) -> dict:
    pl.seed_everything(0, verbose=False)
    cfg = compose([f"model={name}", f"paths.cache_dir={cache_dir}", f"datamodule.batch_size={TRAIN_BATCH}"])
    t = time.perf_counter()
    model = instantiate(cfg.model)(dataset=with_random_features(dataset) if name in MULTIMODAL else dataset)
    build_s = time.perf_counter() - t
    module = RecModule(model, dataset, optimizer=instantiate(cfg.optimizer),
                       evaluator=instantiate(cfg.evaluation)(train=dataset.train), run_config={},
                       objective=instantiate(cfg.loss.objective))
    timings = Timings()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timings],
                         use_distributed_sampler=False)
    with PeakRSS() as mem:
        trainer.fit(module, datamodule=instantiate(cfg.datamodule)(dataset=dataset))
    steady = timings.train_epoch_s[1:] or timings.train_epoch_s
    out = {"model": name, "epoch_s": float(np.mean(steady)), "epochs_timed": len(steady), "build_s": build_s,
           "peak_rss_mb": mem.peak_mb}
    if name.startswith("recgoat"):
        out["scope_shares"] = scope_shares(model, dataset)
        out["oat_share"] = sum(out["scope_shares"][k] for k in OAT_SCOPES)
        out["projection_step_s"] = projection_step_s(model)
        out["steps_per_epoch"] = len(train_batches(dataset))
    return out


def projection_step_s(model, repeats: int = 5) -> float:
    """Seconds per step of RecGOAT's input projections alone (every modality's and the user features'
    ``W x + b`` over all rows, forward + weight gradient): work that any exact full-graph step does
    besides LightGCN's, whatever the graph code. LightGCN's step plus this is a floor for RecGOAT's."""
    branches = model.modality_branches
    projections = [(branches.encoders[m].proj, getattr(branches, f"x_{m}")) for m in branches.modalities]
    if model.user_branch is not None:
        projections.append((model.user_branch.encoder.proj, model.user_branch.x))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for proj, x in projections:
            proj(x).sum().backward()
        best = min(best, time.perf_counter() - t)
    model.zero_grad()
    return best


def scope_shares(model, dataset, steps: int = 3) -> dict[str, float]:
    """Share of a training step's wall time (forward + backward + update) spent in each ``recgoat.*``
    profiler scope's forward (user branch, ID branch, item branches, OAT map, OAT W1)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches, ranking = iter(train_batches(dataset)), objective()
    model.train()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loss = model.loss(next(batches), ranking)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    total = time.perf_counter() - t
    shares = {e.key: e.cpu_time_total / 1e6 / total for e in prof.key_averages() if e.key.startswith("recgoat.")}
    return {k: shares.get(k, 0.0) for k in sorted({*shares, *OAT_SCOPES})}


# ops that wait for the device on a GPU: .item(), bool(tensor), and those whose output size depends on values
SYNC_OPS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::_unique2", "aten::unique_dim",
            "aten::masked_select", "aten::argwhere", "aten::repeat_interleave")


class Stepper:
    """Training steps of one model built from its config (``overrides`` of ``python -m recgoat.run``): timed in
    rounds that alternate with other models' (so the same machine noise reaches all), and profiled."""

    def __init__(self, dataset, overrides: list[str], cache_dir: str, device: str = "cpu", warm: int = 3):
        pl.seed_everything(0, verbose=False)
        self.device = torch.device(device)
        self.model = build_model(dataset, [*overrides, f"paths.cache_dir={cache_dir}"]).to(self.device)
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.batches = [{k: v.to(self.device) for k, v in b.items()} for b in train_batches(dataset)]
        self.objective = objective().to(self.device)
        self.model.train()
        self.done = 0
        t = time.perf_counter()
        self.run(warm)                                          # includes any torch.compile
        self.sync()
        self.warm_s = time.perf_counter() - t

    def run(self, steps: int) -> None:
        for _ in range(steps):
            loss = self.model.loss(self.batches[self.done % len(self.batches)], self.objective)["loss"]
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.done += 1

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_s(self, steps: int) -> float:
        self.sync()
        t = time.perf_counter()
        self.run(steps)
        self.sync()
        return (time.perf_counter() - t) / steps

    def profile(self) -> dict:
        """Aten ops of one step (top-level: not counting the ops an op calls) and its host synchronisations."""
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.run(1)
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        top_level = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return {"aten_ops": len(top_level),
                "host_syncs": sum(e.name in SYNC_OPS and not in_optimizer(e) for e in events)}


def in_optimizer(event) -> bool:
    """Whether a profiler event runs inside the optimizer's step: Adam reads its step counters with ``.item()``, one
    per parameter, counters that live on the host (no device synchronisation), the same for every model."""
    while event is not None:
        if event.name.startswith("Optimizer.step"):
            return True
        event = event.cpu_parent
    return False


# the rows of the side-by-side table: RecGOAT as published, its MGCN-view variant, and MGCN
SIDE_BY_SIDE = {
    "recgoat": ["model=recgoat"],
    "recgoat_mgcn": ["model=recgoat_mgcn"],
    "mgcn": ["model=mgcn"],
}


def side_by_side(datasets: list[tuple[str, RecDataset]], steps: int, rounds: int, device: str = "cpu") -> list[dict]:
    """RecGOAT's and MGCN's step on the same data and threads: ``rounds`` rounds of ``steps`` steps, the models
    alternating within each round; a model's step time is its fastest round (the least disturbed)."""
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for label, dataset in datasets:
            steppers = {name: Stepper(dataset, overrides, cache_dir, device)
                        for name, overrides in SIDE_BY_SIDE.items()}
            rounds_s = {name: [] for name in steppers}
            for _ in range(rounds):
                for name, stepper in steppers.items():
                    rounds_s[name].append(stepper.step_s(steps))
            for name, stepper in steppers.items():
                n_steps = len(stepper.batches)
                rows.append({"data": label, "model": name, "epoch_s": min(rounds_s[name]) * n_steps,
                             "epoch_s_median": statistics.median(rounds_s[name]) * n_steps,
                             "epoch_s_rounds": [s * n_steps for s in rounds_s[name]], "steps_per_epoch": n_steps,
                             "warm_s": stepper.warm_s, **stepper.profile()})
    mgcn = {r["data"]: r for r in rows if r["model"] == "mgcn"}
    for r in rows:
        r["ratio"] = r["epoch_s"] / mgcn[r["data"]]["epoch_s"]
        r["ratio_median"] = r["epoch_s_median"] / mgcn[r["data"]]["epoch_s_median"]
        r["ops_ratio"] = r["aten_ops"] / mgcn[r["data"]]["aten_ops"]
    where = f"{device}, {torch.get_num_threads()} threads" if device == "cpu" else device
    print(f"\n## RecGOAT (published) and recgoat_mgcn vs MGCN, side by side (batch {TRAIN_BATCH}, {where}; fastest of "
          f"{rounds} alternating rounds of {steps} steps, after 3 untimed; aten ops of one step and its "
          f".item()/bool() reads outside the optimizer, profiler)")
    print("| data | model | s / epoch | median round (s / epoch) | x MGCN | x MGCN, median rounds "
          "| aten ops / step | x MGCN | host syncs / step | first 3 steps (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['model']} | {r['epoch_s']:.2f} | {r['epoch_s_median']:.2f} | {r['ratio']:.2f} "
              f"| {r['ratio_median']:.2f} | {r['aten_ops']} | {r['ops_ratio']:.2f} | {r['host_syncs']} "
              f"| {r['warm_s']:.1f} |")
    return rows


def ml100k_mm() -> RecDataset | None:
    """ml100k_mm with its built features, or ``None`` (skipped) where they are not built."""
    try:
        return instantiate(compose(["dataset=ml100k_mm"]).dataset)
    except Exception as e:  # the third-party data or its features are absent
        print(f"(ml100k_mm skipped: {e})")
        return None


def bench_recommend(dataset, k: int = 20) -> dict:
    torch.manual_seed(0)
    model = build_model(dataset, ["model=lightgcn"]).eval()
    loaded = LoadedModel(model=model, dataset=dataset, config={}, meta={})
    users = np.arange(dataset.n_users)
    with PeakRSS() as mem:
        t = time.perf_counter()
        n = sum(1 for _ in recommend(loaded, users, k=k, batch_size=1024))
        seconds = time.perf_counter() - t
    return {"users": n, "k": k, "seconds": seconds, "peak_rss_increase_mb": mem.increase_mb,
            "batch_size": 1024}


def bench_negatives(dataset: RecDataset, counts=(1, 16, 128)) -> list[dict]:
    """Seconds to draw one epoch of training batches with ``n`` negatives per pair (uniform and popularity; the
    whole epoch's negatives at once, redrawn where they hit a training item)."""
    rows = []
    for distribution in ("uniform", "popularity"):
        for n in counts:
            t = time.perf_counter()
            steps = sum(1 for _ in train_batches(dataset, **{"loss.negatives.n": str(n),
                                                             "loss.negatives.distribution": distribution}))
            rows.append({"distribution": distribution, "negatives": n, "epoch_s": time.perf_counter() - t,
                         "steps": steps})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model and round (side-by-side table)")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (side-by-side table): many short "
                        "ones, so that each model meets some quiet stretch of a shared machine")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--only-side-by-side", action="store_true", help="just RecGOAT vs MGCN")
    parser.add_argument("--device", default="cpu", help="of the side-by-side table (cuda: benchmarks/gpu.sh)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    dataset, source = baby_sized()
    print(f"data: {source}: {dataset.n_users} users, {dataset.n_items} items, {dataset.train.nnz} train pairs")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    ml = ml100k_mm()
    pairs = side_by_side([("Baby-sized", with_random_features(dataset)),
                          *([("ml100k_mm", ml)] if ml is not None else [])], args.steps, args.rounds, args.device)
    if args.only_side_by_side:
        return
    ev = bench_eval(dataset)
    print("\n## Full-ranking evaluation (all users with test items, Recall/NDCG/Precision/MAP/Hit @10,20)")
    print("| bound: score product + top-20 (s) | recgoat evaluator (s) | ratio |")
    print("|---|---|---|")
    print(f"| {ev['bound_s']:.3f} | {ev['evaluate_s']:.3f} | {ev['ratio']:.2f} |")
    with tempfile.TemporaryDirectory() as cache_dir:
        rows = [bench_train(dataset, m, args.epochs, cache_dir) for m in args.models]
    base = next((r["epoch_s"] for r in rows if r["model"] == "lightgcn"), None)
    print(f"\n## Training seconds per epoch (batch {TRAIN_BATCH}, d=64, Adam; steady-state epochs)")
    print("| model | s / epoch | x LightGCN | model build s | peak RSS MB | OAT share of step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['epoch_s'] / base:.1f}" if base else "-"
        share = f"{100 * r['oat_share']:.1f}%" if "oat_share" in r else "-"
        print(f"| {r['model']} | {r['epoch_s']:.2f} | {ratio} | {r['build_s']:.1f} | {r['peak_rss_mb']:.0f} "
              f"| {share} |")
    for r in rows:
        if "projection_step_s" in r and base:
            floor = base + r["steps_per_epoch"] * r["projection_step_s"]
            print(f"\n{r['model']}: floor of an exact step on this machine = LightGCN's epoch + the input projections "
                  f"({1000 * r['projection_step_s']:.0f} ms x {r['steps_per_epoch']} steps) = {floor:.2f} s/epoch "
                  f"({floor / base:.1f}x LightGCN), before any graph attention, alignment or fusion")
        if "scope_shares" in r:
            parts = ", ".join(f"{k.removeprefix('recgoat.')} {100 * v:.1f}%" for k, v in r["scope_shares"].items())
            print(f"\n{r['model']}: share of a training step's wall time in each forward scope: {parts}")
    negatives = bench_negatives(dataset)
    print(f"\n## Drawing an epoch of batches with n negatives per pair ({dataset.train.nnz} pairs)")
    print("| negatives | uniform s / epoch | popularity s / epoch |")
    print("|---|---|---|")
    for n in sorted({r["negatives"] for r in negatives}):
        by = {r["distribution"]: r["epoch_s"] for r in negatives if r["negatives"] == n}
        print(f"| {n} | {by['uniform']:.2f} | {by['popularity']:.2f} |")
    rec = bench_recommend(dataset)
    print("\n## recommend: top-20 for every user (LightGCN, batch 1024 users)")
    print("| users | seconds | peak RSS increase MB |")
    print("|---|---|---|")
    print(f"| {rec['users']} | {rec['seconds']:.2f} | {rec['peak_rss_increase_mb']:.0f} |")
    print(f"\npeak RSS: {peak_rss_mb():.0f} MB")
    out = project_root() / "logs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"data": source, "eval": ev, "train": rows, "negatives": negatives, "recommend": rec,
                                "side_by_side": pairs, "peak_rss_mb": peak_rss_mb(),
                                "torch": torch.__version__, "threads": torch.get_num_threads()}, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
