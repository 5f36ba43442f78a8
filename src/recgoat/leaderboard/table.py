"""The leaderboard table, built from what is on disk (the study and each seed run's ``results.json``), so it is
the same whoever writes it and whenever: ``leaderboard.md`` / ``.csv`` / ``.json`` and ``leaderboard.png``."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from recgoat.leaderboard.search import Plan, best_trial, counted_trials, load_study, seed_runs, trial_seconds
from recgoat.leaderboard.space import Space
from recgoat.utils import tables
from recgoat.utils.io import atomic_write
from recgoat.utils.results import write_json_atomic


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def row(plan: Plan, space: Space, metrics: list[str]) -> dict:
    """A model's row: its search, its best configuration, and its seed runs' valid and test metrics."""
    study = load_study(plan, space)
    trials = counted_trials(study)
    best = best_trial(study)
    seeds = seed_runs(plan, space, study)
    search_wall = [trial_seconds(t) for t in trials]
    cpu = [c for _, c in search_wall if c is not None] + [r["cost"]["cpu_s"] for r in seeds
                                                          if r["cost"]["cpu_s"] is not None]
    wall = sum(w for w, _ in search_wall) + sum(r["cost"]["wall_s"] for r in seeds)
    n_runs = len(trials) + len(seeds)
    status = (f"search {len(trials)}/{plan.trials}" if len(trials) < plan.trials
              else f"seeds {len(seeds)}/{plan.seeds}" if len(seeds) < plan.seeds else "done")
    return {
        "model": space.name, "status": status, "space": f"spaces/{space.name}.yaml",
        "trials": len(trials), "failed_trials": sum(1 for t in trials if t.state.name == "FAIL"),
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else None,
        "search_valid": best.value if best else None,
        "seeds": [r["seed"] for r in seeds],
        "valid": {m: mean_std([r["results"]["valid"][m] for r in seeds]) for m in metrics},
        "test": {m: mean_std([r["results"]["test"][m] for r in seeds]) for m in metrics},
        "best_epoch": mean_std([float(r["results"]["best_epoch"]) for r in seeds]),
        "cpu_s": sum(cpu), "wall_s": wall, "wall_s_per_run": wall / n_runs if n_runs else None,
        "search_wall_s_per_trial": (sum(w for w, _ in search_wall) / len(trials)) if trials else None,
        "search_cpu_s_per_trial": (statistics.fmean(c for _, c in search_wall if c is not None)
                                   if any(c is not None for _, c in search_wall) else None),
        "runs": [{"seed": r["seed"], "path": r["path"], "valid": r["results"]["valid"],
                  "test": r["results"]["test"], "best_epoch": r["results"]["best_epoch"]} for r in seeds],
    }


def _fmt(ms: tuple[float, float] | None, digits: int = 4) -> str:
    return "" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _params(p: dict | None) -> str:
    if not p:
        return ""
    return ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
                     for k, v in p.items())


def markdown(rows: list[dict], metrics: list[str], plan: Plan, manifest: dict) -> str:
    m0 = plan.monitor
    dirty = " (uncommitted changes)" if manifest["code"]["dirty"] else ""
    head = (["model", "status", "trials", f"best valid {m0} (search)", f"valid {m0} (seeds)"]
            + [f"test {m}" for m in metrics] + ["best epoch", "CPU s", "wall s", "CPU s / trial", "wall s / trial",
                                                "best parameters"])
    more = [f"{r['model']} {r['trials']}" for r in rows if r["trials"] > plan.trials]
    trials = (f"{plan.trials} search trials" if not more else
              f"{plan.trials} search trials asked (`trials` lowered after more had run; its best is chosen over every "
              f"trial it holds: {', '.join(more)})")
    lines = [f"# Leaderboard: {plan.dataset}", "",
             f"Every model: {trials} (Optuna TPE on valid {m0}, test never scored), then the "
             f"best configuration retrained with seeds 1..{plan.seeds} and tested once at its best valid epoch; "
             f"mean ± std over the seeds. Budget per run: {', '.join(manifest['budget_overrides'])}. "
             f"Code {str(manifest['code']['commit'])[:10]}{dirty}"
             f", data fingerprint {manifest['data_fingerprint'][:12]}.", ""]
    table = []
    for r in rows:
        cells = [f"[{r['model']}]({r['space']})", r["status"], f"{r['trials']}" + (f" ({r['failed_trials']} failed)"
                                                                                if r["failed_trials"] else ""),
                 "" if r["search_valid"] is None else f"{r['search_valid']:.4f}", _fmt(r["valid"][m0])]
        cells += [_fmt(r["test"][m]) for m in metrics]
        cells += [_fmt(r["best_epoch"], 0), f"{r['cpu_s']:.0f}", f"{r['wall_s']:.0f}",
                  "" if r["search_cpu_s_per_trial"] is None else f"{r['search_cpu_s_per_trial']:.0f}",
                  "" if r["search_wall_s_per_trial"] is None else f"{r['search_wall_s_per_trial']:.0f}",
                  _params(r["best_params"])]
        table.append(cells)
    return "\n".join([*lines, tables.markdown(head, table)]) + "\n"


def write_csv(rows: list[dict], metrics: list[str], path: Path, monitor: str) -> None:
    header = (["model", "status", "trials", "failed_trials", "search_valid"]
              + [f"valid_{monitor}_mean", f"valid_{monitor}_std"]
              + [f"test_{m}_{s}" for m in metrics for s in ("mean", "std")]
              + ["n_seeds", "cpu_s", "wall_s", "search_cpu_s_per_trial", "search_wall_s_per_trial", "best_params"])
    tables.write_csv(path, header, ([r["model"], r["status"], r["trials"], r["failed_trials"], r["search_valid"],
                                     *(r["valid"][monitor] or ("", "")),
                                     *(x for m in metrics for x in (r["test"][m] or ("", ""))),
                                     len(r["seeds"]), r["cpu_s"], r["wall_s"], r["search_cpu_s_per_trial"],
                                     r["search_wall_s_per_trial"], json.dumps(r["best_params"])] for r in rows))


def write_table(plan: Plan, spaces: list[Space], metrics: list[str]) -> dict:
    """Writes leaderboard.{md,csv,json,png} from the study and the seed runs; returns the JSON payload."""
    from recgoat.report import plot_bars
    manifest = json.loads((plan.out_dir / "manifest.json").read_text())
    rows = [row(plan, s, metrics) for s in spaces]
    payload = {"manifest": manifest, "metrics": metrics, "rows": rows}
    write_json_atomic(plan.out_dir / "leaderboard.json", payload)
    atomic_write(plan.out_dir / "leaderboard.md", lambda tmp: Path(tmp).write_text(markdown(rows, metrics, plan,
                                                                                           manifest)))
    write_csv(rows, metrics, plan.out_dir / "leaderboard.csv", plan.monitor)
    tested = [{"config": r["model"], plan.monitor: r["test"][plan.monitor]} for r in rows if r["test"][plan.monitor]]
    if tested:
        plot_bars(tested, plan.out_dir / "leaderboard.png", plan.monitor)
    return payload
