"""A synthetic dataset with planted structure: the built-in default, runnable anywhere.

Users and items get latent factors drawn around shared cluster centres. Interactions are sampled
from a softmax over ``<u, v> / temperature + popularity bias``, so collaborative filtering can
recover the factors; each item "modality" is a different noisy non-linear view of the item's
factors, and user features are a noisy view of the user's, so side information genuinely helps,
most for items with few interactions.
"""
from __future__ import annotations

import numpy as np

from recgoat.data.dataset import RecDataset
from recgoat.data.splitting import assemble_splits, split_per_user


def make_synthetic(*, n_users: int, n_items: int, n_factors: int, n_clusters: int, cluster_spread: float,
                   mean_interactions: float, min_interactions: int, temperature: float, popularity_skew: float,
                   modalities: dict[str, dict] | None, user_feature_dim: int | None, user_feature_noise: float,
                   seed: int, split_seed: int | None, name: str) -> RecDataset:
    """Generate a dataset; identical arguments give identical data.

    Args:
        modalities: ``{name: {"dim": int, "noise": float}}`` item feature views (``None``: none).
        user_feature_dim: dimension of the user feature view; ``None`` for no user features.
        split_seed: seed of the per-user 8:1:1 split (default: ``seed``).
    """
    rng = np.random.default_rng(seed)
    modalities = modalities or {}

    centres = rng.normal(size=(n_clusters, n_factors))
    item_cluster = rng.integers(n_clusters, size=n_items)
    user_cluster = rng.integers(n_clusters, size=n_users)
    item_f = centres[item_cluster] + cluster_spread * rng.normal(size=(n_items, n_factors))
    user_f = centres[user_cluster] + cluster_spread * rng.normal(size=(n_users, n_factors))
    item_f /= np.linalg.norm(item_f, axis=1, keepdims=True)
    user_f /= np.linalg.norm(user_f, axis=1, keepdims=True)
    popularity = popularity_skew * rng.normal(size=n_items)

    logits = (user_f @ item_f.T) / temperature + popularity[None, :]
    gumbel = rng.gumbel(size=logits.shape)
    order = np.argsort(-(logits + gumbel), axis=1)  # Gumbel top-k = sampling without replacement
    n_per_user = np.clip(rng.geometric(1.0 / mean_interactions, size=n_users), min_interactions, n_items // 2)
    rank = np.arange(n_items)[None, :]
    chosen = rank < n_per_user[:, None]
    users = np.repeat(np.arange(n_users), n_per_user)
    items = order[chosen]

    item_features = {}
    for m, spec in modalities.items():
        proj = rng.normal(size=(n_factors, int(spec["dim"]))) / np.sqrt(n_factors)
        view = np.tanh(2.0 * item_f @ proj)
        item_features[m] = (view + float(spec["noise"]) * rng.normal(size=view.shape)).astype(np.float32)
    user_features = None
    if user_feature_dim:
        proj = rng.normal(size=(n_factors, user_feature_dim)) / np.sqrt(n_factors)
        view = np.tanh(2.0 * user_f @ proj)
        user_features = (view + user_feature_noise * rng.normal(size=view.shape)).astype(np.float32)

    labels = split_per_user(users, seed=seed if split_seed is None else split_seed)
    return assemble_splits(name, users, items, labels, n_users, n_items, source=name,
                           item_features=item_features, user_features=user_features)
