"""Graph builders: user-item bipartite graph (with FREEDOM's pruning) and kNN graphs (``recgoat.graphs.knn``), and
:class:`DeviceCSR`, the one device-side form of a constant sparse matrix."""
from recgoat.graphs.csr import CSREdges, DeviceCSR
from recgoat.graphs.user_item import (
    bipartite_adjacency,
    degree_sensitive_pruning,
    normalized_bipartite_adjacency,
    row_mean,
    sym_normalize,
)

__all__ = ["CSREdges", "DeviceCSR", "bipartite_adjacency", "degree_sensitive_pruning", "normalized_bipartite_adjacency",
           "row_mean", "sym_normalize"]
