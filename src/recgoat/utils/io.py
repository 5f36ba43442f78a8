"""Atomic file writes: a crash or a kill never leaves a half-written file behind."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_output(path: str | Path, kind: str, key: str = "out") -> Path:
    """``path`` as an output of ``kind`` (``"file"`` or ``"folder"``), checked before any work: a path of the other
    kind, or below a file, is refused with what to give instead."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ValueError(f"{key}={path} is a folder; this command writes one file there: give a file name, e.g. "
                         f"{key}={path / 'recommendations.jsonl'}")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{key}={path} is a file; this command writes a folder (several files): give a folder")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{key}={path}: {parent} is a file, so nothing can be written below it")
            break
    return path
