"""What a result was produced by: the code (git commit and a hash of the sources and configs) and the config.

Every run records these in ``results.json``; the leaderboard refuses to mix runs whose code or data differ.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache

from recgoat.utils.config import PACKAGE_DIR, project_root


@lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"commit", "dirty", "code_hash"}``: the git commit of the checkout (None outside one), whether its
    sources or configs have uncommitted changes, and a SHA-256 of every ``.py`` file of the package and every
    ``.yaml`` of ``conf/`` (path and content), which tells two code versions apart with or without git."""
    h = hashlib.sha256()
    root = project_root()
    files = [(f"recgoat/{p.relative_to(PACKAGE_DIR)}", p) for p in sorted(PACKAGE_DIR.rglob("*.py"))
             if "__pycache__" not in p.parts]
    files += [(f"conf/{p.relative_to(root / 'conf')}", p) for p in sorted((root / "conf").rglob("*.yaml"))]
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--", "src", "conf"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": commit, "dirty": dirty, "code_hash": h.hexdigest()}


def config_hash(resolved: dict) -> str:
    """A SHA-256 of a resolved run config that does not depend on where the run, its logs or the data live:
    the ``paths`` node is left out and its values inside other strings (``<log_dir>/.../checkpoints``) are
    replaced by their names, so a run moved to another folder or machine keeps its hash. The data's identity is
    its fingerprint, recorded beside it."""
    paths = {k: str(v) for k, v in (resolved.get("paths") or {}).items() if isinstance(v, str) and v}
    # longest first, so output_dir (inside log_dir, inside root_dir) is replaced before its parents
    ordered = sorted(paths.items(), key=lambda kv: -len(kv[1]))

    def scrub(node):
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if k not in ("paths", "hydra")}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        if isinstance(node, str):
            for name, value in ordered:
                node = node.replace(value, f"${{paths.{name}}}")
        return node

    payload = json.dumps(scrub(resolved), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def provenance(resolved: dict, data_fingerprint: str) -> dict:
    """The record a run writes into ``results.json``."""
    return {**code_version(), "config_hash": config_hash(resolved), "data_fingerprint": data_fingerprint}

