"""The one owner of what a recgoat checkpoint carries besides Lightning's state: written by the training module,
read by resume, ``recommend`` and ``export``."""
from __future__ import annotations

from pathlib import Path

import torch

from recgoat.data import RecDataset

META_KEY = "recgoat"  # the checkpoint entry with the run's config, the data's fingerprint and the id maps


class CheckpointError(ValueError):
    """A checkpoint is unreadable, not recgoat's, or does not match the data."""


def metadata(run_config: dict, dataset: RecDataset) -> dict:
    """What ``recommend`` and ``export`` need to rebuild the model and map ids, without the run folder."""
    return {"config": run_config,
            "dataset": {**dataset.stats(), "fingerprint": dataset.fingerprint()},
            "user_ids": dataset.user_ids.tolist(),
            "item_ids": dataset.item_ids.tolist()}


def read_metadata(ckpt: dict) -> dict:
    """The :func:`metadata` of a checkpoint read by :func:`read_checkpoint`."""
    return ckpt[META_KEY]


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for damaged files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or META_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a recgoat checkpoint (no 'recgoat' metadata); "
                              f"checkpoints are written by python -m recgoat.run")
    return ckpt


def data_mismatch(ckpt_path, recorded: dict, dataset: RecDataset) -> str | None:
    """``None`` when ``dataset`` has the fingerprint a checkpoint recorded (``recorded``: its ``recgoat.dataset``
    entry), else what differs."""
    if dataset.fingerprint() == recorded["fingerprint"]:
        return None
    return (f"{ckpt_path}: trained on dataset '{recorded['name']}' ({recorded['n_users']} users, "
            f"{recorded['n_items']} items, fingerprint {recorded['fingerprint'][:12]}), but the data loaded now is "
            f"'{dataset.name}' ({dataset.n_users} users, {dataset.n_items} items, fingerprint "
            f"{dataset.fingerprint()[:12]})")


def check_start(ckpt_path, ckpt: dict, dataset: RecDataset, model: torch.nn.Module) -> None:
    """A checkpoint a new run starts from (``ckpt_path=``) must hold weights of this model, trained on this data."""
    meta = read_metadata(ckpt)
    mismatch = data_mismatch(ckpt_path, meta["dataset"], dataset)
    if mismatch:
        raise CheckpointError(f"ckpt_path={ckpt_path}: {mismatch}; start from a checkpoint of this data")
    def shapes(state: dict) -> dict:   # extra state (the OT map's warm potentials) is a list: its presence counts
        return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in state.items()}
    theirs = shapes({k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    ours = shapes(model.state_dict())
    differ = sorted(k for k in theirs.keys() & ours.keys() if theirs[k] != ours[k])
    if theirs.keys() != ours.keys() or differ:
        trained = (meta.get("config") or {}).get("model", {}).get("_target_", "?")
        if theirs.keys() != ours.keys():
            missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
            detail = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        else:
            detail = f"{differ[0]} is {list(theirs[differ[0]])} there, {list(ours[differ[0]])} here"
        raise CheckpointError(f"ckpt_path={ckpt_path}: its weights are a {trained}'s, which do not fit this run's "
                              f"{type(model).__name__} ({detail}); start from a checkpoint of the same model and "
                              f"config")
