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


def make_synthetic(n_users: int = 2000, n_items: int = 1500, n_factors: int = 16, n_clusters: int = 20,
                   cluster_spread: float = 0.6, mean_interactions: float = 20.0, min_interactions: int = 5,
                   temperature: float = 0.25, popularity_skew: float = 1.0,
                   modalities: dict[str, dict] | None = None, user_feature_dim: int | None = 32,
                   user_feature_noise: float = 0.5, seed: int = 0, split_seed: int | None = None,
                   name: str = "synthetic") -> RecDataset:
    """Generate a dataset; identical arguments give identical data.

    Args:
        modalities: ``{name: {"dim": int, "noise": float}}``; default a 64-d "text" view with noise
            0.5 and a 128-d "image" view with noise 1.0.
        user_feature_dim: dimension of the user feature view; ``None`` for no user features.
        split_seed: seed of the per-user 8:1:1 split (default: ``seed``).
    """
    rng = np.random.default_rng(seed)
    if modalities is None:
        modalities = {"text": {"dim": 64, "noise": 0.5}, "image": {"dim": 128, "noise": 1.0}}

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
