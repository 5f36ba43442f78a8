"""Graph backends of the graph-attention and LightGCN layers: PyG (default) or DGL (optional).

DGL's PyPI wheels stop at torch 2.2 and are CPU-only, so it is never a dependency: this module imports
it only when ``backend="dgl"`` is selected, and fails then with a message that says how to get it. Both
backends hold the same parameters under the same names (PyG's), so a checkpoint loads under either.
"""
from __future__ import annotations

from torch import nn

BACKENDS = ("pyg", "dgl")

DGL_INSTALL_HINT = (
    "DGL's PyPI wheels need torch <= 2.2.1 (CPU only), so it lives in an environment of its own: "
    "`make test-dgl` builds one (.venv-dgl: torch==2.2.1, dgl==2.1.0, torchdata==0.7.1, setuptools<70, "
    "numpy<2) and runs the parity tests there; or keep model.backend=pyg")


class BackendUnavailable(ImportError):
    """The selected graph backend cannot be imported here."""


def check_backend(backend: str) -> str:
    """Validate ``backend`` and, for DGL, import it now (at start-up, not at the first forward pass)."""
    if backend not in BACKENDS:
        raise ValueError(f"model.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "dgl":
        try:
            import dgl  # noqa: F401
        except Exception as e:  # ImportError, or DGL's own error when its C++ libraries miss this torch
            raise BackendUnavailable(
                f"model.backend=dgl needs DGL, which cannot be imported here "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). {DGL_INSTALL_HINT}") from e
    return backend


def gat_conv(backend: str, in_channels: int, out_channels: int, heads: int, negative_slope: float,
             dropout: float) -> nn.Module:
    """One multi-head graph-attention layer (``heads x out_channels`` outputs, concatenated)."""
    if check_backend(backend) == "dgl":
        from recgoat.nn.dgl_backend import DGLGATConv
        return DGLGATConv(in_channels, out_channels, heads=heads, negative_slope=negative_slope, dropout=dropout)
    from recgoat.nn.fused_gat import FusedGATConv
    return FusedGATConv(in_channels, out_channels, heads=heads, negative_slope=negative_slope, dropout=dropout)


def lightgcn_propagation(backend: str, n_layers: int) -> nn.Module:
    """LightGCN's parameter-free propagation over a normalised sparse adjacency (:class:`LightGCNPropagation`)
    in the graph library ``backend``."""
    if check_backend(backend) == "dgl":
        from recgoat.nn.dgl_backend import DGLLightGCNPropagation
        return DGLLightGCNPropagation(n_layers)
    from recgoat.nn.lightgcn import LightGCNPropagation
    return LightGCNPropagation(n_layers)
