"""User preference texts from *training* histories: the paper's LLM prompt, or a deterministic template."""
from __future__ import annotations

import json
import re
from collections import Counter

import jsonschema
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

# the paper's dimensions, in the order the embedded profile text lists them: (JSON field, label)
PREFERENCES = [("style_aesthetics", "Style & Aesthetics"), ("function_usability", "Function & Usability"),
               ("context_emotion", "Context & Emotion"), ("other", "Other")]

# every field at most this many characters, so the longest answer (9 fields, ~1.6k characters, ~400 tokens of prose)
# ends within llm.max_tokens: unbounded, SmolLM2-135M ran 26 of 220 answers into max_tokens=512 mid-string
MAX_FIELD_CHARS = 160
# tokens that always hold the longest such answer: 9 fields, their names and punctuation, one token per character
# at worst (URL- and number-like text from a small model comes near: 1.6 characters per token seen)
MAX_ANSWER_TOKENS = 10 * MAX_FIELD_CHARS + 200
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_FIELD_CHARS}
_PREFERENCE = {"type": "object", "properties": {"preference": _TEXT,
                                                 "evidence": {"type": "string", "maxLength": MAX_FIELD_CHARS}},
               "required": ["preference", "evidence"], "additionalProperties": False}
PREFERENCE_SCHEMA = {
    "type": "object",
    "properties": {"shared_attributes": _TEXT, **{f: _PREFERENCE for f, _ in PREFERENCES}},
    "required": ["shared_attributes", *(f for f, _ in PREFERENCES)],
    "additionalProperties": False,
}

STRUCTURED_PROMPT = """Below is the interaction history of one user: the items they engaged with, each with its id and description.

{history}

Reason in two steps.
Step 1 - Shared attributes: the attributes these items share (category, function, style, material, usage scenario, price range).
Step 2 - Preferences: the user's preferences along four dimensions, each with evidence from the history:
  Style & Aesthetics; Function & Usability; Context & Emotion; Other (brand loyalty, price sensitivity, sustainability).

Answer with a JSON object only: {{"shared_attributes": "...", "style_aesthetics": {{"preference": "...", "evidence": "..."}}, "function_usability": {{...}}, "context_emotion": {{...}}, "other": {{...}}}}."""


def _gbnf() -> str:
    """A llama.cpp GBNF grammar that admits exactly the JSON objects of :data:`PREFERENCE_SCHEMA` (fields in order;
    a string of 1 to ``MAX_FIELD_CHARS`` characters, an escape one character, as ``maxLength`` counts; the schema's
    empty evidence is not admitted)."""
    fields = ['"\\"shared_attributes\\":" ws string'] + [f'"\\"{f}\\":" ws preference' for f, _ in PREFERENCES]
    return "\n".join([
        'root ::= "{" ws ' + ' "," ws '.join(fields) + ' "}" ws',
        'preference ::= "{" ws "\\"preference\\":" ws string "," ws "\\"evidence\\":" ws string "}" ws',
        'string ::= "\\"" char{1,' + str(MAX_FIELD_CHARS) + '} "\\"" ws',
        'char ::= [^"\\\\\\x00-\\x1f] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )',
        'ws ::= [ \\t\\n]{0,2}',
    ])


PREFERENCE_GRAMMAR = _gbnf()

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


def chat_messages(items: np.ndarray, item_ids, texts: list[str], prompt: str = USER_PROMPT) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt.format(history=history_lines(items, item_ids, texts))}]


def chat_request(items: np.ndarray, item_ids, texts: list[str], structured: str) -> dict:
    """The preference request of one user: the paper's prompt, and the answer's format as ``structured`` asks it
    (see :class:`recgoat.features.llm.ChatClient`)."""
    if structured == "tags":
        return {"messages": chat_messages(items, item_ids, texts)}
    req = {"messages": chat_messages(items, item_ids, texts, STRUCTURED_PROMPT)}
    if structured == "json_schema":
        req["response_format"] = {"type": "json_schema", "json_schema": {"name": "user_preferences", "strict": True,
                                                                         "schema": PREFERENCE_SCHEMA}}
    elif structured == "json_object":
        req["response_format"] = {"type": "json_object", "schema": PREFERENCE_SCHEMA}
    elif structured == "grammar":
        req["grammar"] = PREFERENCE_GRAMMAR
    else:
        raise ValueError(f"unknown structured-output mode {structured!r}")
    return req


def parse_structured(response: str) -> str | None:
    """The profile text of a JSON answer that satisfies :data:`PREFERENCE_SCHEMA`, its fields in a fixed order
    (shared attributes, then each dimension's preference; the evidence is not embedded), or ``None``."""
    try:
        answer = json.loads(response or "")
        jsonschema.validate(answer, PREFERENCE_SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return None
    parts = [f"Shared attributes: {answer['shared_attributes'].strip()}."]
    parts += [f"{label}: {answer[field]['preference'].strip()}." for field, label in PREFERENCES]
    return " ".join(parts)


def parse_profile(response: str, structured: str) -> str | None:
    """The profile text of a response, or ``None`` when it has no usable answer."""
    return parse_answer(response) if structured == "tags" else parse_structured(response)


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
