"""python -m recgoat.features dataset=<name> features=<source> [profile=template|llm|none]

Writes ``text_feat.npy``, ``image_feat.npy`` and ``user_pref_feat.npy`` with JSON provenance
sidecars into ``out_dir`` (default ``.cache/features/<dataset name>``, never committed).
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from recgoat.features.pipeline import build_features
from recgoat.utils.config import conf_dir

log = logging.getLogger("recgoat")


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="features")
def main(cfg: DictConfig) -> dict:
    t0 = time.perf_counter()
    with open_dict(cfg):
        if "feature_dir" in cfg.dataset:
            cfg.dataset.feature_dir = None  # the interactions only: these are the features being built
    dataset = instantiate(cfg.dataset)
    metadata = instantiate(cfg.features.source)
    text = instantiate(cfg.text_encoder) if cfg.text_encoder else None
    image = instantiate(cfg.image_encoder) if cfg.image_encoder and cfg.features.images else None
    with ExitStack() as stack:
        client = None
        if cfg.profile == "llm":
            server = stack.enter_context(instantiate(cfg.llm_server)) if cfg.get("llm_server") else None
            client = (instantiate(cfg.llm) if server is None else
                      instantiate(cfg.llm, base_url=server.base_url, model=server.model_name))
        summary = build_features(dataset, metadata, cfg.out_dir, list(cfg.features.text_fields),
                                 text_encoder=text, image_encoder=image, profile=cfg.profile,
                                 max_history=cfg.max_history, prompt_fields=list(cfg.features.prompt_fields),
                                 llm_client=client, llm_concurrency=cfg.llm_concurrency,
                                 without_answer=cfg.llm_without_answer, llm_users=cfg.llm_users,
                                 force=cfg.force)
    summary["wall_s"] = time.perf_counter() - t0
    log.info("features for %s:\n%s", dataset.name, json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
