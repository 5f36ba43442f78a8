"""Our SMORE / MENTOR against their authors' code: same data, split, seeds and budget; curves and test R@20.

    python benchmarks/authors_parity.py --model smore --authors <SMORE checkout or git dir> \\
        --python <a Python with pandas> [--dataset ml100k_mm --seeds 1 2 3 --epochs 40 --patience 10] \\
        [--set model.cl_weight=0.001 ...]

The authors' code (kennethorq/SMORE at 0148d92, Jinfeng-Xu/MENTOR at 1581d27, both built on MMRec) runs on the CPU
in a scratch folder (``--work``), on our split of the dataset written as an MMRec folder (``<name>.inter`` with our
user and item indices, ``x_label`` 0/1/2, the feature matrices as ``image_feat.npy`` / ``text_feat.npy``), patched
only where today's libraries or a CPU need it (:data:`PATCHES`, each with its reason). It is given our yaml's
hyper-parameters as one-value grids (``--set``: overrides of our yaml, given to both codes), the seed, the epoch
budget and the patience. ``--python`` is an interpreter that
has torch, torch_geometric, scipy, pyyaml and pandas (MMRec reads the ``.inter`` file with pandas, which recgoat does
not need); e.g. ours with ``PYTHONPATH`` adding a folder where ``pip install --target <dir> --no-deps pandas
python-dateutil six pytz tzdata lmdb`` put them.

Both report valid and test at the best valid epoch (recall@20; early stopping on valid with the same patience) and
the mean training loss per batch of every epoch (MMRec's trainer logs the sum over batches: divided here). Appends one
row per (implementation, seed) to ``--out`` (a CSV) and the curves to ``curves/<out>_curves.csv`` beside it; a row that
is already there is not rerun.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]

AUTHORS = {
    "smore": {"class": "SMORE", "package": "utils"},
    "mentor": {"class": "MENTOR", "package": "utils_package"},
}

# (model, file under src/, old, new, why): applied with an exact match, or the run stops
PATCHES = [
    ("smore", "models/smore.py", "self.image_original_adj = image_adj.cuda()",
     "self.image_original_adj = image_adj.to(self.device)", "runs on the CPU (no .cuda())"),
    ("smore", "models/smore.py", "self.text_original_adj = text_adj.cuda()",
     "self.text_original_adj = text_adj.to(self.device)", "runs on the CPU (no .cuda())"),
    ("smore", "utils/utils.py", "    from torch_scatter import scatter_add\n", "",
     "torch_scatter has no wheels for today's torch: torch's own scatter_add_ instead (next patch)"),
    ("smore", "utils/utils.py", "deg = scatter_add(edge_weight, row, dim=0, dim_size=num_nodes)",
     "deg = torch.zeros(num_nodes, dtype=edge_weight.dtype, device=edge_weight.device).scatter_add_(0, row, "
     "edge_weight)", "the same sum with torch's scatter_add_"),
    ("mentor", "models/mentor.py", "random_noise = torch.rand_like(h).cuda()", "random_noise = torch.rand_like(h)",
     "runs on the CPU (no .cuda()), twice"),
    ("mentor", "models/mentor.py", "torch.tensor(np.random.randn(num_user + num_item, dim_x)))).to(self.device)",
     "torch.tensor(np.random.randn(num_user + num_item, dim_x)))).data.to(self.device)",
     "the six result_embed* tables: .to(cuda) makes them plain tensors, on the CPU they stay parameters and the "
     "forward's assignment fails; .data gives the CUDA behaviour (the same random draws)"),
    ("*", "{package}/dataset.py", "from {package}.data_utils import (ImageResize, ImagePad, image_to_tensor, "
     "load_decompress_img_from_lmdb_value)\n", "",
     "raw-image helpers (torchvision) for end-to-end image models, unused with feature files"),
    ("*", "{package}/dataset.py", "import lmdb\n", "", "the same: an image store, unused with feature files"),
    ("*", "{package}/metrics.py", "np.float)", "float)", "np.float was removed in numpy 1.24 (the same type)"),
]


def extract(authors: Path, dest: Path) -> None:
    """The authors' ``src`` folder from a checkout, or from a bare git directory (``git archive HEAD``)."""
    if (authors / "src").is_dir():
        shutil.copytree(authors / "src", dest, dirs_exist_ok=True)
        return
    tar = subprocess.run(["git", "--git-dir", str(authors), "archive", "HEAD", "src"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest.parent, filter="data")


def patch(model: str, src: Path) -> list[str]:
    package = AUTHORS[model]["package"]
    applied = []
    for who, rel, old, new, why in PATCHES:
        if who not in ("*", model):
            continue
        rel, old = rel.format(package=package), old.format(package=package)
        path = src / rel
        text = path.read_text()
        if old not in text:
            if new and new in text:
                continue                                    # applied by an earlier call
            raise SystemExit(f"patch target not found in {path}: {old!r} ({why})")
        path.write_text(text.replace(old, new))
        applied.append(f"{rel}: {why}")
    return applied


def write_mmrec_folder(dataset, root: Path, with_user_graph: bool) -> None:
    """``root/<name>.inter`` (our indices, our split) and the features; MENTOR also loads a user-user graph file."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["userID\titemID\tx_label\n"]
    for label, m in enumerate((dataset.train, dataset.valid, dataset.test)):
        coo = sp.coo_matrix(m)
        order = np.lexsort((coo.col, coo.row))
        lines += [f"{u}\t{i}\t{label}\n" for u, i in zip(coo.row[order], coo.col[order], strict=True)]
    (root / f"{dataset.name}.inter").write_text("".join(lines))
    files = {"image": "image_feat.npy", "text": "text_feat.npy"}
    for m, x in dataset.item_features.items():
        if m in files:
            np.save(root / files[m], x.astype(np.float32))
    if with_user_graph:
        # DualGNN's user-user graph (co-interaction counts, neighbours by count): MENTOR loads and resamples it
        # each epoch but never uses it in its forward pass
        r = sp.csr_matrix(dataset.train, dtype=np.float32)
        r.data[:] = 1
        co = (r @ r.T).tolil()
        co.setdiag(0)
        co = co.tocsr()
        graph = {}
        for u in range(dataset.n_users):
            cols, vals = co.indices[co.indptr[u]:co.indptr[u + 1]], co.data[co.indptr[u]:co.indptr[u + 1]]
            order = np.argsort(-vals, kind="stable")[:40]
            graph[u] = [cols[order].tolist(), vals[order].tolist()]
        np.save(root / "user_graph_dict.npy", graph, allow_pickle=True)


DRIVER = """import sys, torch
torch.set_num_threads(1)
from {package}.quick_start import quick_start
quick_start(model="{cls}", dataset="{dataset}", config_dict={config}, save_model=False)
"""

EPOCH = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([\d.naninf-]+)\]")
BEST = re.compile(r"best valid: (.*?),\s*best test: (.*?)$", re.DOTALL)


def metric(text: str, name: str) -> float:
    return float(re.search(rf"{re.escape(name)}: ([\d.]+)", text).group(1))


def prepare_authors(args, dataset) -> Path:
    """The patched code and the data folder, once for all seeds; returns the code's ``src`` folder."""
    src = args.work / "src"
    extract(args.authors, src)
    applied = patch(args.model, src)
    print("patches:", *applied, sep="\n  ")
    write_mmrec_folder(dataset, args.work / "data" / dataset.name, with_user_graph=args.model == "mentor")
    (src / "configs" / "dataset" / f"{dataset.name}.yaml").write_text(
        "USER_ID_FIELD: userID\nITEM_ID_FIELD: itemID\nfilter_out_cod_start_users: True\n"
        f"inter_file_name: '{dataset.name}.inter'\nvision_feature_file: 'image_feat.npy'\n"
        "text_feature_file: 'text_feat.npy'\nuser_graph_dict_file: 'user_graph_dict.npy'\nfield_separator: \"\\t\"\n")
    return src


def run_authors(args, src: Path, dataset, hparams: dict, seed: int, n_batches: int) -> tuple[dict, list[dict]]:
    config = {"use_gpu": False, "gpu_id": 0, "seed": [seed], "hyper_parameters": ["seed"], "epochs": args.epochs,
              "stopping_step": args.patience, "save_recommended_topk": False, "data_path": "../data/",
              "topk": [10, 20], **hparams}
    (src / "parity_driver.py").write_text(DRIVER.format(package=AUTHORS[args.model]["package"],
                                                        cls=AUTHORS[args.model]["class"], dataset=dataset.name,
                                                        config=repr(config)))
    log = args.work / f"authors_seed{seed}.log"
    with open(log, "w") as f:
        proc = subprocess.run([args.python, "parity_driver.py"], cwd=src, stdout=f, stderr=subprocess.STDOUT)
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"the authors' code failed (exit {proc.returncode}); its output: {log}\n{text[-3000:]}")
    curves = [{"epoch": int(e), "seconds": float(t), "loss": float(v) / n_batches} for e, t, v in EPOCH.findall(text)]
    valid, test = BEST.search(text).groups()
    result = {"valid_recall@20": metric(valid, "recall@20"), "test_recall@20": metric(test, "recall@20"),
              "test_ndcg@20": metric(test, "ndcg@20"), "epochs": len(curves),
              "s_per_epoch": float(np.mean([c["seconds"] for c in curves]))}
    return result, curves


