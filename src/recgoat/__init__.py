"""recgoat: LLM-enhanced multimodal recommendation (RecGOAT) on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
