"""Reusable layers and losses."""
from recgoat.nn.lightgcn import LightGCNPropagation
from recgoat.nn.losses import bpr_loss, embedding_norm_penalty
from recgoat.nn.sparse import spmm, to_torch_csr

__all__ = ["LightGCNPropagation", "bpr_loss", "embedding_norm_penalty", "spmm", "to_torch_csr"]
