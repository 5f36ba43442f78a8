"""Recommenders, all on the narrow API of :mod:`recgoat.models.base`."""
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer
from recgoat.models.bpr import BPRMF
from recgoat.models.freedom import FREEDOM
from recgoat.models.lgmrec import LGMRec
from recgoat.models.lightgcn import LightGCN, NaiveFusion
from recgoat.models.mentor import MENTOR
from recgoat.models.mgcn import MGCN
from recgoat.models.mostpop import MostPop
from recgoat.models.recgoat import RecGOAT
from recgoat.models.smore import SMORE
from recgoat.models.vbpr import VBPR

__all__ = ["BPRMF", "FREEDOM", "MENTOR", "MGCN", "SMORE", "VBPR", "EmbeddingScorer", "LGMRec", "LightGCN", "MostPop",
           "NaiveFusion", "RecGOAT", "Recommender", "Scorer"]
