"""Hydra/OmegaConf helpers: where the configs live, composing them outside a Hydra app, checking them."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

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


class ConfigError(ValueError):
    """A config names a key its component does not take."""


def _compose(overrides: list[str] | tuple[str, ...], config_name: str, with_hydra: bool) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=with_hydra)


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> DictConfig:
    """The config ``python -m recgoat.run <overrides>`` composes, outside a Hydra app (tests, benchmarks,
    notebooks), without the ``hydra`` node; interpolations of ``${hydra:...}`` are left unresolved."""
    return _compose(overrides, config_name, with_hydra=False)


def compose_run(overrides: list[str] | tuple[str, ...]) -> tuple[DictConfig, str]:
    """:func:`compose`'s run config and the model group's choice it made (the command line's ``model=``, an
    experiment's, or the root config's default, as Hydra records it), from one composition."""
    from omegaconf import open_dict

    cfg = _compose(overrides, "config", with_hydra=True)
    choice = cfg.hydra.runtime.choices.model
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choice


def build_model(dataset, overrides: list[str] | tuple[str, ...] = ()):
    """The model ``python -m recgoat.run <overrides>`` trains, built on ``dataset`` from its real config."""
    from hydra.utils import instantiate

    cfg, model_name = compose_run(overrides)
    apply_experiment(cfg, model_name)
    check_targets(cfg)
    return instantiate(cfg.model)(dataset=dataset)


def apply_experiment(cfg: DictConfig, model_name: str | None = None) -> None:
    """Prepares a composed run config for the model it trains, in place:

    - an experiment that trains a model of its own (``cfg.experiment_model``: ``naive_fusion``, ``id_only``, ...) must
      not be given another ``model=``, which would silently win over it;
    - ``cfg.ablate`` (what an experiment such as ``+experiment=ablation_no_oat`` sets) is applied to ``cfg.model``:
      each leaf names a part of the model by its path and gives ``null`` (the part is removed) or a node with a
      ``_target_`` (the part is replaced), so an ablation applies to whichever model was chosen. A part that the model
      does not have (its path is missing, or a part to remove is already off) fails here, naming the experiment, the
      part and the model, before any work. ``cfg.ablate`` stays as the record of what was swapped; interpolations in
      a replacement are resolved against the model before the swap."""
    who = f"+experiment={cfg.get('name')}" if cfg.get("name") else "ablate"
    wanted = cfg.get("experiment_model")
    if wanted and model_name and model_name != wanted:
        raise ConfigError(f"{who} trains model={wanted}, and model={model_name} was given with it; drop model= "
                          f"(ablations of a chosen model are the part swaps: +experiment=ablation_*)")
    swaps = cfg.get("ablate")
    if not swaps:
        return
    model = f"model={model_name}" if model_name else f"the model ({cfg.model.get('_target_')})"
    leaves: list[tuple[str, object]] = []

    def walk(node, path: str) -> None:
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if value is None or (isinstance(value, DictConfig) and "_target_" in value):
                leaves.append((sub, value))
            elif isinstance(value, DictConfig):
                walk(value, sub)
            else:
                raise ConfigError(f"{who}: ablate.{sub}={value!r}: a part is swapped for null (removed) or for a node "
                                  f"with a _target_ (replaced)")

    walk(swaps, "")
    resolved = []
    for path, value in leaves:
        parent_path, _, key = path.rpartition(".")
        parent = OmegaConf.select(cfg.model, parent_path) if parent_path else cfg.model
        if not isinstance(parent, DictConfig) or key not in parent or (value is None and parent[key] is None):
            state = "is off" if isinstance(parent, DictConfig) and key in parent else "is not one of its parts"
            raise ConfigError(f"{who} swaps model part '{path}', which {model} does not have (it {state}); "
                              f"choose a model with that part (its yaml in conf/model/)")
        resolved.append((path, None if value is None else OmegaConf.to_container(value, resolve=True)))
    for path, value in resolved:
        OmegaConf.update(cfg.model, path, value, merge=False, force_add=True)


def check_targets(cfg: DictConfig) -> None:
    """Every key of every ``_target_`` node must be a parameter of its target, so a misspelt key (``cmcl.tua``)
    fails at start-up, naming its path, instead of being silently ignored. Targets taking ``**kwargs`` (Lightning
    loggers and callbacks) are checked by their own code."""
    from hydra.utils import get_object

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                try:
                    params = inspect.signature(get_object(target)).parameters
                except Exception as e:
                    raise ConfigError(f"{path or '<root>'}._target_: cannot import {target!r} ({e})") from e
                if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                    unknown = [k for k in node if not str(k).startswith("_") and k not in params]
                    if unknown:
                        takes = [n for n, p in params.items() if p.kind != p.VAR_POSITIONAL]
                        raise ConfigError(f"{path or '<root>'}: unknown key(s) {unknown} for {target} "
                                          f"(it takes: {', '.join(takes)})")
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    root = OmegaConf.to_container(cfg, resolve=False)
    walk({k: v for k, v in root.items() if k != "hydra"}, "")  # Hydra checks its own nodes


def typed(cfg: DictConfig, key: str, kind: type, optional: bool = False):
    """The value at ``key`` (a dotted path) if it is a ``kind`` (an ``int`` for a ``float``; never a ``bool`` for a
    number), else a :class:`ConfigError` naming the key: ``trainer.max_epochs=abc`` is refused where it is read, not
    deep inside Lightning or torch."""
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    accepted = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
        raise ConfigError(f"{key} must be {'a number' if kind is float else f'an {kind.__name__}'}, got {value!r}")
    return value


def check_root_keys(cfg: DictConfig) -> None:
    """A top-level key of a run config that the root config (``conf/config.yaml``) does not have and no config group
    is named (``+seeed=1``, a misspelt ``+`` override) is an error, not a value no code reads."""
    known = {k for k in OmegaConf.load(conf_dir() / "config.yaml") if k != "defaults"}
    known |= {p.name for p in conf_dir().iterdir() if p.is_dir()} | {"hydra"}
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}: the root config (conf/config.yaml) takes "
                          f"{', '.join(sorted(known - {'hydra'}))}")


def run_dir(resume: str | None, new: str) -> str:
    """Hydra's run folder: the folder being resumed, or a new one."""
    return str(Path(resume).resolve()) if resume else new


def hydra_subdir(output_dir: str) -> str | None:
    """Where Hydra records the command: ``.hydra`` in a new folder; in a folder that already has a record (a
    resume, or a run refused because the folder is taken) nothing (``None``), so a refused command leaves the
    folder as it was; an accepted resume writes its own record beside the original (:func:`record_dir`)."""
    return ".hydra" if not (Path(output_dir) / ".hydra" / "config.yaml").exists() else None


def record_dir(output_dir: str | Path) -> Path:
    """A new ``.hydra/<time>`` beside a folder's existing record, never over it."""
    import time

    return Path(output_dir) / ".hydra" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{time.perf_counter_ns() % 10**6:06d}"


def register_resolvers() -> None:
    for name, fn, cache in (("project_root", lambda: str(project_root()), False),
                            ("wandb_offline", wandb_offline, False), ("wandb_group", wandb_group, False),
                            ("recgoat_run_dir", run_dir, True), ("recgoat_hydra_subdir", hydra_subdir, True)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()
