"""Cost vs data size: LightGCN and RecGOAT on synthetic data with the statistics of Amazon Baby, Sports and
Electronics (MMRec's 5-core versions), 384-d text, 4096-d image and 384-d user features.

    make bench-scale                                    # all three sizes, both models, exact kNN graphs
    python benchmarks/scale.py --sizes baby electronics --knn ivf --knn-recall
    python benchmarks/scale.py --device cuda            # benchmarks/gpu.sh

Each (size, model) cell runs in a process of its own, so its peak RSS is its own. A cell measures: data
generation, RecGOAT's kNN graphs (item-item per modality, user-user; chunked, never a dense n x n; with
``--knn-recall`` also the approximate IVF search's recall@k against the exact lists), model build (graphs
read from the cell's cache), seconds per training step, averaged over ``--steps`` steps after one warm-up
step and extrapolated to an epoch (steps per epoch x mean step: stated as extrapolated in the table),
the final embeddings and the exact full-ranking evaluation of every test user, peak RSS, and for RecGOAT
the share of a step in each of its forward scopes (the profile). Writes logs/bench/scale-<time>.json,
.md (the table) and .png (log-log cost vs size).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import objective, peak_rss_mb, scope_shares, train_batches  # noqa: E402  (the Baby bench's helpers)

SIZES = {  # users, items, interactions of MMRec's 5-core versions (docs/method.md)
    "baby": (19_445, 7_050, 160_792),
    "sports": (35_598, 18_357, 296_337),
    "electronics": (192_403, 63_001, 1_689_188),
}
FEATURE_DIMS = {"text": 384, "image": 4096}
USER_DIM = 384
TRAIN_BATCH = 2048


def scaled_dataset(n_users: int, n_items: int, n_interactions: int, seed: int = 0, with_features: bool = True):
    """A RecDataset of about ``n_interactions`` distinct pairs: per-user counts geometric with the data's mean and
    a minimum of 5 (a 5-core), items drawn by a Zipf-like popularity (exponent 0.7, shuffled), the protocol's
    8:1:1 split; low-rank clustered features (the kNN searches see structure, as on real features)."""
    from recgoat.data.splitting import assemble_splits, split_per_user

    rng = np.random.default_rng(seed)
    mean = n_interactions / n_users
    counts = np.minimum(4 + rng.geometric(1.0 / (mean - 4.0), size=n_users), n_items // 2)
    popularity = rng.permutation((np.arange(n_items) + 1.0) ** -0.7)
    popularity /= popularity.sum()
    users = np.repeat(np.arange(n_users), counts)
    items = rng.choice(n_items, size=len(users), p=popularity)
    for _ in range(5):  # redraw the duplicates of a user's items, so users keep their counts
        keys = users * n_items + items
        _, first = np.unique(keys, return_index=True)
        dup = np.setdiff1d(np.arange(len(keys)), first, assume_unique=True)
        if not len(dup):
            break
        items[dup] = rng.choice(n_items, size=len(dup), p=popularity)
    keys = np.unique(users * n_items + items)
    users, items = keys // n_items, keys % n_items
    labels = split_per_user(users, seed=seed)
    item_features, user_features = {}, None
    if with_features:
        def low_rank(n, d, factors=32, clusters=64):
            centres = rng.standard_normal((clusters, factors), dtype=np.float32)
            latent = centres[rng.integers(clusters, size=n)] + rng.standard_normal((n, factors), dtype=np.float32)
            proj = rng.standard_normal((factors, d), dtype=np.float32) / np.float32(np.sqrt(factors))
            return latent @ proj + rng.standard_normal((n, d), dtype=np.float32)

        item_features = {m: low_rank(n_items, d) for m, d in FEATURE_DIMS.items()}
        user_features = low_rank(n_users, USER_DIM)
    return assemble_splits("scale", users, items, labels, n_users, n_items, source="scale",
                           item_features=item_features, user_features=user_features)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class GivenLists:
    """A kNN search whose top-k lists were already found (timed) by ``search``: same name and cache key."""

    def __init__(self, search, lists: np.ndarray):
        self.name, self.cache_params, self.lists = search.name, search.cache_params, lists

    def topk(self, x: np.ndarray, k: int) -> np.ndarray:
        return self.lists


def graph_costs(cfg, dataset, cache_dir: str, recall: bool) -> dict:
    """Build RecGOAT's kNN graphs as the model does (same function, same cache keys) and time each; with ``recall``
    also the exact and the IVF top-k lists of each, and the IVF lists' recall@k against the exact ones."""
    from hydra.utils import instantiate

    from recgoat.graphs.knn import KNNGraphs, knn_recall
    from recgoat.utils.config import compose

    search = instantiate(cfg.model.knn_search)
    searches = {name: instantiate(compose(["model=recgoat", f"model/knn_search={name}"]).model.knn_search)
                for name in ("exact", "ivf")} if recall else {}
    if recall:
        searches["exact"] = search if search.name == "exact" else searches["exact"]  # on the cell's device
    attention = {"include_self": False, "symmetric": True, "self_loops": True, "weighted": False}
    side = {"include_self": True, "symmetric": False, "self_loops": False, "weighted": True}
    graphs = [(f"item-{m}", x, int(cfg.model.modality_branches.knn_k), attention)
              for m, x in dataset.item_features.items()]
    if cfg.model.side_view is not None:
        graphs += [(f"side-{m}", x, int(cfg.model.side_view.knn_k), side) for m, x in dataset.item_features.items()]
    if cfg.model.user_branch is not None:
        graphs.append(("user", dataset.user_features, int(cfg.model.user_branch.knn_k), attention))
    out = {"knn_search": search.name}
    for name, x, k, flags in graphs:
        k_search = k - 1 if flags["include_self"] else k  # the builder adds the row itself to an approximate search
        lists, seconds = {}, {}
        for method, s in searches.items():  # the shipped configs of both (conf/model/knn_search/)
            t = time.perf_counter()
            lists[method] = s.topk(x, k_search)
            seconds[method] = out[f"{method}_{name}_s"] = time.perf_counter() - t
        if recall:
            out[f"ivf_{name}_recall@{k_search}"] = knn_recall(lists["ivf"], lists["exact"])
        used = GivenLists(search, lists[search.name]) if recall else search  # each search runs once
        t = time.perf_counter()
        g = KNNGraphs(used, cache_dir)(x, k, **flags)
        out[f"knn_{name}_s"] = time.perf_counter() - t + seconds.get(search.name, 0.0)
        out[f"knn_{name}_edges"] = int(g.nnz)
    out["knn_total_s"] = sum(v for key, v in out.items() if key.startswith("knn_") and key.endswith("_s"))
    return out


