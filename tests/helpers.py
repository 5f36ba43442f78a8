"""Composing configs and running recgoat in-process or as the real CLI, for tests."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from recgoat.utils.config import conf_dir

TINY_DATA = ["debug=tiny"]  # conf/debug/tiny.yaml: 150 users, 100 items, 8-d text, 12-d image, 6-d user features
QUIET = ["trainer.enable_progress_bar=false", "logger=none"]


@functools.cache
def _yaml_node(path: str) -> dict:
    from omegaconf import OmegaConf

    from recgoat.utils.config import compose as compose_run
    return OmegaConf.to_container(OmegaConf.select(compose_run([]), path), resolve=True)


def from_yaml(path: str, **values):
    """The component at ``path`` of the default run config (``evaluation``, ``dataset``,
    ``model.alignment.oat_map``, ...) with its yaml's values, ``values`` replacing some: tests build components the
    way a run does, with no Python default anywhere."""
    from hydra.utils import instantiate
    return instantiate({**_yaml_node(path), **values})


def bpr_batches(dataset, **kwargs):
    """``BPRBatches`` over ``dataset`` with the default loss group's negatives (``conf/loss/bpr.yaml``: one uniform
    negative per pair); ``kwargs``: its other arguments."""
    from recgoat.training import BPRBatches
    return BPRBatches(dataset, negatives=from_yaml("loss.negatives")(dataset=dataset), **kwargs)


def bpr():
    """The default loss group's objective (``conf/loss/bpr.yaml``)."""
    return from_yaml("loss.objective")


def bpr_reference(pos, neg):
    """BPR written out, ``mean(-log sigmoid(pos - neg))``, the reference the objective is held to."""
    import torch
    return -torch.nn.functional.logsigmoid(pos - neg).mean()


def make_evaluator(train, **values):
    """The run's ``FullRankingEvaluator`` (``evaluation`` node) on ``train``."""
    return from_yaml("evaluation", **values)(train=train)


def synthetic(**values):
    """``make_synthetic`` with the built-in dataset's values (``conf/dataset/synthetic.yaml``), ``values`` replacing
    some."""
    return from_yaml("dataset", **values)


def make_transport(**values):
    """The published RecGOAT's ``DimensionTransport`` (``model.alignment.oat_map``), ``values`` replacing some."""
    return from_yaml("model.alignment.oat_map", **values)


def make_w1(**values):
    """The published RecGOAT's ``SinkhornW1`` (``model.alignment.oat_w1``), ``values`` replacing some."""
    return from_yaml("model.alignment.oat_w1", **values)


def compose_cfg(overrides: list[str], output_dir: Path):
    """The config `python -m recgoat.run <overrides>` would get, with its outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    from hydra.core.hydra_config import HydraConfig
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_in_process(overrides: list[str], output_dir: Path) -> dict:
    from recgoat.run import train
    cfg = compose_cfg(overrides, output_dir)
    model_name = cfg.hydra.runtime.choices.model
    with open_dict(cfg):
        del cfg["hydra"]
    return train(cfg, output_dir=output_dir, model_name=model_name)


def run_cli(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None,
            replace_env: bool = False) -> subprocess.CompletedProcess:
    """The real command line, from an unrelated working directory; raises with its output if it fails.
    ``env`` is added to this process's environment, or replaces it with ``replace_env``."""
    full_env = {**({} if replace_env else os.environ), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "recgoat.run", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"recgoat.run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def load_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def read_wandb_log(path: Path) -> list:
    """Records of a W&B ``run-<id>.wandb`` transaction log (LevelDB-style log of protobuf records).

    wandb writes the offline run's history, summary and config only into this file; there is no
    public reader, so tests parse it: a 7-byte file header, then 32 KiB blocks of chunks with a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B transaction log"
    records, pos, pending, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def binary_knn(x, k: int):
    """The graph-attention encoders' kNN graph of ``x``: ``k`` others per row, symmetric, with self-loops."""
    from recgoat.graphs.knn import ExactKNN, knn_graph
    return knn_graph(x, k, include_self=False, symmetric=True, self_loops=True, weighted=False,
                     search=ExactKNN(chunk=2048, device="cpu"))


def edge_index(adj):
    """PyG's ``edge_index`` ``[2, E]`` (source, target) of a (symmetric) scipy adjacency."""
    import numpy as np
    import scipy.sparse as sp
    import torch
    coo = sp.coo_matrix(adj)
    return torch.from_numpy(np.vstack([coo.col, coo.row]).astype(np.int64))
