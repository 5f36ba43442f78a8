"""User preference texts from *training* histories: the paper's LLM prompt, or a deterministic template."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from recgoat.data import RecDataset

SYSTEM_PROMPT = "You are an expert in recommender systems who infers user preferences from interaction histories."

USER_PROMPT = """Below is the interaction history of one user: the items they engaged with, each with its id and description.

{history}

Reason in two steps.
Step 1 - Shared attributes: identify the attributes these items share (category, function, style, material, usage scenario, price range).
Step 2 - Preferences: infer the user's preferences along four dimensions, each with evidence from the history:
  1. Style & Aesthetics
  2. Function & Usability
  3. Context & Emotion
  4. Other (brand loyalty, price sensitivity, sustainability)

Write your reasoning inside <think>...</think>, then the final preference summary inside <answer>...</answer>."""

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def training_histories(dataset: RecDataset, max_items: int = 50) -> list[np.ndarray]:
    """Per user, the item indices of their *training* interactions (never valid or test), at most ``max_items``.

    Without timestamps the order is by item index; the most recent items cannot be chosen, so
    the first ``max_items`` are kept (deterministic).
    """
    train = dataset.train
    return [train.indices[train.indptr[u]:train.indptr[u + 1]][:max_items] for u in range(dataset.n_users)]


def history_lines(items: np.ndarray, item_ids, texts: list[str]) -> str:
    return "\n".join(f"- [{item_ids[i]}] {texts[i]}" for i in items)


def chat_messages(items: np.ndarray, item_ids, texts: list[str]) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(history=history_lines(items, item_ids, texts))}]


def parse_answer(response: str) -> str | None:
    """The ``<answer>`` part of a response, or ``None`` when there is none."""
    m = ANSWER.search(response or "")
    if not m or not m.group(1).strip():
        return None
    return m.group(1).strip()


def template_profile(items: np.ndarray, titles: list[str], categories: list[str | None], top: int = 5) -> str:
    """A deterministic preference text from the history: dominant categories and the items themselves."""
    counts = Counter(c.strip() for i in items for c in (categories[i] or "").split(",") if c.strip())
    cats = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
    liked = "; ".join(titles[i] for i in items if titles[i])
    return (f"The user interacted with {len(items)} items. Preferred categories: {cats or 'unknown'}. "
            f"Items: {liked}.")
