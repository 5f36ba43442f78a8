"""Aggregate the results.json files of runs into a table and plots: mean ± std per config across seeds.

    python -m recgoat.report logs/train/multiruns/<time>            # markdown to stdout, CSV + PNGs beside
    python -m recgoat.report <dir> --split test --metrics recall@20 ndcg@20 --out table.md

Runs are grouped by their ``name`` (experiment) or, without one, by model and dataset, and within that by every
config value in which they differ other than the seed and the run's own paths (a sweep over
``model.embedding_dim=4,64`` gives two rows, each labelled with its value). Best
values per metric (highest mean) are marked in bold. Selection inside each run was on valid.
Plots: ``valid_curves.png`` (validation Recall@20 per epoch, one line per run) and
``bars.png`` (the first metric per config, mean with std error bars).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from recgoat.utils import tables

DEFAULT_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def load_runs(root: str | Path) -> list[dict]:
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    runs = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable results file ({e})") from e
        res["_path"] = str(path)
        runs.append(res)
    if not runs:
        raise FileNotFoundError(f"{root}: no results.json found below it")
    return runs


def runs_without_results(root: str | Path) -> list[Path]:
    """Run folders below ``root`` (a ``.hydra/config.yaml`` record) without a ``results.json``: failed jobs of a
    multirun, or runs still going; a report that leaves them out says so."""
    return sorted(p.parent.parent for p in Path(root).rglob(".hydra/config.yaml")
                  if not (p.parent.parent / "results.json").exists())


def group_key(run: dict) -> str:
    return run.get("name") or f"{run['model']} / {run['dataset']['name']}"


# config entries that differ between the runs of one configuration: the seed, and where each run writes
_PER_RUN_KEYS = {"seed", "dirpath", "save_dir", "default_root_dir", "ckpt_path", "resume", "name", "group"}


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (config or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif k not in _PER_RUN_KEYS and not key.startswith("paths."):
            out[key] = json.dumps(v, sort_keys=True)
    return out


def config_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs of one configuration across seeds, labelled ``<name or model / dataset>`` plus the values that tell
    the label's configurations apart."""
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(group_key(r), []).append(r)
    groups: dict[str, list[dict]] = {}
    for label, members in by_label.items():
        flats = [_flat(m.get("config", {})) for m in members]
        keys = sorted({k for f in flats for k in f})
        varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
        for m, f in zip(members, flats, strict=True):
            suffix = ", ".join(f"{k}={f.get(k, 'unset')}" for k in varying)
            groups.setdefault(f"{label} ({suffix})" if suffix else label, []).append(m)
    return groups


def aggregate(runs: list[dict], split: str = "test", metrics=DEFAULT_METRICS) -> list[dict]:
    groups = config_groups(runs)
    rows = []
    for key, members in groups.items():
        row = {"config": key, "model": members[0]["model"], "dataset": members[0]["dataset"]["name"],
               "seeds": sorted(m["seed"] for m in members), "n": len(members)}
        for metric in metrics:
            values = [m[split][metric] for m in members]
            row[metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        row["best_epoch"] = statistics.fmean(m["best_epoch"] or 0 for m in members)
        row["epoch_s"] = statistics.fmean((m["timings"].get("train_epoch_s") or 0) for m in members)
        rows.append(row)
    return rows


def markdown(rows: list[dict], metrics=DEFAULT_METRICS, split: str = "test") -> str:
    """The table; a row with one run has no spread (no ±) and is never bold, and a row with fewer runs than the
    most of any row (a killed job of a sweep) says so in its ``n``."""
    most = max(r["n"] for r in rows)
    spread = [r for r in rows if r["n"] > 1]
    best = {m: max(r[m][0] for r in spread) for m in metrics} if spread else {}
    head = ["config", "n"] + [f"{split} {m}" for m in metrics] + ["best epoch", "s/epoch"]
    table = []
    for r in rows:
        cells = [r["config"], str(r["n"]) if r["n"] == most else f"{r['n']} of {most}"]
        for m in metrics:
            mean, std = r[m]
            text = f"{mean:.4f} ± {std:.4f}" if r["n"] > 1 else f"{mean:.4f} (1 run)"
            cells.append(f"**{text}**" if r["n"] > 1 and mean == best[m] else text)
        cells += [f"{r['best_epoch']:.0f}", f"{r['epoch_s']:.1f}"]
        table.append(cells)
    lines = [tables.markdown(head, table)]
    if most > 1 and any(r["n"] < most for r in rows):
        lines.append(f"\nRows marked 'n of {most}' have fewer runs than the others (a run failed or was stopped); "
                     f"rows of one run have no spread and are not bolded.")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path, metrics=DEFAULT_METRICS) -> None:
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    tables.write_csv(path, ["config", "model", "dataset", "n", "seeds", *stats],
                     ([r["config"], r["model"], r["dataset"], r["n"], " ".join(map(str, r["seeds"]))]
                      + [f"{v:.6f}" for m in metrics for v in r[m]] for r in rows))


def plot_curves(runs: list[dict], path: Path, metric: str = "recall@20") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        hist = r.get("valid_history") or []
        if hist:
            ax.plot([h["epoch"] for h in hist], [h[metric] for h in hist], lw=1,
                    label=f"{group_key(r)} (seed {r['seed']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title("Validation curves")
    if len(runs) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_bars(rows: list[dict], path: Path, metric: str, split: str = "test") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4.5))
    names = [r["config"] for r in rows]
    means = [r[metric][0] for r in rows]
    stds = [r[metric][1] for r in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
    ax.set_ylabel(f"{split} {metric} (mean ± std over seeds)")
    lo = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, lo * 0.9), None)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="a folder searched recursively for results.json (e.g. a multirun dir)")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--out", help="markdown file to write (default: <root>/report.md)")
    args = parser.parse_args(argv)
    runs = load_runs(args.root)
    unscored = [r for r in runs if r.get(args.split) is None]
    if unscored:  # valid-only runs (test=false, e.g. a leaderboard's search trials) have no test metrics
        print(f"{len(unscored)} of {len(runs)} runs have no {args.split} metrics (test=false) and are left out")
        runs = [r for r in runs if r.get(args.split) is not None]
        if not runs:
            raise SystemExit(f"{args.root}: no run has {args.split} metrics; try --split valid")
    rows = aggregate(runs, args.split, args.metrics)
    table = markdown(rows, args.metrics, args.split)
    missing = runs_without_results(args.root)
    if missing:
        names = ", ".join(str(p.relative_to(args.root)) for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        table += (f"\n\n{len(missing)} run folder(s) have no results.json (failed, or still running) and are left "
                  f"out: {names}; each folder's .log says why.")
    out = Path(args.out) if args.out else Path(args.root) / "report.md"
    out.write_text(table + "\n")
    write_csv(rows, out.with_suffix(".csv"), args.metrics)
    curves = plot_curves(runs, out.with_name("valid_curves.png"))
    bars = plot_bars(rows, out.with_name("bars.png"), args.metrics[0], args.split)
    print(table)
    print(f"\nwritten: {out}, {out.with_suffix('.csv')}, {curves}, {bars}")
    return table


if __name__ == "__main__":
    main()
