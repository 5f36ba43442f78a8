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


def _accepts(annotation, value) -> bool | None:
    """Whether ``value`` (from YAML or the command line) fits ``annotation``; ``None`` for annotations this check does
    not know (classes, callables: their own code checks them). A union takes what one of its members takes."""
    import types
    import typing

    import torch

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        fits = [_accepts(a, value) for a in typing.get_args(annotation)]
        return True if any(fits) else (None if any(f is None for f in fits) else False)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is torch.Tensor:   # never a value of a config
        return False
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return None


def _init_hints(obj) -> dict:
    """The annotations of a target's parameters, through the ``__init__`` of its bases where a subclass passes
    ``**kwargs`` on (a Lightning callback's); annotations that do not evaluate here are left to the target."""
    import typing

    if not inspect.isclass(obj):
        try:
            return typing.get_type_hints(obj)
        except Exception:
            return {}
    hints: dict = {}
    for cls in obj.__mro__:
        if "__init__" in vars(cls) and cls is not object:
            try:
                found = typing.get_type_hints(cls.__init__)
            except Exception:
                continue
            hints.update({k: v for k, v in found.items() if k not in hints})
    return hints


def _type_name(annotation) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def check_targets(cfg: DictConfig) -> None:
    """One pass over every ``_target_`` node, before any work: every key must be a parameter of its target (a
    misspelt key, ``cmcl.tua``, fails naming its path instead of being silently ignored; targets taking ``**kwargs``,
    Lightning's loggers and callbacks, are checked by their own code), and every value must fit the parameter's
    annotation (``model.embedding_dim=abc`` fails naming the key, the value and the type it takes, not deep in torch
    or after an epoch)."""
    from hydra.utils import get_object

    def walk(node, raw, path: str) -> None:   # raw: the same node unresolved (to name an interpolation's source)
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                where = path or "<root>"
                try:
                    obj = get_object(target)
                    params = inspect.signature(obj).parameters
                except Exception as e:
                    raise ConfigError(f"{where}._target_: cannot import {target!r} ({e})") from e
                if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                    unknown = [k for k in node if not str(k).startswith("_") and k not in params]
                    if unknown:
                        takes = [n for n, p in params.items() if p.kind != p.VAR_POSITIONAL]
                        raise ConfigError(f"{where}: unknown key(s) {unknown} for {target} "
                                          f"(it takes: {', '.join(takes)})")
                hints = _init_hints(obj)
                for key, value in node.items():
                    source = raw.get(key) if isinstance(raw, dict) else None
                    if isinstance(value, dict) and "_target_" in value or isinstance(value, str) and "${" in value:
                        continue   # a component, or an interpolation left unresolved outside a Hydra app
                    if key in hints and _accepts(hints[key], value) is False:
                        via = f" (from {source})" if isinstance(source, str) and "${" in source else ""
                        raise ConfigError(f"{where}.{key}={value!r}{via}: {target} takes {_type_name(hints[key])} "
                                          f"there")
            for k, v in node.items():
                walk(v, raw.get(k) if isinstance(raw, dict) else None, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, raw[i] if isinstance(raw, list) and i < len(raw) else None, f"{path}[{i}]")

    raw = OmegaConf.to_container(cfg, resolve=False)
    try:
        root = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that resolves only inside a Hydra app: its node is checked unresolved
        root = raw
    walk({k: v for k, v in root.items() if k != "hydra"}, raw, "")  # Hydra checks its own nodes


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


def threads_per_job(jobs: int, threads: int | None) -> int | None:
    """Torch threads for each of ``jobs`` processes sharing this machine: ``threads`` when set, else the cores (this
    process may use) divided by ``jobs`` when there are several, else ``None`` (torch's own choice). Without it each
    job would take every core: a run beside two single-thread runs on 2 cores took 68 s per epoch against 1.25 s."""
    import os
    if threads is not None:
        return threads
    if jobs <= 1:
        return None
    return max(1, len(os.sched_getaffinity(0)) // jobs)


def run_dir(resume: str | None, new: str) -> str:
    """Hydra's run folder: the folder being resumed, or a new one."""
    return str(Path(resume).resolve()) if resume else new


def hydra_subdir(output_dir: str) -> str | None:
    """Where Hydra records the leaderboard's command: ``.hydra`` in a new folder, nothing in a folder that already
    has a record (a restart)."""
    return ".hydra" if not (Path(output_dir) / ".hydra" / "config.yaml").exists() else None


def register_resolvers() -> None:
    for name, fn, cache in (("project_root", lambda: str(project_root()), False),
                            ("wandb_offline", wandb_offline, False), ("wandb_group", wandb_group, False),
                            ("recgoat_run_dir", run_dir, True), ("recgoat_hydra_subdir", hydra_subdir, True)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


register_resolvers()
