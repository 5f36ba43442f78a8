"""The one writer of tables: a header and rows of cells as markdown or as CSV, for the report of runs
(``recgoat.report``), the leaderboard and the results report's tables (``recgoat.figures``)."""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from recgoat.utils.io import atomic_write


def markdown(header: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table, each cell as ``str`` gives it (``|`` escaped), one line a row, no trailing newline."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def write_csv(path: str | Path, header: Sequence[object], rows: Iterable[Sequence[object]]) -> Path:
    """The table as CSV, written atomically (a reader never sees half a file)."""
    rows = list(rows)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return atomic_write(path, write)
