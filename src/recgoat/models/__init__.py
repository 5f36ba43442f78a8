"""Recommenders, all on the narrow API of :mod:`recgoat.models.base`."""
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer
from recgoat.models.bpr import BPRMF
from recgoat.models.lightgcn import LightGCN
from recgoat.models.mostpop import MostPop
from recgoat.models.recgoat import RecGOAT

__all__ = ["BPRMF", "EmbeddingScorer", "LightGCN", "MostPop", "RecGOAT", "Recommender", "Scorer"]
