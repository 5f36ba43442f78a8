"""Hydra/OmegaConf helpers: where the configs live and resolvers they use."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def project_root() -> Path:
    """The repository root (the folder holding ``conf/``), for an editable install or a checkout.

    ``RECGOAT_ROOT`` overrides it, e.g. for a non-editable install with a copied ``conf/``.
    """
    env = os.environ.get("RECGOAT_ROOT")
    if env:
        return Path(env).resolve()
    return PACKAGE_DIR.parents[1]


def conf_dir() -> Path:
    path = project_root() / "conf"
    if not (path / "config.yaml").exists():
        raise FileNotFoundError(f"recgoat configs not found at {path}; install the package editable from a "
                                f"checkout (make install) or set RECGOAT_ROOT to the folder holding conf/")
    return path


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))


register_resolvers()