def run_cell(size: str, model_name: str, steps: int, knn: str, recall: bool, device: str, threads: int) -> dict:
    from hydra.utils import instantiate

    from recgoat.eval import users_with_items
    from recgoat.utils.config import compose

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    n_users, n_items, n_inter = SIZES[size]
    row = {"size": size, "model": model_name, "device": device, "threads": torch.get_num_threads()}
    t = time.perf_counter()
    dataset = scaled_dataset(n_users, n_items, n_inter, with_features=model_name == "recgoat")
    row.update(data_s=time.perf_counter() - t, users=dataset.n_users, items=dataset.n_items,
               train_pairs=int(dataset.train.nnz),
               interactions=int(dataset.train.nnz + dataset.valid.nnz + dataset.test.nnz))
    with tempfile.TemporaryDirectory() as cache_dir:
        overrides = [f"model={model_name}", f"paths.cache_dir={cache_dir}"]
        if model_name == "recgoat":
            overrides.append(f"model/knn_search={knn}")
            if knn == "exact":
                overrides.append(f"model.knn_search.device={dev.type}")
        cfg = compose(overrides)
        if model_name == "recgoat":
            row.update(graph_costs(cfg, dataset, cache_dir, recall))
        torch.manual_seed(0)
        t = time.perf_counter()
        model = instantiate(cfg.model)(dataset=dataset).to(dev)
        row["model_build_s"] = time.perf_counter() - t   # RecGOAT: its graphs come from the cache built above
    row["rss_after_build_mb"] = peak_rss_mb()
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    batches, ranking = train_batches(dataset), objective().to(dev)
    row["steps_per_epoch"] = len(batches)
    model.train()
    times = []
    for i, batch in zip(range(steps + 1), batches, strict=False):
        batch = {k: v.to(dev) for k, v in batch.items()}
        sync(dev)
        t = time.perf_counter()
        loss = model.loss(batch, ranking)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(dev)
        if i:  # the first step warms caches (device copies of the graphs, allocator)
            times.append(time.perf_counter() - t)
    row.update(step_s=float(np.mean(times)), steps_timed=len(times))
    row["epoch_s_extrapolated"] = row["step_s"] * row["steps_per_epoch"]
    if dev.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if model_name == "recgoat" and dev.type == "cpu":
        row["step_scope_shares"] = scope_shares(model, dataset, steps=1)
    model.eval()
    evaluator = instantiate(cfg.evaluation)(train=dataset.train)
    sync(dev)
    t = time.perf_counter()
    scorer = model.scorer()
    sync(dev)
    row["final_embeddings_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = evaluator.evaluate(scorer, dataset.test, device=dev)
    sync(dev)
    row.update(eval_s=time.perf_counter() - t, eval_users=len(users_with_items(dataset.test)),
               eval_metrics=len(metrics), peak_rss_mb=peak_rss_mb())
    if dev.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def table(rows: list[dict]) -> str:
    lines = ["| size | model | users | items | train pairs | kNN graphs s | model build s | s / step | steps / epoch "
             "| s / epoch (extrapolated) | final embeddings s | full-ranking eval s (users) | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['model']} | failed: {r['error']} |" + " |" * 10)
            continue
        knn = f"{r['knn_total_s']:.1f} ({r['knn_search']})" if "knn_total_s" in r else "-"
        lines.append(f"| {r['size']} | {r['model']} | {r['users']} | {r['items']} | {r['train_pairs']} | {knn} "
                     f"| {r['model_build_s']:.1f} | {r['step_s']:.2f} | {r['steps_per_epoch']} "
                     f"| {r['epoch_s_extrapolated']:.0f} | {r['final_embeddings_s']:.2f} "
                     f"| {r['eval_s']:.1f} ({r['eval_users']}) | {r['peak_rss_mb'] / 1024:.2f} |")
    recalls = [(r["size"], k, v) for r in rows for k, v in r.items() if "_recall@" in k]
    if recalls:
        lines += ["", "| size | graph | IVF recall@k vs exact | exact s | IVF s |", "|---|---|---|---|---|"]
        for size, key, v in recalls:
            name = key.split("_")[1]
            r = next(r for r in rows if r["size"] == size and "knn_total_s" in r)
            lines.append(f"| {size} | {name} | {v:.4f} | {r[f'exact_{name}_s']:.1f} | {r[f'ivf_{name}_s']:.1f} |")
    for r in rows:
        if "step_scope_shares" in r:
            parts = ", ".join(f"{k.removeprefix('recgoat.')} {100 * v:.1f}%" for k, v in r["step_scope_shares"].items())
            lines.append(f"\n{r['size']} {r['model']}: share of a training step in each forward scope: {parts}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = [r for r in rows if "error" not in r]
    for model, marker in (("lightgcn", "o"), ("recgoat", "s")):
        rs = sorted((r for r in ok if r["model"] == model), key=lambda r: r["train_pairs"])
        if not rs:
            continue
        x = [r["train_pairs"] for r in rs]
        for key, label in (("epoch_s_extrapolated", "epoch"), ("eval_s", "full-ranking eval"),
                           ("knn_total_s", "kNN graphs"), ("model_build_s", "model build")):
            if all(key in r for r in rs):
                ax_t.loglog(x, [max(r[key], 1e-3) for r in rs], marker=marker, label=f"{model}: {label}")
        ax_m.loglog(x, [r["peak_rss_mb"] / 1024 for r in rs], marker=marker, label=model)
    if ok:
        xs = np.array(sorted({r["train_pairs"] for r in ok}), dtype=float)
        ax_t.loglog(xs, xs / xs[0], "k:", label="linear in the data (slope 1)")
        ax_t.loglog(xs, (xs / xs[0]) ** 2, "k--", lw=0.8, label="quadratic (slope 2)")
    ax_t.set(xlabel="training interactions", ylabel="seconds", title="cost vs size")
    ax_m.set(xlabel="training interactions", ylabel="peak RSS (GB)", title="memory vs size")
    ax_m.axhline(16, color="r", ls="--", lw=0.8, label="16 GB target")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--models", nargs="+", choices=["lightgcn", "recgoat"], default=["lightgcn", "recgoat"])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per cell (after one warm-up)")
    parser.add_argument("--knn", choices=["exact", "ivf"], default="exact", help="RecGOAT's kNN search")
    parser.add_argument("--knn-recall", action="store_true", help="also time exact and IVF top-k, report recall@k")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per cell (0: torch's default)")
    parser.add_argument("--out", default=None, help="output prefix (default logs/bench/scale-<time>); when its .json "
                        "exists, the cells it holds are kept and only the missing (or failed) ones run")
    parser.add_argument("--cell", nargs=2, metavar=("SIZE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(*args.cell, args.steps, args.knn, args.knn_recall, args.device, args.threads)))
        return

    root = Path(__file__).resolve().parents[1]
    prefix = Path(args.out) if args.out else root / "logs" / "bench" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if prefix.with_suffix(".json").exists():  # a stopped bench continues: finished cells are not rerun
        rows = [r for r in json.loads(prefix.with_suffix(".json").read_text())["rows"] if "error" not in r]
        print(f"continuing {prefix}.json: {len(rows)} finished cell(s) kept")
    for size in args.sizes:
        for model in args.models:
            if any(r["size"] == size and r["model"] == model for r in rows):
                continue
            cmd = [sys.executable, __file__, "--cell", size, model, "--steps", str(args.steps), "--knn", args.knn,
                   "--device", args.device, "--threads", str(args.threads)] + (["--knn-recall"] * args.knn_recall)
            print(f"[{time.strftime('%H:%M:%S')}] {size} {model} ...", flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                rows.append({"size": size, "model": model, "error": f"exit {proc.returncode}: {tail[0][:200]}"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            rows[-1]["cell_wall_s"] = time.perf_counter() - t
            print(f"    {time.perf_counter() - t:.0f} s: " + (rows[-1].get("error") or
                  f"epoch {rows[-1]['epoch_s_extrapolated']:.0f} s (extrapolated), eval {rows[-1]['eval_s']:.1f} s, "
                  f"peak RSS {rows[-1]['peak_rss_mb'] / 1024:.2f} GB"), flush=True)
            prefix.with_suffix(".json").write_text(json.dumps(  # after every cell: a stopped run keeps its rows
                {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "torch": torch.__version__, "args": {k: v for k, v in vars(args).items() if k not in ("out", "cell")},
                 "rows": rows}, indent=2))
    rows.sort(key=lambda r: (list(SIZES).index(r["size"]), r["model"]))
    md = table(rows)
    print("\n" + md)
    prefix.with_suffix(".md").write_text(md + "\n")
    plot(rows, prefix.with_suffix(".png"))
    print(f"\nwritten: {prefix}.json, .md, .png")


if __name__ == "__main__":
    main()
