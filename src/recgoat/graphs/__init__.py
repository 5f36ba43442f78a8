"""Graph builders: user-item bipartite graph (and, with the RecGOAT model, kNN graphs)."""
from recgoat.graphs.user_item import bipartite_adjacency, normalized_bipartite_adjacency, sym_normalize

__all__ = ["bipartite_adjacency", "normalized_bipartite_adjacency", "sym_normalize"]
