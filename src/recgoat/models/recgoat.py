"""RecGOAT: graph-attention encoders, dual alignment (CMCL + OAT), adaptive fusion.

See ../shared/docs/method.md. Data flow of one forward pass (all users and items):

    x^u --proj--> GAT(G_uu) --> z^llm_u ---------+ (added to E_u: layer-0 user embedding)
    E_u, E_i ------------------------------------+--> LightGCN(G_ui) --> z_u, z^id_i
    x^m --proj--> GAT(G_ii^m) --> z^m_i --OAT map (d T* + Delta^m)--> z~^m_i
    z_i = normalize(dropout(LayerNorm(w_id z^id_i + sum_m w_m z~^m_i)))      score = <z_u, z_i>

    loss = BPR + reg * EmbLoss(ego) + lambda_cl * CMCL(z~^m, z) + lambda_ot * sum_m S_eps(z~^m, z^id)
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from recgoat.data import DataError, RecDataset
from recgoat.graphs import bipartite_adjacency, normalized_bipartite_adjacency, row_mean
from recgoat.graphs.cache import cached_sparse
from recgoat.graphs.knn import KNN_BUILDER_VERSION, edge_index, knn_adjacency
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, id_embedding
from recgoat.models.inputs import fill_missing_rows, item_modalities
from recgoat.nn import (
    AdaptiveFusion,
    AdaptiveTransportMap,
    AttentionPropagation,
    ConstantSparse,
    CSRGraph,
    DimensionTransport,
    GraphAttentionEncoder,
    SinkhornW1,
    SparseOperator,
    bpr_loss,
    cmcl_loss,
    embedding_norm_penalty,
)
from recgoat.nn.backends import graph_backend, lightgcn_propagation

log = logging.getLogger(__name__)

FUSION_MODES = ("adaptive", "naive")
UI_ENCODERS = ("lightgcn", "attention")
USER_FUSIONS = ("id", "fused")


def knn_graph(x: np.ndarray, k: int, cache_dir, builder: str) -> CSRGraph:
    adj = cached_sparse(cache_dir, builder, KNN_BUILDER_VERSION, {"features": x},
                        {"k": k, "symmetric": True, "self_loops": True},
                        lambda: knn_adjacency(x, k, symmetric=True, self_loops=True))
    return CSRGraph(edge_index(adj), adj.shape[0])


class RecGOAT(Recommender):
    """RecGOAT recommender.

    Args:
        dataset: must have at least one item modality; user features for the user LM branch.
        embedding_dim: d.
        n_layers: propagation layers over the user-item graph.
        reg_weight: weight of the ego-embedding penalty (MMRec's EmbLoss).
        modalities: item modalities to use (default: all of the dataset's).
        ui_encoder: ``{type: lightgcn|attention, heads, dropout, negative_slope}``: the ID branch's propagation
            over ``G_ui``: LightGCN (default) or graph attention layers averaged the same way
            (:class:`AttentionPropagation`, design option of method.md).
        item_encoder: ``{k, n_layers, heads, dropout, negative_slope, attention}`` per modality.
        user_encoder: ``{enabled, graph, k, n_layers, heads, dropout, negative_slope}``; ``graph=false``
            encodes user features without the user-user graph.
        cmcl: ``{weight, tau}``.
        oat_map: ``{enabled, eps, cost_scale, normalize_cost, scaling, tol, warm_start}`` (dimension-level
            transport map; see :class:`DimensionTransport`).
        oat_w1: ``{weight, blur, scaling, max_points}`` (Sinkhorn-divergence loss).
        fusion: ``{mode: adaptive|naive, init: {name: w}, default_init, dropout, normalize}``; ``naive`` adds
            linear projections of the raw features to the ID item embeddings (no GAT, no alignment).
        encoder: ``{backend: pyg|dgl}``: the graph library of the attention and LightGCN layers (DGL optional,
            same parameters: a checkpoint loads under either).
        missing_features: ``error`` or ``mean`` for all-zero feature rows.
        cache_dir: where built kNN graphs are cached (``None``: no cache).
    """

    def __init__(self, dataset: RecDataset, embedding_dim: int = 64, n_layers: int = 3, reg_weight: float = 1e-4,
                 modalities: list[str] | None = None, ui_encoder: dict | None = None, item_encoder: dict | None = None,
                 user_encoder: dict | None = None, cmcl: dict | None = None, oat_map: dict | None = None,
                 oat_w1: dict | None = None, fusion: dict | None = None, encoder: dict | None = None,
                 missing_features: str = "error", cache_dir: str | None = None):
        super().__init__(dataset.n_users, dataset.n_items)
        backend = graph_backend(encoder)  # fails now, at start-up, if DGL is selected and missing
        item_encoder = {**(item_encoder or {}), "backend": backend}
        user_encoder = {**(user_encoder or {}), "backend": backend}
        self.cmcl_cfg = {"weight": 0.032, "tau": 0.2, **(cmcl or {})}
        oat_map = {"enabled": True, **(oat_map or {})}
        self.w1_cfg = {"weight": 0.05, **(oat_w1 or {})}
        fusion = {"mode": "adaptive", **(fusion or {})}
        self.fusion_mode = fusion.pop("mode")
        if self.fusion_mode not in FUSION_MODES:
            raise ValueError(f"fusion.mode must be one of {FUSION_MODES}, got {self.fusion_mode!r}")
        features = item_modalities(dataset, "RecGOAT", modalities, missing_features)
        names = list(features)
        self.modalities = names
        self.reg_weight = reg_weight
        d = embedding_dim

        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        self.graphs = nn.ModuleDict()  # CSRGraph buffers: derived from the data, not checkpointed
        ui_encoder = dict(ui_encoder or {})
        self.ui_encoder = ui_encoder.pop("type", "lightgcn")
        if self.ui_encoder == "lightgcn":
            self.propagate = lightgcn_propagation(backend, n_layers)
            self.adj = ConstantSparse(normalized_bipartite_adjacency(dataset.train))  # not a buffer: see ConstantSparse
        elif self.ui_encoder == "attention":
            self.propagate = AttentionPropagation(d, n_layers, backend=backend, **ui_encoder)
            self.graphs["user_item"] = CSRGraph(edge_index(bipartite_adjacency(dataset.train)),
                                                self.n_users + self.n_items)
        else:
            raise ValueError(f"ui_encoder.type must be one of {UI_ENCODERS}, got {self.ui_encoder!r}")

        k_items = int(item_encoder.pop("k", 20))
        self.encoders = nn.ModuleDict()
        for m in names:
            x = features[m]
            self.register_buffer(f"x_{m}", torch.from_numpy(x), persistent=False)
            if self.fusion_mode == "naive":
                self.encoders[m] = nn.Linear(x.shape[1], d)
            else:
                self.encoders[m] = GraphAttentionEncoder(x.shape[1], d, **item_encoder)
                if self.encoders[m].attention:
                    self.graphs[m] = knn_graph(x, k_items, cache_dir, f"knn-item-{m}")

        self.user_branch = bool(user_encoder.pop("enabled", True)) and self.fusion_mode != "naive"
        if self.user_branch:
            if dataset.user_features is None:
                raise DataError(f"the user LM branch needs user features (user_pref_feat.npy) and dataset "
                                f"'{dataset.name}' has none; build them (python -m recgoat.features) or set "
                                f"model.user_encoder.enabled=false")
            use_graph = bool(user_encoder.pop("graph", True))
            k_users = int(user_encoder.pop("k", k_items))
            xu = fill_missing_rows("user features", dataset.user_features, missing_features)
            self.register_buffer("x_user", torch.from_numpy(xu), persistent=False)
            self.user_encoder = GraphAttentionEncoder(xu.shape[1], d, attention=use_graph, **user_encoder)
            if use_graph:
                self.graphs["user"] = knn_graph(xu, k_users, cache_dir, "knn-user")

        self.oat_map = None
        if oat_map.pop("enabled") and self.fusion_mode == "adaptive":
            transport = DimensionTransport(**oat_map)
            self.oat_map = nn.ModuleDict({m: AdaptiveTransportMap(d, transport, key=m) for m in names})
        self.user_fusion = fusion.pop("users", "id")
        if self.user_fusion not in USER_FUSIONS:
            raise ValueError(f"fusion.users must be one of {USER_FUSIONS}, got {self.user_fusion!r}")
        if self.user_fusion == "fused":
            self.user_items = SparseOperator(row_mean(dataset.train))
        if self.fusion_mode == "adaptive":
            self.fusion = AdaptiveFusion(["id", *names], d, **fusion)
        elif self.cmcl_cfg["weight"] or self.w1_cfg["weight"]:
            raise ValueError("fusion.mode=naive has no alignment: set model.cmcl.weight=0 and model.oat_w1.weight=0")
        w1 = {k: v for k, v in self.w1_cfg.items() if k != "weight"}
        self.w1 = SinkhornW1(**w1) if self.w1_cfg["weight"] else None

    # ---- representations ------------------------------------------------------------------
    def _graph(self, name: str) -> CSRGraph | None:
        return self.graphs[name] if name in self.graphs else None

    def encode_modalities(self) -> dict[str, Tensor]:
        """``z^m`` for every item, ``{m: [n_items, d]}``."""
        return {m: self.encoders[m](getattr(self, f"x_{m}"), self._graph(m)) for m in self.modalities}

    def representations(self) -> dict[str, Tensor | dict[str, Tensor]]:
        """All final representations: ``user``, ``item`` (fused), ``item_id``, ``aligned`` per modality."""
        users0 = self.user_emb
        if self.user_branch:
            with record_function("recgoat.user_branch"):
                users0 = users0 + self.user_encoder(self.x_user, self._graph("user"))
        items0 = self.item_emb
        if self.fusion_mode == "naive":
            items0 = items0 + sum(self.encoders[m](getattr(self, f"x_{m}")) for m in self.modalities)
        with record_function("recgoat.id_branch"):
            ui_graph = self.graphs["user_item"] if self.ui_encoder == "attention" else self.adj.on(users0.device)
            out = self.propagate(torch.cat([users0, items0]), ui_graph)
        users, item_id = out[: self.n_users], out[self.n_users:]
        if self.fusion_mode == "naive":
            return {"user": users, "item": item_id, "item_id": item_id, "aligned": {}}
        with record_function("recgoat.item_branches"):
            z = self.encode_modalities()
        aligned = z
        if self.oat_map is not None:
            with record_function("recgoat.oat_map"):
                aligned = {m: self.oat_map[m](z[m], item_id) for m in self.modalities}
        item = self.fusion({"id": item_id, **aligned})
        if self.user_fusion == "fused":  # users fused like items, from the mean of their items' aligned modalities
            users = self.fusion({"id": users, **{m: self.user_items(aligned[m]) for m in self.modalities}})
        return {"user": users, "item": item, "item_id": item_id, "aligned": aligned}

    # ---- the model API --------------------------------------------------------------------
    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        reps = self.representations()
        users, items = reps["user"], reps["item"]
        u, p, n = users[batch["user"]], items[batch["pos"]], items[batch["neg"]]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = embedding_norm_penalty(self.user_emb[batch["user"]], self.item_emb[batch["pos"]],
                                     self.item_emb[batch["neg"]])
        out = {"bpr": bpr, "reg": reg}
        total = bpr + self.reg_weight * reg
        batch_items = torch.unique(batch["pos"])
        if self.cmcl_cfg["weight"]:
            out["cmcl"] = cmcl_loss({m: z[batch_items] for m, z in reps["aligned"].items()}, items[batch_items],
                                    self.cmcl_cfg["tau"])
            total = total + self.cmcl_cfg["weight"] * out["cmcl"]
        if self.w1 is not None:
            with record_function("recgoat.oat_w1"):
                out["oat_w1"] = sum(self.w1(z[batch_items], reps["item_id"][batch_items])
                                    for z in reps["aligned"].values())
            total = total + self.w1_cfg["weight"] * out["oat_w1"]
        if self.fusion_mode == "adaptive":
            for name, w in zip(self.fusion.names, self.fusion.weights, strict=False):
                out[f"fusion_w_{name}"] = w.detach()
        out["loss"] = total
        return out

    @torch.no_grad()
    def scorer(self) -> Scorer:
        reps = self.representations()
        return EmbeddingScorer(reps["user"], reps["item"])
