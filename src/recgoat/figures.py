"""The experiments report's tables and figures, rebuilt from its CSVs (``experiments/results/``).

    make figures                      # python -m recgoat.figures: every figure, and every table of the report
    python -m recgoat.figures --check # exit 1 if a table of the report differs from its CSV

A table of ``experiments/README.md`` is the rendering of one CSV, between ``<!-- table: results/<name>.csv -->``
and ``<!-- /table -->``; this command writes it there, so the report and its CSV cannot disagree. Each figure is
drawn from the CSVs only (``FIGURES``), one per question of the report, error bars over seeds where the CSV has
a spread.
"""
from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Callable
from pathlib import Path

from recgoat.utils import tables
from recgoat.utils.config import project_root

EXPERIMENTS = project_root() / "experiments"
TABLE = re.compile(r"(<!-- table: (?P<csv>[^ ]+\.csv) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown_table(path: str | Path) -> str:
    """The CSV as a markdown table, each cell as written in the CSV."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return tables.markdown(rows[0], rows[1:]) + "\n"


def sync_tables(report: Path, root: Path | None = None, write: bool = True) -> list[str]:
    """Writes each marked table of ``report`` from its CSV (relative to ``root``, default: the report's folder);
    returns the names of the tables that differed."""
    root = root or report.parent
    text = report.read_text()
    stale = []

    def render(m: re.Match) -> str:
        table = markdown_table(root / m.group("csv"))
        if m.group("body") != table:
            stale.append(m.group("csv"))
        return m.group(1) + table + m.group(4)

    new = TABLE.sub(render, text)
    if write and new != text:
        report.write_text(new)
    return stale


def _float(x: str) -> float:
    return float(x) if x not in ("", None) else float("nan")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bars(ax, labels: list[str], series: dict[str, tuple[list[float], list[float]]], ylabel: str,
          zoom: bool = True) -> None:
    """Grouped bars, one group per label, one bar per series (mean, std); ``zoom``: the y axis starts near the
    lowest bar instead of at 0 (for values that all lie well above 0)."""
    width = 0.8 / len(series)
    lows = []
    for i, (name, (means, stds)) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=name)
        lows += [m - s for m, s in zip(means, stds, strict=True)]
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if zoom:
        ax.set_ylim(0.9 * min(lows), None)


def _valid_test(rows: list[dict[str, str]]) -> dict[str, tuple[list[float], list[float]]]:
    """The ``valid R@20`` and ``test R@20`` columns of a CSV with their ``... std`` columns, as bar series."""
    return {split: ([_float(r[f"{split} R@20"]) for r in rows], [_float(r[f"{split} R@20 std"]) for r in rows])
            for split in ("valid", "test")}


def _valid_test_figure(rows: list[dict[str, str]], labels: list[str], ylabel: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    _bars(ax, labels, _valid_test(rows), ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def fig_leaderboards(results: Path):
    """Equal-budget leaderboards: valid and test R@20 of each model's best trial, mean ± std over 5 seeds."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    for ax, (name, title) in zip(axes, [("leaderboard_ml100k_mm", "ml100k_mm (equal budget)"),
                                        ("leaderboard_scientific_mm", "scientific_mm (equal budget)"),
                                        ("synthetic", "synthetic (defaults)")], strict=True):
        rows = read_csv(results / f"{name}.csv")
        _bars(ax, [r["model"] for r in rows], _valid_test(rows), "R@20 (mean ± std, 5 seeds)")
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    return fig


def fig_ablations(results: Path):
    """Ablations: the paired change of valid and test R@20 against the full model, mean ± std over seeds; one panel
    per model (the published method, its MGCN-view variant) and dataset."""
    plt = _plt()
    panels = []
    for model, name in (("recgoat", "ablations_recgoat.csv"), ("recgoat_mgcn", "ablations_recgoat_mgcn.csv")):
        if not (results / name).exists():
            continue
        rows = [r for r in read_csv(results / name) if r["valid R@20 - full"]]
        for data in dict.fromkeys(r["dataset"] for r in rows):
            panels.append((f"{model} on {data}", [r for r in rows if r["dataset"] == data]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [len(part) for _, part in panels]})
    for ax, (title, part) in zip(axes[0], panels, strict=True):
        _bars(ax, [r["config"] for r in part],
              {split: ([_float(r[f"{split} R@20 - full"]) for r in part],
                       [_float(r[f"{split} diff std"]) for r in part]) for split in ("valid", "test")},
              "R@20 minus the full model's (paired)", zoom=False)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def fig_method(results: Path):
    """The published method (model=recgoat) against its MGCN-view variant (model=recgoat_mgcn), MGCN and LightGCN
    in the equal-budget leaderboards."""
    plt = _plt()
    rows = read_csv(results / "published_method.csv")
    datasets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        part = [r for r in rows if r["data"] == data]
        _bars(ax, [r["model"] for r in part], _valid_test(part), "R@20 (mean ± std, 5 seeds)")
        ax.set_title(f"{data} (equal budget)")
    axes[0][0].legend()
    fig.tight_layout()
    return fig


