r"""RecGOAT (Li et al., 2026): language-model branches aligned with a collaborative ID branch, then fused.

One forward pass, all users and items (docs/method.md; each line is a part, a node of the model's yaml:
``conf/model/recgoat.yaml``, the published method, has every part but the side view; ``recgoat_mgcn.yaml``, our
variant, the side view and no fusion or user branch):

.. math::
    E^{(0)}_u &= E_u + z^{llm}_u                                  && \text{user LM branch (optional)} \\
    E^{ui} &= \mathrm{LightGCN}(E^{(0)}_u, E_i;\, G_{ui})         && \text{ID branch} \\
    z^m &= \mathrm{GAT}_m(W_m x^m + b_m;\, G^m_{ii})              && \text{modality branches} \\
    \tilde z^m &= z^m (d\,T^*_m + \Delta^m), \; T^*_m = \mathrm{OT}(z^m, E^{ui}_{items}) && \text{alignment: OAT map} \\
    z^{id} &= E^{ui} + E^{side}(E_i, E^{ui}, \tilde z)             && \text{ID branch's side view (optional)} \\
    z_i &= \mathrm{fusion}(z^{id}_i, \tilde z^m_i) \text{ or } z^{id}_i,\quad z_u = z^{id}_u
                                                                  && \text{fusion (optional)} \\
    y(u, i) &= \langle z_u, z_i \rangle

Loss: :math:`\mathcal{L}_{BPR} + \lambda_{reg} \lVert E_B \rVert^2 + \lambda_{cl} \mathrm{CMCL}(\tilde z^m, z)
+ \lambda_{ot} \sum_m S_\varepsilon(\tilde z^m, z^{id}) + \lambda_{view} \mathcal{L}_{view}(E^{side}, E^{ui})`,
each term present when its part is.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from recgoat.data import DataError, RecDataset
from recgoat.graphs import normalized_bipartite_adjacency
from recgoat.graphs.csr import DeviceCSR
from recgoat.graphs.knn import KNNGraphs, KNNSearch
from recgoat.models.base import EmbeddingScorer, Recommender, Scorer, TrainingStep, id_embedding
from recgoat.models.side_features import fill_missing_rows, item_modalities
from recgoat.nn import check_backend, embedding_norm_penalty


class RecGOAT(Recommender):
    """RecGOAT, composed of its parts; each part is built from its own node of ``conf/model/recgoat.yaml``.

    Args:
        dataset: must have at least one item modality, and user features when ``user_branch`` is set.
        embedding_dim: d.
        reg_weight: weight of the ego-embedding penalty (MMRec's EmbLoss).
        modalities: item modalities to use (``None``: all of the dataset's).
        missing_features: ``error`` or ``mean`` for all-zero feature rows.
        backend: ``pyg`` or ``dgl``, checked at start-up (the parts name theirs).
        knn_search: how every kNN graph finds its neighbours (:class:`ExactKNN`, :class:`IVFKNN`).
        cache_dir: where built kNN graphs are cached (``None``: no cache).
        id_encoder: the ID branch's propagation ``(x, graph)`` over ``G_ui``, given as the normalised adjacency
            (:class:`LightGCNPropagation` multiplies by it, :class:`AttentionPropagation` reads its edges).
        side_view: ``(features, dim, r_hat, knn) -> SideView``, the ID branch's item-item side view with its
            contrastive term (MGCN's), its gates reading the aligned modalities; or ``None``.
        modality_branches: ``(features, dim, knn) -> ModalityBranches``.
        alignment: ``(modalities, dim) -> Alignment`` (CMCL, OAT map, W1), or ``None`` (no alignment).
        fusion: ``(names, dim) -> AdaptiveFusion``, or ``None``: the item is the ID branch's (the modalities then
            reach the score only through the side view's gates).
        user_branch: ``(features, dim, knn) -> UserLMBranch``, or ``None``.

    Every part is a :class:`~recgoat.nn.Part`: the loss is BPR, the ego-embedding penalty and the sum of what the
    present parts report (:meth:`~recgoat.nn.Part.loss_terms`); their logged scalars go to the logger.
    """

    PARTS = ("user_branch", "id_encoder", "modality_branches", "alignment", "side_view", "fusion")  # forward order

    def __init__(self, dataset: RecDataset, *, embedding_dim: int, reg_weight: float, modalities: list[str] | None,
                 missing_features: str, backend: str, knn_search: KNNSearch, cache_dir: str | None,
                 id_encoder: nn.Module, side_view: Callable[..., nn.Module] | None,
                 modality_branches: Callable[..., nn.Module], alignment: Callable[..., nn.Module] | None,
                 fusion: Callable[..., nn.Module] | None, user_branch: Callable[..., nn.Module] | None):
        super().__init__(dataset.n_users, dataset.n_items)
        check_backend(backend)  # fails now, at start-up, if DGL is selected and missing
        features = item_modalities(dataset, "RecGOAT", modalities, missing_features)
        knn = KNNGraphs(knn_search, cache_dir)
        d, self.reg_weight = embedding_dim, reg_weight
        # parameters in this order, so a seed gives the same initial weights as the method's presets always had
        self.user_emb = id_embedding(self.n_users, d)
        self.item_emb = id_embedding(self.n_items, d)
        self.id_encoder = id_encoder
        ui_adj = normalized_bipartite_adjacency(dataset.train)
        self.ui_graph = DeviceCSR(ui_adj)
        self.modality_branches = modality_branches(features=features, dim=d, knn=knn)
        self.side_view = None
        if side_view is not None:  # R^ = D_u^-1/2 R D_i^-1/2, the user-item block of the normalised adjacency
            self.side_view = side_view(features=features, dim=d, r_hat=ui_adj[: self.n_users, self.n_users:], knn=knn)
        self.user_branch = None
        if user_branch is not None:
            if dataset.user_features is None:
                raise DataError(f"the user LM branch needs user features (user_pref_feat.npy) and dataset "
                                f"'{dataset.name}' has none; build them (python -m recgoat.features) or set "
                                f"model.user_branch=null")
            xu = fill_missing_rows("user features", dataset.user_features, missing_features)
            self.user_branch = user_branch(features=xu, dim=d, knn=knn)
        self.alignment = alignment(modalities=list(features), dim=d) if alignment is not None else None
        self.fusion = fusion(names=["id", *features], dim=d) if fusion is not None else None

    def representations(self) -> dict[str, Tensor | dict[str, Tensor]]:
        """``user`` and ``item`` (what is scored), ``item_id`` (the ID branch's items), ``aligned`` per modality (and
        ``aligned_stacked``, the same ``[M, n_items, d]``), and the ID branch's two views
        ``{"ui": (users, items), "side": (users, items)}`` when it has the side view."""
        users0 = self.user_emb
        if self.user_branch is not None:
            with record_function("recgoat.user_branch"):
                users0 = users0 + self.user_branch()
        with record_function("recgoat.id_branch"):
            ui = self.id_encoder(torch.cat([users0, self.item_emb]), self.ui_graph)
        users, item_id = ui[: self.n_users], ui[self.n_users:]
        with record_function("recgoat.item_branches"):
            modal = self.modality_branches()
        stacked = torch.stack(list(modal.values()))                           # [M, n_items, d]
        if self.alignment is not None:  # towards the user-item view's items: the collaborative space before content
            stacked = self.alignment(stacked, item_id)
        aligned = dict(zip(modal, stacked.unbind(), strict=True))
        views = None
        if self.side_view is not None:
            with record_function("recgoat.side_view"):
                side = self.side_view(self.item_emb, ui, aligned)
                views = {"ui": (users, item_id), "side": (side[: self.n_users], side[self.n_users:])}
                users, item_id = users + views["side"][0], item_id + views["side"][1]
        item = self.fusion({"id": item_id, **aligned}) if self.fusion is not None else item_id
        return {"user": users, "item": item, "item_id": item_id, "aligned": aligned, "aligned_stacked": stacked,
                "views": views}

    # ---- the model API --------------------------------------------------------------------
    def parts(self) -> Iterator[nn.Module]:
        """The parts present (not ``None``), in :attr:`PARTS`' order."""
        return (part for part in (getattr(self, name) for name in self.PARTS) if part is not None)

    def loss_terms(self, batch: dict[str, Tensor], reps: dict) -> Iterator[tuple[str, float, Tensor]]:
        """``(name, weight, unweighted value)`` of every term besides the ranking objective."""
        yield "reg", self.reg_weight, embedding_norm_penalty(self.user_emb[batch["user"]], self.item_emb[batch["pos"]],
                                                             self.item_emb[batch["neg"]])
        for part in self.parts():
            yield from part.loss_terms(batch, reps)

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        reps = self.representations()
        users, items = reps["user"], reps["item"]
        weighted: list[tuple[str, float, Tensor]] = []

        def terms() -> dict[str, Tensor]:
            weighted.extend(self.loss_terms(batch, reps))
            return {name: value for name, _, value in weighted}

        def total(ranked: dict[str, Tensor], _: dict[str, Tensor]) -> Tensor:
            loss = ranked[""]
            for _, weight, value in weighted:
                loss = loss + weight * value
            return loss
        return TrainingStep({"": (users[batch["user"]], items[batch["pos"]], items[batch["neg"]])}, terms, total)

    def logged_values(self) -> dict[str, Tensor]:
        return {name: value for part in self.parts() for name, value in part.logged_values().items()}

    @torch.no_grad()
    def scorer(self) -> Scorer:
        reps = self.representations()
        return EmbeddingScorer(reps["user"], reps["item"])
