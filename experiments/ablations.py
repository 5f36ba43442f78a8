"""The paper's ablation table at a leaderboard's best trial: each ablation of ``conf/experiment/`` applied to one model,
the same seeds as the leaderboard's seed runs (which are the table's full-model row), paired differences to it.

    python experiments/ablations.py --leaderboard logs/leaderboard/ml100k_mm --model recgoat \
        --csv experiments/results/ablations_recgoat.csv

Resumable: each (config, seed) run goes to ``<out>/<config>/seed<s>``; a finished one (its ``results.json``) is read,
not rerun, and an unfinished one is started again from nothing. Runs go ``--jobs`` at a time, one torch thread each,
seed by seed (so a partial table is paired over the seeds it has). The leaderboard's best parameters are applied
where the ablated model takes them (``naive_fusion`` has no alignment weights). Valid selects every epoch; test is
read once per run. The CSV carries the code commit and the data fingerprint of the runs; its rows of other datasets
or models are kept, this table's replaced.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# config -> what it removes or adds, for the table; "full" is the leaderboard's own seed runs
CONFIGS = {
    "full": "(the model at its best trial)",
    "ablation_no_oat": "no OT map / W1",
    "ablation_no_cmcl": "no CMCL",
    "ablation_no_alignment": "no CMCL / OT map / W1",
    "ablation_no_gat": "per-item MLP branches (no item graphs)",
    "naive_fusion": "LM features added to the ID items, no branches, no alignment",
}


def composed_keys(overrides: list[str]) -> set[str] | None:
    """The dotted keys of the run config ``overrides`` compose (to drop best parameters a model does not take)."""
    from omegaconf import OmegaConf

    from recgoat.utils.config import apply_experiment, compose_run
    cfg, model_name = compose_run(overrides)
    apply_experiment(cfg, model_name)
    keys: set[str] = set()

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        keys.add(path)
    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def command(args, config: str, best: dict, common: list[str], dataset: str) -> list[str]:
    """``recgoat.run``'s arguments of one config, the best parameters it takes included (composed here, once)."""
    from recgoat.utils.config import compose
    experiment = [f"+experiment={config}"] if config != "full" else []
    own_model = experiment and compose(experiment).get("experiment_model")    # naive_fusion trains a model of its own
    base = [*([] if own_model else [f"model={args.model}"]), f"dataset={dataset}", *experiment, *common]
    keys = composed_keys(base)
    return [*base, *(f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items() if k in keys)]


def run(args, config: str, seed: int, overrides: list[str]) -> Path:
    out = args.out / config / f"seed{seed}"
    if (out / "results.json").exists():
        return out
    if out.exists():                                  # killed before its results: this folder is ours, start again
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "recgoat.run", *overrides, f"seed={seed}", "test=true", f"hydra.run.dir={out}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out / config / f"seed{seed}.log"
    print(" ".join(cmd[1:]), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{config} seed {seed} failed (exit {proc.returncode}); its log: {log}")
    return out


def seed_list(seeds: list[int]) -> str:
    """``1-5`` for a run of seeds, ``1,2,4`` otherwise (a partial table says which seeds it pairs)."""
    if not seeds:
        return ""
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


def mean_std(xs: list[float]) -> tuple[str, str]:
    if not xs:
        return "", ""
    return f"{statistics.fmean(xs):.4f}", (f"{statistics.stdev(xs):.4f}" if len(xs) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaderboard", type=Path, required=True, help="a finished leaderboard's out_dir")
    parser.add_argument("--model", required=True, help="the model of the leaderboard whose best trial is ablated")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, help="where the runs go (default: logs/ablations/<dataset>/<model>)")
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-run", action="store_true",
                        help="start nothing: the table of the finished runs, each config paired over its seeds")
    args = parser.parse_args()

    board = json.loads((args.leaderboard / "leaderboard.json").read_text())
    manifest = board["manifest"]
    row = next(r for r in board["rows"] if r["model"] == args.model)
    if row["status"] != "done":
        raise SystemExit(f"{args.leaderboard}: {args.model} is at '{row['status']}'; finish the leaderboard first")
    dataset = manifest["dataset"]
    best = row["best_params"] or {}
    common = [*manifest["budget_overrides"], *manifest["run"]]   # what every run of the leaderboard got
    args.out = args.out or Path(os.environ.get("RECGOAT_LOG_DIR", "logs")) / "ablations" / dataset / args.model
    full = {r["seed"]: r for r in row["runs"]}
    seeds = sorted(full)
    results: dict[str, dict[int, dict]] = {"full": {s: {"valid": r["valid"], "test": r["test"]}
                                                    for s, r in full.items()}}
    commands = {c: command(args, c, best, common, dataset) for c in args.configs if c != "full"}
    todo = [(c, s) for s in seeds for c in commands]
    if args.no_run:
        done = [(cs, args.out / cs[0] / f"seed{cs[1]}") for cs in todo
                if (args.out / cs[0] / f"seed{cs[1]}" / "results.json").exists()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda cs: (cs, run(args, cs[0], cs[1], commands[cs[0]])), todo))
    provenance = set()
    for (config, seed), out in done:
        r = json.loads((out / "results.json").read_text())
        if r["provenance"]["data_fingerprint"] != manifest["data_fingerprint"]:
            raise SystemExit(f"{out}: data fingerprint {r['provenance']['data_fingerprint'][:12]} is not the "
                             f"leaderboard's {manifest['data_fingerprint'][:12]}")
        provenance.add(r["provenance"]["commit"][:7] + ("+dirty" if r["provenance"].get("dirty") else ""))
        results.setdefault(config, {})[seed] = r

    metric = manifest["monitor"]
    header = ["dataset", "model", "config", "removes or adds", "seeds", "valid R@20", "valid R@20 std", "test R@20",
              "test R@20 std", "valid R@20 - full", "valid diff std", "test R@20 - full", "test diff std", "commit",
              "data fingerprint"]
    rows = []
    for config in args.configs:
        per_seed = results.get(config, {})
        have = sorted(per_seed)
        valid = [per_seed[s]["valid"][metric] for s in have]
        test = [per_seed[s]["test"][metric] for s in have]
        dv = [per_seed[s]["valid"][metric] - results["full"][s]["valid"][metric] for s in have]
        dt = [per_seed[s]["test"][metric] - results["full"][s]["test"][metric] for s in have]
        commit = manifest["code"]["commit"][:7] if config == "full" else " ".join(sorted(provenance))
        rows.append([dataset, args.model, config, CONFIGS[config], seed_list(have),
                     *mean_std(valid), *mean_std(test),
                     *(("", "", "", "") if config == "full" else (*mean_std(dv), *mean_std(dt))),
                     commit, manifest["data_fingerprint"][:12]])
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    kept = []   # the CSV's rows of other datasets or models stay; this table's rows are replaced
    if args.csv.exists():
        with open(args.csv, newline="") as f:
            kept = [r for r in list(csv.reader(f))[1:] if (r[0], r[1]) != (dataset, args.model)]
    with open(args.csv, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *kept, *rows])
    print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
