"""Results of a run: the printed table and ``results.json``."""
from __future__ import annotations

import json
from pathlib import Path

from recgoat.utils.io import atomic_write


def metrics_table(columns: dict[str, dict[str, float]], title: str = "") -> str:
    """A plain-text table, one row per metric, one column per split."""
    names = []
    for values in columns.values():
        names += [k for k in values if k not in names]
    width = max([len("metric")] + [len(n) for n in names])
    header = f"{'metric':<{width}}  " + "  ".join(f"{c:>9}" for c in columns)
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for n in names:
        cells = []
        for values in columns.values():
            v = values.get(n)
            cells.append(f"{v:>9.4f}" if isinstance(v, float) else f"{'-':>9}")
        lines.append(f"{n:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write JSON via a temporary file and rename, so a crash never leaves a half-written file."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, default=float) + "\n"))