def run_ours(args, seed: int) -> tuple[dict, list[dict]]:
    out = args.work / f"ours_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "recgoat.run", f"model={args.model}", f"dataset={args.dataset}", *args.set,
           f"seed={seed}", f"trainer.max_epochs={args.epochs}", f"callbacks.early_stopping.patience={args.patience}",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"our run failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    curves = [{"epoch": int(r["epoch"]), "seconds": math.nan, "loss": float(r["train/loss"])}  # seconds: mean only
              for r in rows if r.get("train/loss")]
    result = {"valid_recall@20": res["valid"]["recall@20"], "test_recall@20": res["test"]["recall@20"],
              "test_ndcg@20": res["test"]["ndcg@20"], "epochs": len(curves),
              "s_per_epoch": res["timings"]["train_epoch_s"]}
    return result, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(AUTHORS), required=True)
    parser.add_argument("--authors", type=Path, required=True, help="the authors' checkout, or its git directory")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the authors' code")
    parser.add_argument("--dataset", default="ml100k_mm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--only", choices=["authors", "ours"], default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recgoat-parity"))
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "authors_parity.csv")
    parser.add_argument("--set", nargs="+", default=[], metavar="model.KEY=VALUE",
                        help="overrides of our yaml's hyper-parameters, given to both codes (the row's setting)")
    args = parser.parse_args()
    if bad := [o for o in args.set if not o.startswith("model.") or "=" not in o]:
        parser.error(f"--set takes model.KEY=VALUE overrides, got {bad}")
    setting = " ".join(args.set) or "yaml"
    args.work = args.work / args.model

    from omegaconf import OmegaConf

    from recgoat.utils.config import compose
    cfg = compose([f"model={args.model}", f"dataset={args.dataset}", *args.set])
    from hydra.utils import instantiate
    dataset = instantiate(cfg.dataset)
    hparams = authors_hparams(args.model, OmegaConf.to_container(cfg.model, resolve=True), cfg.optimizer.lr)
    n_batches = math.ceil(dataset.train.nnz / cfg.datamodule.batch_size)

    done = set()
    if args.out.exists():
        done = {(r["model"], r["dataset"], r.get("setting") or "yaml", r["implementation"], int(r["seed"]),
                 int(r["budget_epochs"])) for r in csv.DictReader(open(args.out))}
    src = None
    curves_path = args.out.parent / "curves" / f"{args.out.stem}_curves.csv"
    curves_path.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for impl in ("authors", "ours"):
            if args.only not in (None, impl) or (args.model, args.dataset, setting, impl, seed, args.epochs) in done:
                continue
            if impl == "authors" and src is None:
                src = prepare_authors(args, dataset)
            result, curves = (run_authors(args, src, dataset, hparams, seed, n_batches) if impl == "authors"
                              else run_ours(args, seed))
            result = {k: round(v, 2 if k == "s_per_epoch" else 4) if isinstance(v, float) else v
                      for k, v in result.items()}
            row = {"model": args.model, "dataset": args.dataset, "setting": setting, "implementation": impl,
                   "seed": seed, "budget_epochs": args.epochs, "patience": args.patience, **result}
            print(row, flush=True)
            append(args.out, row)
            for c in curves:
                append(curves_path, {"model": args.model, "dataset": args.dataset, "setting": setting,
                                     "implementation": impl, "seed": seed, **c, "loss": round(c["loss"], 5)})


