"""Loading a trained model from a checkpoint alone: config, dataset check, weights, id maps."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recgoat.data import RecDataset
from recgoat.models.base import Recommender
from recgoat.training.checkpoint import CheckpointError, data_mismatch, read_checkpoint, read_metadata

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Recommender
    dataset: RecDataset
    config: dict
    meta: dict

    @property
    def user_ids(self) -> np.ndarray:
        return self.dataset.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.dataset.item_ids


def load_model(ckpt_path: str | Path, dataset_overrides: dict | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint on the data it was trained on, in eval mode.

    The dataset is re-read from the checkpoint's config (optionally with ``dataset_overrides``,
    e.g. a moved ``path``) and must have the fingerprint recorded at training time.
    """
    ckpt = read_checkpoint(ckpt_path)
    meta = read_metadata(ckpt)
    config = meta["config"]
    if not config:
        raise CheckpointError(f"{ckpt_path}: the checkpoint carries no run config")
    cfg = OmegaConf.create(config)
    if dataset_overrides:
        cfg.dataset = OmegaConf.merge(cfg.dataset, dataset_overrides)
    try:
        dataset = instantiate(cfg.dataset)
    except Exception as e:
        path = cfg.dataset.get("path")
        raise CheckpointError(
            f"{ckpt_path}: the data of its run could not be loaded ({e}); the dataset config comes from the "
            f"checkpoint (path {path!r}, read relative to the current directory {Path.cwd()} if relative); "
            f"point at the data with +dataset.path=<folder>") from e
    mismatch = data_mismatch(ckpt_path, meta["dataset"], dataset)
    if mismatch:
        raise CheckpointError(f"{mismatch}; the checkpoint belongs to different data")
    for key in ("user_ids", "item_ids"):
        now = [str(x) for x in getattr(dataset, key)]
        if now != [str(x) for x in meta[key]]:
            raise CheckpointError(f"{ckpt_path}: the dataset's {key} differ from those saved at training time")
    model = instantiate(cfg.model)(dataset=dataset)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt_path}: weights do not fit the configured model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    return LoadedModel(model=model, dataset=dataset, config=config, meta=meta)
