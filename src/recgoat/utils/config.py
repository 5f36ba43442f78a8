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


def wandb_offline() -> bool:
    """W&B runs offline unless an API key is configured."""
    return not os.environ.get("WANDB_API_KEY")


def wandb_group() -> str | None:
    """The sweep folder's name for the jobs of a Hydra multirun (so W&B groups them), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None


def register_resolvers() -> None:
    for name, fn in (("project_root", lambda: str(project_root())), ("wandb_offline", wandb_offline),
                     ("wandb_group", wandb_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