def authors_hparams(model: str, ours: dict, lr: float) -> dict:
    """Our yaml's values under the authors' config names."""
    if model == "smore":
        return {"learning_rate": lr, "embedding_size": ours["embedding_dim"], "n_ui_layers": ours["n_ui_layers"],
                "n_layers": ours["n_layers"], "image_knn_k": ours["knn_k"]["image"],
                "text_knn_k": ours["knn_k"]["text"], "reg_weight": ours["reg_weight"], "cl_loss": ours["cl_weight"],
                "dropout_rate": ours["dropout"]}
    return {"learning_rate": lr, "embedding_size": ours["embedding_dim"], "knn_k": ours["knn_k"],
            "mm_image_weight": ours["modality_weights"]["image"], "n_mm_layers": ours["n_mm_layers"],
            "reg_weight": ours["reg_weight"], "align_weight": ours["align_weight"],
            "mask_weight_g": ours["mask_weight_g"], "mask_weight_f": ours["mask_weight_f"], "temp": ours["tau"],
            "dropout": ours["dropout"]}


def append(path: Path, row: dict) -> None:
    """One row more; a file whose header lacks one of the row's columns is rewritten first with it (empty in the
    rows before: the same file, never a second header)."""
    rows = list(csv.DictReader(open(path))) if path.exists() else []
    if rows and set(row) <= set(rows[0]):
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=list(rows[0])).writerow(row)
        return
    fields = list(row) + [k for k in (rows[0] if rows else {}) if k not in row]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([*rows, row])
    tmp.replace(path)


if __name__ == "__main__":
    main()
