"""The one narrow API every recommender implements, so one trainer and one evaluator serve all.

A recommender is a plain ``nn.Module`` (no Lightning inside) built from a :class:`RecDataset`:

- ``train_step(batch) -> TrainingStep``: for a batch ``{"user", "pos", "neg", "items"}`` (int64 tensors; ``neg``
  ``[B]`` or ``[B, N]``; ``items``: the distinct positives, sorted), the user, positive and negative vectors that the
  loss group's objective ranks (``conf/loss/``, computed once, outside the models), the model's own terms, and how
  it combines them; :meth:`Recommender.loss` applies an objective and returns every term (``"loss"`` optimised).
- ``scorer() -> Scorer``: computes the final user/item representations once (no gradient) and
  returns an object that scores any users against any slice of items for full ranking.
- ``score_pairs(users, items)``: the score the loss uses for given (user, item) pairs, so tests
  can check that ranking and training agree.
- ``logged_values() -> dict``: learned scalars to follow during training (never loss terms); default none.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from recgoat.nn.ranking import RankingObjective


def check_dim(dim: int) -> int:
    """``model.embedding_dim``, which must be a positive integer (0 would train a model with nothing to learn)."""
    if int(dim) < 1:
        raise ValueError(f"model.embedding_dim must be a positive integer, got {dim}")
    return int(dim)


def id_embedding(n: int, dim: int) -> nn.Parameter:
    """A ``[n, dim]`` ID embedding table, Xavier-uniform initialised (MMRec's choice for graph models)."""
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(n, check_dim(dim))))


class Scorer(abc.ABC):
    """Scores users against items; what the evaluator, ``recommend`` and ``export`` consume."""

    n_items: int

    @abc.abstractmethod
    def score(self, users: Tensor, items: slice | None = None) -> Tensor:
        """``[len(users), n_items_in_slice]`` scores, a fresh tensor (callers modify it in place)."""

    def __call__(self, users: Tensor, items: slice | None = None) -> Tensor:
        return self.score(users, items)


class EmbeddingScorer(Scorer):
    """Inner-product scores ``<z_u, z_i>`` of final user and item embeddings."""

    def __init__(self, user_emb: Tensor, item_emb: Tensor):
        self.user_emb = user_emb.detach()
        self.item_emb = item_emb.detach()
        self.n_items = item_emb.shape[0]

    def score(self, users: Tensor, items: slice | None = None) -> Tensor:
        item_emb = self.item_emb if items is None else self.item_emb[items]
        return self.user_emb[users] @ item_emb.T


@dataclass
class TrainingStep:
    """What a model's training step gives the loss group (``conf/loss/``).

    Args:
        rankings: ``{suffix: (u, p, n)}``: the batch's user vectors ``[B, d]``, positives' ``[B, d]`` and negatives'
            ``[B, d]`` or ``[B, N, d]``, whose inner products the objective ranks; ``""`` the model's own scores,
            other suffixes further tables it ranks (FREEDOM's per-modality ones), logged as ``<objective><suffix>``.
        terms: computes the model's own terms (regularisation, contrastive, alignment, ...), logged by name; called
            after the rankings are ranked, so each op is recorded where it always was (autograd sums a tensor's
            gradients in the order of its uses: another order changes the last bits, and training curves drift).
        total: the training loss from ``{suffix: ranking value}`` and the terms: the model's weights and the order of
            its sums.
    """
    rankings: dict[str, tuple[Tensor, Tensor, Tensor]]
    terms: Callable[[], dict[str, Tensor]]
    total: Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]


class Recommender(nn.Module, abc.ABC):
    """Base class of all recommenders.

    Subclasses set ``trainable = False`` when there is nothing to optimise (e.g. MostPop).
    """

    trainable: bool = True

    def __init__(self, n_users: int, n_items: int):
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items

    @abc.abstractmethod
    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        """The batch's vectors to rank and the model's own terms (see :class:`TrainingStep`)."""

    def loss(self, batch: dict[str, Tensor], objective: RankingObjective) -> dict[str, Tensor]:
        """The training loss of a batch: the loss group's ``objective`` on each of the model's rankings, combined
        with its own terms as the model does (``loss``, optimised), and every part of it (logged)."""
        step = self.train_step(batch)
        ranked = {suffix: objective(u, p, n, batch) for suffix, (u, p, n) in step.rankings.items()}
        terms = step.terms()
        return {**{f"{objective.name}{s}": v for s, v in ranked.items()}, **terms, "loss": step.total(ranked, terms)}

    @abc.abstractmethod
    def scorer(self) -> Scorer:
        ...

    @torch.no_grad()
    def score_pairs(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of (user, item) pairs through the full-ranking path (for tests and serving)."""
        return self.scorer().score(users).gather(1, items.view(-1, 1)).squeeze(1)

    def on_train_epoch_start(self, epoch: int) -> None:
        """Hook for per-epoch work such as re-sampling a graph; default: nothing."""

    def logged_values(self) -> dict[str, Tensor]:
        """Learned scalars the logger follows (a fusion's weights), ``{name: 0-d tensor}``; default: none."""
        return {}


class ContentSideRecommender(Recommender):
    r"""MGCN's form, shared by MGCN and SMORE: a user-item view :math:`E^{ui}` and a side view :math:`E^{side}`,
    scored by :math:`z = E^{ui} + E^{side}`, trained by ``BPR + reg_weight * (||z_u||^2 + ||z_pos||^2 + ||z_neg||^2)
    / (2B) + w * ViewContrast(E^side, E^ui)`` over the batch's positive items and users.

    Subclasses set ``reg_weight`` and implement :meth:`views` and :meth:`view_contrast`.
    """

    reg_weight: float

    @abc.abstractmethod
    def views(self) -> tuple[Tensor, Tensor]:
        """``(E^ui, E^side)``, each ``[n_users + n_items, d]`` (users first)."""

    @abc.abstractmethod
    def view_contrast(self) -> nn.Module:
        """The :class:`~recgoat.nn.ViewContrast` term (its ``weight`` is the term's multiplier)."""

    def forward(self) -> tuple[Tensor, Tensor]:
        content, side = self.views()
        z = content + side
        return z[: self.n_users], z[self.n_users:]

    def train_step(self, batch: dict[str, Tensor]) -> TrainingStep:
        content, side = self.views()
        z = content + side
        users, pos, neg = batch["user"], batch["pos"] + self.n_users, batch["neg"] + self.n_users
        u, p, n = z[users], z[pos], z[neg]
        contrast = self.view_contrast()

        def terms() -> dict[str, Tensor]:
            reg = 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / len(users)
            return {"reg": reg, "cl": contrast(side[pos], content[pos], side[users], content[users])}
        return TrainingStep({"": (u, p, n)}, terms,
                            lambda r, t: r[""] + self.reg_weight * t["reg"] + contrast.weight * t["cl"])

    @torch.no_grad()
    def scorer(self) -> Scorer:
        return EmbeddingScorer(*self())

