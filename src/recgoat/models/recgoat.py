"""RecGOAT: graph-attention encoders, dual alignment (CMCL + OAT), adaptive fusion.

See ../shared/docs/method.md. Data flow of one forward pass (all users and items):

    x^u --user_encoder(G_uu)--> z^llm_u ---------+ (w_llm z^llm_u added to E_u: layer-0 user embedding)
    E_u, E_i ------------------------------------+--> id_encoder(G_ui) --> z_u, z^id_i
    x^m --item_encoder(G_ii^m)--> z^m_i --OAT map (d T* + Delta^m)--> z~^m_i
    (id_item_graph_layers=L > 0: z^id_i += (S^L E_i)_i, S the mean of the modalities' kNN graphs, as FREEDOM;
     id_item_graph_users: z_u += (R^ S^L E_i)_u, the user's items' view, as MGCN's user side;
     id_item_graph_gate: S^L (E_i * sigmoid(sum_m W_m x^m + b)) instead, MGCN's purifier;
     side_view: z_u, z^id_i += MGCN's side view, its purifier gates reading x^m or, gate_input=given, z~^m)
    z_i = fusion(z^id_i, z~^m_i) = normalize(dropout(LayerNorm(w_id z^id_i + sum_m w_m z~^m_i)))
    score = <z_u, z_i>    (users=fused: z_u = fusion(z_u, mean of the user's items' z~^m);
                           users=propagated: z_u = fusion(z_u, R^ z~^m), R^ = D_u^-1/2 R D_i^-1/2 as in MGCN)

    loss = BPR + reg * EmbLoss(ego) + lambda_cl * CMCL(z~^m, z) + lambda_ot * sum_m S_eps(z~^m, z^id)
           (+ lambda_cl * CMCL(R^ z~^m, z_u) with cmcl_users; + lambda_v * (InfoNCE(S^L E, LightGCN items)
            + InfoNCE(R^ S^L E, LightGCN users)) with view_cl, MGCN's contrastive term)
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from recgoat.data import DataError, RecDataset
from recgoat.graphs import bipartite_adjacency, normalized_bipartite_adjacency, row_mean
from recgoat.graphs.cache import cached_sparse
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNN_BUILDER_VERSION, KNNSearch, knn_adjacency
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, id_embedding
from recgoat.models.freedom import frozen_item_graph
from recgoat.models.inputs import fill_missing_rows, item_modalities
from recgoat.nn import (
    CMCL,
    AdaptiveFusion,
    AdaptiveTransportMap,
    AttentionPropagation,
    DimensionTransport,
    SinkhornW1,
    SparseOperator,
    bpr_loss,
    check_backend,
    embedding_norm_penalty,
    info_nce,
)

log = logging.getLogger(__name__)

USER_FUSIONS = ("id", "fused", "propagated")
ITEM_INPUTS = ("features", "features_and_id", "gated_id")
ALIGN_TARGETS = ("trainable", "detached", "id")


def knn_graph(x: np.ndarray, k: int, cache_dir, builder: str, search: KNNSearch) -> DeviceCSR:
    return DeviceCSR(cached_sparse(cache_dir, builder, KNN_BUILDER_VERSION, {"features": x},
                                   {"k": k, "symmetric": True, "self_loops": True, **search.cache_params()},
                                   lambda: knn_adjacency(x, k, symmetric=True, self_loops=True, search=search)))


def bipartite_user_item_block(train, n_users: int):
    """``R^ = D_u^-1/2 R D_i^-1/2``, ``[n_users, n_items]``: the user-item block of the normalised adjacency."""
    return normalized_bipartite_adjacency(train)[:n_users, n_users:]


class RecGOAT(Recommender):
    """RecGOAT recommender. Every part is a component built from its own config node (``conf/model/recgoat.yaml``).

    Args:
        dataset: must have at least one item modality, and user features when ``user_encoder`` is set.
        embedding_dim: d.
        reg_weight: weight of the ego-embedding penalty (MMRec's EmbLoss).
        modalities: item modalities to use (``None``: all of the dataset's).
        missing_features: ``error`` or ``mean`` for all-zero feature rows.
        cache_dir: where built kNN graphs are cached (``None``: no cache).
        backend: ``pyg`` or ``dgl``, checked at start-up (the components name theirs).
        id_encoder: the ID branch's propagation over ``G_ui``, ``[n_users + n_items, d] -> same``: a
            LightGCN propagation (given the normalised adjacency) or an :class:`AttentionPropagation`
            (given the graph's edges; method.md's design option).
        item_encoder: ``(in_dim, dim) -> module`` encoding one modality's features over its item kNN graph
            (:class:`GraphAttentionEncoder`; ``attention=False`` is the "w/o graph attention" ablation).
        knn_k: neighbours per item of the item-item kNN graphs.
        item_input: ``features``: a modality branch encodes ``W_m x^m + b`` (method.md); ``features_and_id``:
            ``W_m x^m + b + E_i``, so its graph attention also spreads the items' ID embeddings over the modality's
            kNN graph, as FREEDOM's and MGCN's item-item views do (design option); ``gated_id``:
            ``E_i * sigmoid(W_m x^m + b)``, the ID embedding gated by the item's content (MGCN's behaviour-guided
            purifier), so the branch's graph attention spreads content-filtered collaborative signal (design option).
        id_item_graph_layers: ``L``; with ``L > 0`` the ID branch's items also carry their ID embeddings
            propagated ``L`` steps over the modalities' item kNN graphs, ``z^id = LightGCN(E)_items + S^L E_items``
            (FREEDOM's frozen item-item view; design option, 0: off). Items alike in content then share
            collaborative signal, also before they have many interactions.
        id_item_graph_k: ``k`` of ``S = mean_m D_m^-1/2 A_m D_m^-1/2``, ``A_m`` the directed top-``k`` cosine graph
            of modality ``m`` with the item itself among its ``k`` (FREEDOM's graph: ``S`` averages ``k`` items).
        id_item_graph_users: with ``L > 0``, the ID branch's users also get the view of their training items,
            ``z_u += (R^ S^L E_items)_u``, ``R^ = D_u^-1/2 R D_i^-1/2`` (MGCN's user side of its item-item views;
            design option). Without it only the items carry the view.
        id_item_graph_gate: the view spreads ``E_i * sigmoid(sum_m W_m x^m + b)`` instead of ``E_i``, the ID
            embeddings gated by the item's content (MGCN's behaviour-guided purifier; design option).
        side_view: ``(features, dim, r_hat, cache_dir) -> module``, MGCN's side view (:class:`MGCNSideView`:
            content-purified ID embeddings over each modality's kNN graph, users from their items, mixed by attention
            and by preference gates of the user-item view), added to the ID branch's users and items (design option:
            MGCN's multi-view ID branch under RecGOAT's modality branches, alignment and fusion), or ``None``.
        view_cl: with ``L > 0`` or ``side_view``, an InfoNCE term (:class:`CMCL` gives its weight and temperature)
            between two views of the ID embeddings over the batch's rows, duplicates included: the items' ``S^L E``
            against their LightGCN output, the users' ``R^ S^L E`` against theirs (MGCN's contrastive term between
            its item-item and user-item views; design option), or ``None``. With ``side_view`` it contrasts MGCN's
            side view with the user-item view instead, as MGCN does.
        knn_search: how the kNN graphs (item-item and user-user) find neighbours: :class:`ExactKNN` or the
            approximate :class:`IVFKNN`; part of the graph cache key.
        user_encoder: ``(in_dim, dim) -> module`` of the user LM branch, or ``None`` (no user LM branch).
        user_knn_k: neighbours per user of the user-user kNN graph.
        cmcl: the instance-level alignment term (:class:`CMCL`), or ``None``.
        oat_map: the dimension-level transport solver (:class:`DimensionTransport`) of the OAT map, or ``None``.
        oat_w1: the Sinkhorn-divergence term (:class:`SinkhornW1`), or ``None``.
        fusion: ``(names, dim) -> AdaptiveFusion`` of the ID and aligned modality item representations.
        align_to: ``trainable``: the alignment terms pull both sides (method.md); ``detached``: their ID-side
            targets (the fused item of CMCL, the ID items of W1) are constants, so alignment moves the modality
            representations towards the collaborative space and never the collaborative space itself (design option);
            ``id``: CMCL's target is the ID representation (``z^id``; with ``cmcl_users`` the ID users) instead of the
            fused one, trainable, so CMCL cannot be lowered by weighting the modality more in the fusion (design
            option).
        users: ``id``: the final user is the ID branch's output (method.md); ``fused``: users are fused
            like items, from their ID output and the mean of their training items' aligned modalities;
            ``propagated``: the same with the symmetrically normalised aggregate ``R^ z~^m`` of the user's
            items (MGCN's user side of its item-item views; design option).
        cmcl_users: with ``users`` fused or propagated, CMCL also pulls each user's modality views (``R^ z~^m`` or
            the mean) towards the fused user, over the batch's distinct users (design option).
    """

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, reg_weight: float, modalities: list[str] | None,
                 missing_features: str, cache_dir: str | None, backend: str, id_encoder: nn.Module,
                 item_encoder: Callable[..., nn.Module], knn_k: int, item_input: str, id_item_graph_layers: int,
                 id_item_graph_k: int, id_item_graph_users: bool, knn_search: KNNSearch,
                 user_encoder: Callable[..., nn.Module] | None,
                 user_knn_k: int, user_llm_init: float, cmcl: CMCL | None, oat_map: DimensionTransport | None,
                 oat_w1: SinkhornW1 | None,
                 fusion: Callable[..., AdaptiveFusion], align_to: str, users: str, cmcl_users: bool,
                 view_cl: CMCL | None, id_item_graph_gate: bool, side_view: Callable[..., nn.Module] | None):
        super().__init__(dataset.n_users, dataset.n_items)
        check_backend(backend)  # fails now, at start-up, if DGL is selected and missing
        if users not in USER_FUSIONS:
            raise ValueError(f"model.users must be one of {USER_FUSIONS}, got {users!r}")
        if item_input not in ITEM_INPUTS:
            raise ValueError(f"model.item_input must be one of {ITEM_INPUTS}, got {item_input!r}")
        self.item_input = item_input
        if align_to not in ALIGN_TARGETS:
            raise ValueError(f"model.align_to must be one of {ALIGN_TARGETS}, got {align_to!r}")
        self.align_detached = align_to == "detached"
        self.align_to_id = align_to == "id"
        features = item_modalities(dataset, "RecGOAT", modalities, missing_features)
        self.modalities = list(features)
        self.reg_weight = reg_weight
        d = embedding_dim

        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        self.graphs: dict[str, DeviceCSR] = {}  # derived from the data: rebuilt on load, not checkpointed
        self.id_encoder = id_encoder
        if isinstance(id_encoder, AttentionPropagation):
            self.graphs["user_item"] = DeviceCSR(bipartite_adjacency(dataset.train))
        else:
            self.graphs["user_item"] = DeviceCSR(normalized_bipartite_adjacency(dataset.train))

        if id_item_graph_layers < 0:
            raise ValueError(f"model.id_item_graph_layers must be >= 0, got {id_item_graph_layers}")
        self.id_item_graph_layers = id_item_graph_layers
        self.item_encoders = nn.ModuleDict()
        for m, x in features.items():
            self.register_buffer(f"x_{m}", torch.from_numpy(x), persistent=False)
            self.item_encoders[m] = item_encoder(in_dim=x.shape[1], dim=d)
            if getattr(self.item_encoders[m], "attention", False):
                self.graphs[m] = knn_graph(x, knn_k, cache_dir, f"knn-item-{m}", knn_search)
        if id_item_graph_users and not id_item_graph_layers:
            raise ValueError("model.id_item_graph_users=true needs model.id_item_graph_layers > 0")
        self.item_graph = None  # FREEDOM's graph, the modalities weighted equally
        self.item_view_users = None  # R^, the users' side of the view
        if view_cl is not None and not id_item_graph_layers and side_view is None:
            raise ValueError("model.view_cl needs model.id_item_graph_layers > 0 or model.side_view (the item-item "
                             "view it contrasts)")
        self.side_view = None
        if side_view is not None:
            self.side_view = side_view(features=features, dim=d, cache_dir=cache_dir,
                                       r_hat=bipartite_user_item_block(dataset.train, self.n_users))
        self.view_cl = view_cl
        self.id_item_graph_users = id_item_graph_users
        self.item_graph_gates = None  # content gates of the ID embeddings before the view (MGCN's purifier)
        if id_item_graph_gate:
            if not id_item_graph_layers:
                raise ValueError("model.id_item_graph_gate=true needs model.id_item_graph_layers > 0")
            self.item_graph_gates = nn.ModuleDict({m: nn.Linear(x.shape[1], d) for m, x in features.items()})
        if id_item_graph_layers:
            self.item_graph = frozen_item_graph(features, dict.fromkeys(features, 1.0 / len(features)),
                                                id_item_graph_k, cache_dir)
            if id_item_graph_users or (view_cl is not None and side_view is None):  # R^ S^L E: the users' view
                self.item_view_users = SparseOperator(bipartite_user_item_block(dataset.train, self.n_users))

        self.user_encoder = None
        if user_encoder is not None:
            if dataset.user_features is None:
                raise DataError(f"the user LM branch needs user features (user_pref_feat.npy) and dataset "
                                f"'{dataset.name}' has none; build them (python -m recgoat.features) or set "
                                f"model.user_encoder=null")
            xu = fill_missing_rows("user features", dataset.user_features, missing_features)
            self.register_buffer("x_user", torch.from_numpy(xu), persistent=False)
            self.user_encoder = user_encoder(in_dim=xu.shape[1], dim=d)
            self.user_llm_weight = nn.Parameter(torch.tensor(float(user_llm_init)))
            if getattr(self.user_encoder, "attention", False):
                self.graphs["user"] = knn_graph(xu, user_knn_k, cache_dir, "knn-user", knn_search)

        self.oat_map = None
        if oat_map is not None:
            self.oat_map = nn.ModuleDict({m: AdaptiveTransportMap(d, oat_map, key=m) for m in self.modalities})
        self.cmcl = cmcl
        self.oat_w1 = oat_w1
        self.fusion = fusion(names=["id", *self.modalities], dim=d)
        self.user_fusion = users
        if cmcl_users and (users == "id" or cmcl is None):
            raise ValueError("model.cmcl_users=true needs model.cmcl and model.users=fused or propagated (the users' "
                             f"modality views it aligns), got cmcl={'null' if cmcl is None else 'set'}, "
                             f"users={users!r}")
        self.cmcl_users = cmcl_users
        if users == "fused":
            self.user_items = SparseOperator(row_mean(dataset.train))
        elif users == "propagated":
            self.user_items = SparseOperator(bipartite_user_item_block(dataset.train, self.n_users))

    # ---- representations ------------------------------------------------------------------
    def _graph(self, name: str) -> DeviceCSR | None:
        return self.graphs[name] if name in self.graphs else None

    def encode_modalities(self) -> dict[str, Tensor]:
        """``z^m`` for every item, ``{m: [n_items, d]}``."""
        h0_add = self.item_emb if self.item_input == "features_and_id" else None
        h0_gated = self.item_emb if self.item_input == "gated_id" else None
        return {m: self.item_encoders[m](getattr(self, f"x_{m}"), self._graph(m), h0_add, h0_gated)
                for m in self.modalities}

    def aligned_modalities(self, item_id: Tensor) -> dict[str, Tensor]:
        """``z~^m``: the modality branches, mapped by OAT towards ``item_id`` when the OAT map is on."""
        with record_function("recgoat.item_branches"):
            aligned = self.encode_modalities()
        if self.oat_map is not None:
            with record_function("recgoat.oat_map"):
                aligned = {m: self.oat_map[m](aligned[m], item_id) for m in self.modalities}
        return aligned

    def representations(self) -> dict[str, Tensor | dict[str, Tensor]]:
        """All final representations: ``user``, ``item`` (fused), ``item_id``, ``aligned`` per modality."""
        users0 = self.user_emb
        if self.user_encoder is not None:
            with record_function("recgoat.user_branch"):
                users0 = users0 + self.user_llm_weight * self.user_encoder(self.x_user, self._graph("user"))
        with record_function("recgoat.id_branch"):
            ui_graph = self.graphs["user_item"]  # attention reads its edges, LightGCN multiplies by it
            if not isinstance(self.id_encoder, AttentionPropagation):
                ui_graph = ui_graph.matrix(users0.device)
            out = self.id_encoder(torch.cat([users0, self.item_emb]), ui_graph)
        users, item_id = out[: self.n_users], out[self.n_users:]
        views = {}  # the two views of the ID embeddings view_cl contrasts: user-item graph, item-item graph
        if self.item_graph is not None:
            with record_function("recgoat.id_item_graph"):
                h = self.item_emb
                if self.item_graph_gates is not None:
                    gates = self.item_graph_gates.items()
                    h = h * torch.sigmoid(sum(gate(getattr(self, f"x_{m}")) for m, gate in gates))
                for _ in range(self.id_item_graph_layers):
                    h = self.item_graph(h)
                h_users = self.item_view_users(h) if self.item_view_users is not None else None
                views = {"ui_user": users, "ui_item": item_id, "ii_user": h_users, "ii_item": h}
                item_id = item_id + h
                if self.id_item_graph_users:
                    users = users + h_users
        gated_by_aligned = self.side_view is not None and self.side_view.gate_input == "given"
        if gated_by_aligned:  # the side view's purifiers read the aligned modalities, mapped towards the view-less ID
            aligned = self.aligned_modalities(item_id)
        if self.side_view is not None:
            with record_function("recgoat.side_view"):
                side = self.side_view(self.item_emb, out, aligned if gated_by_aligned else None)
                views = {"ui_user": out[: self.n_users], "ui_item": out[self.n_users:],
                         "ii_user": side[: self.n_users], "ii_item": side[self.n_users:]}
                users, item_id = users + views["ii_user"], item_id + views["ii_item"]
        if not gated_by_aligned:
            aligned = self.aligned_modalities(item_id)
        item = self.fusion({"id": item_id, **aligned})
        user_aligned, user_id = {}, users
        if self.user_fusion != "id":
            user_aligned = {m: self.user_items(aligned[m]) for m in self.modalities}
            users = self.fusion({"id": users, **user_aligned})
        return {"user": users, "item": item, "item_id": item_id, "aligned": aligned, "user_aligned": user_aligned,
                "user_id": user_id, "views": views}

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
        fused_target, id_target = items[batch_items], reps["item_id"][batch_items]
        if self.align_to_id:  # CMCL's target is the ID representation, trainable: no way round it through the fusion
            fused_target = id_target
        if self.align_detached:
            fused_target, id_target = fused_target.detach(), id_target.detach()
        if self.cmcl is not None:
            out["cmcl"] = self.cmcl({m: z[batch_items] for m, z in reps["aligned"].items()}, fused_target)
            if self.cmcl_users:
                batch_users = torch.unique(batch["user"])
                user_target = (reps["user_id"] if self.align_to_id else users)[batch_users]
                user_target = user_target.detach() if self.align_detached else user_target
                out["cmcl_users"] = self.cmcl({m: z[batch_users] for m, z in reps["user_aligned"].items()},
                                              user_target)
                out["cmcl"] = out["cmcl"] + out["cmcl_users"]
            total = total + self.cmcl.weight * out["cmcl"]
        if self.oat_w1 is not None:
            with record_function("recgoat.oat_w1"):
                out["oat_w1"] = sum(self.oat_w1(z[batch_items], id_target) for z in reps["aligned"].values())
            total = total + self.oat_w1.weight * out["oat_w1"]
        if self.view_cl is not None:
            # over the batch's rows, duplicates included, as MGCN's term: a popular item is its own negative as often
            # as it occurs, which weakens the push apart of the items (and users) that occur most
            v, rows_u, rows_i = reps["views"], batch["user"], batch["pos"]
            out["view_cl"] = (info_nce(v["ii_item"][rows_i], v["ui_item"][rows_i], self.view_cl.tau)
                              + info_nce(v["ii_user"][rows_u], v["ui_user"][rows_u], self.view_cl.tau))
            total = total + self.view_cl.weight * out["view_cl"]
        for name, w in zip(self.fusion.names, self.fusion.weights, strict=True):
            out[f"fusion_w_{name}"] = w.detach()
        if self.user_encoder is not None:
            out["user_llm_w"] = self.user_llm_weight.detach()
        out["loss"] = total
        return out

    @torch.no_grad()
    def scorer(self) -> Scorer:
        reps = self.representations()
        return EmbeddingScorer(reps["user"], reps["item"])
