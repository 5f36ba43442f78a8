"""Reusable layers and losses."""
from recgoat.nn.alignment import Alignment
from recgoat.nn.backends import BACKENDS, BackendUnavailable, check_backend, lightgcn_propagation
from recgoat.nn.branches import ModalityBranches, UserLMBranch
from recgoat.nn.cmcl import CMCL, cmcl_loss, info_nce
from recgoat.nn.fused_gat import FusedGATConv, edge_dropout
from recgoat.nn.fusion import AdaptiveFusion
from recgoat.nn.gat import AttentionPropagation, GraphAttentionEncoder, MLPEncoder
from recgoat.nn.lightgcn import LightGCNPropagation
from recgoat.nn.losses import embedding_norm_penalty
from recgoat.nn.oat import AdaptiveTransportMap, DimensionTransport, SinkhornW1, dimension_cost
from recgoat.nn.part import Part
from recgoat.nn.side_view import FeatureGates, SideView, ViewContrast, feature_tables

__all__ = ["BACKENDS", "CMCL", "AdaptiveFusion", "AdaptiveTransportMap", "Alignment", "AttentionPropagation",
           "BackendUnavailable", "DimensionTransport", "FeatureGates", "FusedGATConv", "GraphAttentionEncoder",
           "LightGCNPropagation", "MLPEncoder", "ModalityBranches", "Part", "SideView", "SinkhornW1",
           "UserLMBranch",
           "ViewContrast", "check_backend", "cmcl_loss", "dimension_cost", "edge_dropout",
           "embedding_norm_penalty", "feature_tables", "info_nce", "lightgcn_propagation"]
