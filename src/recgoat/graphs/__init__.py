"""Graph builders: user-item bipartite graph (with FREEDOM's pruning) and kNN graphs (``recgoat.graphs.knn``)."""
from recgoat.graphs.user_item import (
    bipartite_adjacency,
    degree_sensitive_pruning,
    normalized_bipartite_adjacency,
    row_mean,
    sym_normalize,
)

__all__ = ["bipartite_adjacency", "degree_sensitive_pruning", "normalized_bipartite_adjacency", "row_mean",
           "sym_normalize"]
