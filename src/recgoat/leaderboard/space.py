"""Search spaces (``conf/leaderboard/space/<name>.yaml``): the run overrides that make a model, and the
distribution of every key the search tunes.

    run: [model=lightgcn]
    params:
      optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.n_layers: {type: int, low: 1, high: 4}
      model.fusion.normalize: {type: categorical, choices: [true, false]}
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

SPEC_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"},
             "categorical": {"type", "choices"}}


class SpaceError(ValueError):
    """A search space file that cannot be used, with the file and key."""


@dataclass(frozen=True)
class Space:
    """One leaderboard entry: its name, the file it was read from, its fixed overrides and its parameters."""
    name: str
    path: Path
    text: str
    run: tuple[str, ...]
    params: dict[str, dict]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_space(space_dir: str | Path, name: str, loss: str | None = None) -> Space:
    """The search space of model ``name``; with ``loss`` (the ``conf/loss`` option the runs are given, by the
    leaderboard's ``run`` or the sweep's command line) the objective's own parameters
    (``<space_dir>/../loss/<loss>.yaml``, where the objective has any) join the model's, as one space (its text a
    space file of its own, so a leaderboard folder's copy reads back the same)."""
    space = _read_space(Path(space_dir) / f"{name}.yaml", name, space_dir)
    if loss is None:
        return space
    loss_path = Path(space_dir).parent / "loss" / f"{loss}.yaml"
    extra = _read_space(loss_path, loss, loss_path.parent) if loss_path.is_file() else None
    if extra is None:
        return space
    shared = sorted(space.params.keys() & extra.params.keys())
    if shared:
        raise SpaceError(f"{space.path} and {loss_path} both tune {shared}")
    params = {**space.params, **extra.params}
    run = (*space.run, *extra.run)
    text = (f"# {space.path.name} with loss={loss}'s parameters ({loss_path.name})\n"
            + yaml.safe_dump({"run": list(run), "params": params}, sort_keys=False))
    return Space(name=name, path=space.path, text=text, run=run, params=params)


def _read_space(path: Path, name: str, space_dir) -> Space:
    if not path.is_file():
        known = sorted(p.stem for p in Path(space_dir).glob("*.yaml"))
        raise SpaceError(f"models: no search space {path} for {name!r} (spaces in {space_dir}: {known})")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SpaceError(f"{path}: not valid YAML ({e})") from e
    unknown = set(raw) - {"run", "params"}
    if unknown or not isinstance(raw.get("run", []), list) or not isinstance(raw.get("params"), dict):
        raise SpaceError(f"{path}: a space has 'run' (a list of recgoat.run overrides) and 'params' (key: "
                         f"distribution); got keys {sorted(raw)}")
    for key, spec in raw["params"].items():
        where = f"{path}: params.{key}"
        if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
            raise SpaceError(f"{where}: needs type: float | int | categorical (got {spec!r})")
        extra = set(spec) - SPEC_KEYS[spec["type"]]
        if extra:
            raise SpaceError(f"{where}: unknown field(s) {sorted(extra)} for type {spec['type']} "
                             f"(it takes: {sorted(SPEC_KEYS[spec['type']])})")
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise SpaceError(f"{where}: categorical needs a non-empty list of choices")
        else:
            if "low" not in spec or "high" not in spec or not spec["low"] < spec["high"]:
                raise SpaceError(f"{where}: {spec['type']} needs low < high (got {spec.get('low')!r}, "
                                 f"{spec.get('high')!r})")
            if spec.get("log") and spec["low"] <= 0:
                raise SpaceError(f"{where}: a log range needs low > 0 (got {spec['low']})")
    return Space(name=name, path=path, text=text, run=tuple(str(o) for o in raw["run"]), params=dict(raw["params"]))


def suggest(trial, params: dict[str, dict]) -> dict:
    """The trial's value for every parameter, in the file's order."""
    values = {}
    for key, spec in params.items():
        if spec["type"] == "float":
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_categorical(key, spec["choices"])
    return values


def as_overrides(values: dict) -> list[str]:
    """Hydra command-line overrides for parameter values (``true``/``false``/``null`` as YAML writes them)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        return repr(v) if isinstance(v, float) else str(v)
    return [f"{k}={fmt(v)}" for k, v in values.items()]
