"""Export user and item embeddings of a trained checkpoint for a vector index.

    python -m recgoat.export ckpt=<path> out=<dir>

Writes ``user_embeddings.npy`` ``[n_users, d]``, ``item_embeddings.npy`` ``[n_items, d]``,
``user_ids.txt`` / ``item_ids.txt`` (row k = original id of row k) and ``manifest.json``. The
inner product of a user row and an item row is exactly the model's score, so FAISS
(``IndexFlatIP``) or any ANN service with inner-product similarity serves the same ranking.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from recgoat.inference import LoadedModel, load_model
from recgoat.models.base import EmbeddingScorer
from recgoat.utils.config import conf_dir
from recgoat.utils.io import check_output

log = logging.getLogger("recgoat")


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_embeddings(loaded: LoadedModel, out: str | Path, ckpt: str | Path | None = None) -> dict:
    """Write the embeddings, id maps and manifest into ``out``; returns the manifest."""
    scorer = loaded.model.scorer()
    if not isinstance(scorer, EmbeddingScorer):
        raise ValueError(f"{type(loaded.model).__name__} does not score by an inner product of embeddings; "
                         f"there is nothing to export for a vector index")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # write into a temporary folder first, then move: a failed export leaves no half-written set
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    users = scorer.user_emb.float().cpu().numpy()
    items = scorer.item_emb.float().cpu().numpy()
    np.save(staging / "user_embeddings.npy", users)
    np.save(staging / "item_embeddings.npy", items)
    (staging / "user_ids.txt").write_text("".join(f"{u}\n" for u in loaded.user_ids))
    (staging / "item_ids.txt").write_text("".join(f"{i}\n" for i in loaded.item_ids))
    manifest = {
        "model": loaded.config["model"]["_target_"].rsplit(".", 1)[-1],
        "dataset": loaded.meta["dataset"],
        "config_hash": config_hash(loaded.config),
        "checkpoint": str(ckpt) if ckpt else None,
        "dim": int(users.shape[1]),
        "n_users": int(users.shape[0]),
        "n_items": int(items.shape[0]),
        "score": "inner_product",
        "files": {"user_embeddings": "user_embeddings.npy", "item_embeddings": "item_embeddings.npy",
                  "user_ids": "user_ids.txt", "item_ids": "item_ids.txt"},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for p in staging.iterdir():
        os.replace(p, out / p.name)
    staging.rmdir()
    return manifest


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    check_output(cfg.out, "folder")
    loaded = load_model(cfg.ckpt, dataset_overrides=cfg.get("dataset"), device=cfg.device)
    manifest = export_embeddings(loaded, cfg.out, ckpt=cfg.ckpt)
    log.info("exported %d users x %d items (d=%d) to %s", manifest["n_users"], manifest["n_items"],
             manifest["dim"], cfg.out)


if __name__ == "__main__":
    main()
