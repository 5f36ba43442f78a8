"""Top-K recommendations from a trained checkpoint.

    python -m recgoat.recommend ckpt=<path> k=20                       # all users, JSONL to stdout
    python -m recgoat.recommend ckpt=<path> users=[A1HK2FQW6KXQB2,A19K65VY14D13R] out=recs.csv format=csv
    python -m recgoat.recommend ckpt=<path> users=users.txt exclude_valid=true

Users are given by their original ids (a list, or a file with one id per line); unknown ids are
reported, not fatal. Final representations are computed once; users are ranked in batches, so
memory is bounded by ``batch_size x n_items`` scores. Training items are excluded by default.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from recgoat.eval import top_k
from recgoat.graphs import DeviceCSR
from recgoat.inference import LoadedModel, load_model
from recgoat.utils.config import conf_dir, typed
from recgoat.utils.io import check_output

log = logging.getLogger("recgoat")


def resolve_users(loaded: LoadedModel, users) -> tuple[np.ndarray, list[str]]:
    """(user indices, unknown raw ids) for ``users``: None (all), a list of ids, or a file path."""
    if users is None:
        return np.arange(loaded.dataset.n_users), []
    if isinstance(users, (list, tuple, ListConfig)):
        raw = [str(u) for u in users]
    else:
        path = Path(str(users))
        if not path.is_file():
            raise FileNotFoundError(f"users={users}: not a file (give a file with one user id per line, "
                                    f"or a list: users=[id1,id2])")
        raw = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    index = {str(u): i for i, u in enumerate(loaded.user_ids)}
    known = [index[u] for u in raw if u in index]
    unknown = [u for u in raw if u not in index]
    return np.asarray(known, dtype=np.int64), unknown


def recommend(loaded: LoadedModel, users: np.ndarray, k: int = 20, exclude_seen: bool = True,
              exclude_valid: bool = False, batch_size: int = 1024, item_chunk: int | None = None,
              device: str = "cpu") -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(user index, item indices [<=k], scores)`` per user, best first.

    Excluded items never appear (when fewer than ``k`` items remain, fewer are returned).
    """
    for name, value in (("k", k), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    d = loaded.dataset
    masks = ([DeviceCSR(d.train)] if exclude_seen else []) + ([DeviceCSR(d.valid)] if exclude_valid else [])
    with torch.no_grad():
        scorer = loaded.model.scorer()
        for start in range(0, len(users), batch_size):
            batch = torch.as_tensor(users[start:start + batch_size], device=device)
            vals, items = top_k(scorer, batch, k, d.n_items, masks=masks, item_chunk=item_chunk)
            vals, items = vals.cpu().numpy(), items.cpu().numpy()
            for row, u in enumerate(batch.tolist()):
                keep = np.isfinite(vals[row])
                yield u, items[row][keep], vals[row][keep]


def write_recommendations(rows, loaded: LoadedModel, out, fmt: str) -> int:
    n = 0
    if fmt == "jsonl":
        for u, items, scores in rows:
            out.write(json.dumps({"user": _plain(loaded.user_ids[u]),
                                  "items": [_plain(loaded.item_ids[i]) for i in items],
                                  "scores": [round(float(s), 6) for s in scores]}) + "\n")
            n += 1
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["user", "rank", "item", "score"])
        for u, items, scores in rows:
            for rank, (i, s) in enumerate(zip(items, scores, strict=False), start=1):
                writer.writerow([loaded.user_ids[u], rank, loaded.item_ids[i], f"{float(s):.6f}"])
            n += 1
    else:
        raise ValueError(f"format must be 'jsonl' or 'csv', got {fmt!r}")
    return n


def _plain(x):
    return x.item() if isinstance(x, np.generic) else x


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="recommend")
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    if cfg.format not in ("jsonl", "csv"):  # before any file is opened: no stray temporary file
        raise ValueError(f"format must be 'jsonl' or 'csv', got {cfg.format!r}")
    if typed(cfg, "k", int) < 1:
        raise ValueError(f"k must be a positive integer, got {cfg.k}")
    if cfg.out:
        check_output(cfg.out, "file")
    loaded = load_model(cfg.ckpt, dataset_overrides=cfg.get("dataset"), device=cfg.device)
    users, unknown = resolve_users(loaded, cfg.users)
    if unknown:
        log.warning("%d unknown user id(s) skipped: %s%s", len(unknown), ", ".join(unknown[:10]),
                    " ..." if len(unknown) > 10 else "")
    rows = recommend(loaded, users, k=cfg.k, exclude_seen=cfg.exclude_seen, exclude_valid=cfg.exclude_valid,
                     batch_size=cfg.batch_size, item_chunk=cfg.item_chunk, device=cfg.device)
    if cfg.out:
        out_path = Path(cfg.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                n = write_recommendations(rows, loaded, f, cfg.format)
            tmp.replace(out_path)  # a complete file or none
        finally:
            tmp.unlink(missing_ok=True)
    else:
        n = write_recommendations(rows, loaded, sys.stdout, cfg.format)
    log.info("top-%d for %d user(s) in %.2fs%s", cfg.k, n, time.perf_counter() - t0,
             f" -> {cfg.out}" if cfg.out else "")


if __name__ == "__main__":
    main()
