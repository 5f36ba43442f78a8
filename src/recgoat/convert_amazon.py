"""python -m recgoat.convert_amazon reviews=<reviews_X_5.json.gz> meta=<meta_X.json.gz> out=<folder>

Turns raw Amazon review dumps into an MMRec folder (see :mod:`recgoat.data.amazon`), then:
    python -m recgoat.features dataset=mmrec dataset.path=<folder> features=amazon features.source.path=<folder>
    python -m recgoat.run dataset=mmrec dataset.path=<folder> model=recgoat
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from recgoat.data.amazon import convert_amazon
from recgoat.utils.config import conf_dir


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="convert_amazon")
def main(cfg: DictConfig) -> dict:
    return convert_amazon(cfg.reviews, cfg.out, meta=cfg.meta, name=cfg.name, user_k=cfg.user_k, item_k=cfg.item_k,
                          min_rating=cfg.min_rating, seed=cfg.seed)


if __name__ == "__main__":
    main()