def fig_parity(results: Path):
    """Our evaluator's metrics against MMRec's metric code on the same rankings."""
    plt = _plt()
    rows = read_csv(results / "mmrec_parity.csv")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ours, theirs = [_float(r["recgoat"]) for r in rows], [_float(r["MMRec"]) for r in rows]
    ax.scatter(theirs, ours, s=18)
    lo, hi = min(ours + theirs), max(ours + theirs)
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
    for r, x, y in zip(rows, theirs, ours, strict=True):
        ax.annotate(r["metric"], (x, y), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("MMRec's metric code")
    ax.set_ylabel("recgoat's evaluator")
    ax.set_title(f"max |difference| {max(_float(r['abs difference']) for r in rows):.1e}")
    fig.tight_layout()
    return fig


def fig_cost(results: Path):
    """Cost: seconds per epoch against training pairs (log-log), and RecGOAT's step against MGCN's."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = read_csv(results / "cost_vs_size.csv")
    for model in dict.fromkeys(r["model"] for r in rows):
        part = [r for r in rows if r["model"] == model]
        left.loglog([_float(r["train pairs"]) for r in part], [_float(r["s per epoch (extrapolated)"]) for r in part],
                    marker="o", label=model)
        for r in part:
            left.annotate(r["size"], (_float(r["train pairs"]), _float(r["s per epoch (extrapolated)"])), fontsize=7)
    left.set_xlabel("training pairs")
    left.set_ylabel("s / epoch (1 thread)")
    left.set_title("cost vs size")
    left.legend()
    steps = [r for r in read_csv(results / "step_cost.csv") if r["model"].startswith("recgoat")]
    labels = list(dict.fromkeys(r["data"] for r in steps))
    models = list(dict.fromkeys((r["model"], r["code"]) for r in steps))
    width = 0.8 / len(models)
    for i, (m, code) in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(labels))]
        rows = {r["data"]: r for r in steps if (r["model"], r["code"]) == (m, code)}
        ratios = [_float(rows[d]["x MGCN"]) if d in rows else float("nan") for d in labels]
        bars = right.bar(xs, ratios, width, label=f"{m} @ {code}")
        for bar, d in zip(bars, labels, strict=True):    # the op ratio over each bar
            if d in rows:
                right.annotate(f"{_float(rows[d]['ops x MGCN']):.2f}", (bar.get_x() + width / 2, bar.get_height()),
                               ha="center", va="bottom", fontsize=6, rotation=90)
    right.axhline(1.0, color="black", lw=0.8)
    right.axhline(1.25, color="grey", ls="--", lw=0.8)
    right.set_xticks(range(len(labels)), labels)
    right.set_ylabel("s per epoch, x MGCN's (1 thread)")
    right.set_ylim(0, 2.0)
    right.set_title("RecGOAT's step / MGCN's (make bench); over bars: aten ops / MGCN's", fontsize=9)
    right.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def fig_llm(results: Path):
    """RecGOAT with LLM-inferred vs template user profiles, mean ± std over 3 seeds."""
    rows = read_csv(results / "llm_profiles.csv")
    return _valid_test_figure(rows, [r["user profiles (5 training items)"] for r in rows], "R@20 (mean ± std, 3 seeds)")


# one figure per question of the report: file name -> drawing function
FIGURES: dict[str, Callable] = {
    "method.png": fig_method,
    "leaderboards.png": fig_leaderboards,
    "ablations.png": fig_ablations,
    "parity.png": fig_parity,
    "cost.png": fig_cost,
    "llm_profiles.png": fig_llm,
}


def png(name: str, results: Path = EXPERIMENTS / "results") -> bytes:
    """Figure ``name`` drawn from the CSVs of ``results``, as PNG bytes (for a notebook's ``Image``)."""
    import io
    plt = _plt()
    fig = FIGURES[name](results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def build_figures(results: Path = EXPERIMENTS / "results", out: Path = EXPERIMENTS / "figures") -> list[Path]:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in FIGURES.items():
        fig = draw(results)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare the report's tables with their CSVs")
    args = parser.parse_args(argv)
    report = EXPERIMENTS / "README.md"
    if args.check:
        stale = sync_tables(report, write=False)
        for name in stale:
            print(f"{report}: the table of {name} differs from the CSV (run `make figures`)")
        return 1 if stale else 0
    for path in build_figures():
        print(f"written: {path}")
    for name in sync_tables(report):
        print(f"{report}: table rewritten from {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
