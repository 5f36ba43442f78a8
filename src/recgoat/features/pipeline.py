"""The feature pipeline: item text, item image and user preference features for one dataset."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from recgoat.data import DataError, RecDataset
from recgoat.data.features import digest, ids_digest, train_digest
from recgoat.features import profiles as prof
from recgoat.features.llm import cached_responses, generate, read_cache
from recgoat.features.provenance import is_up_to_date, write_features
from recgoat.features.sources import item_text

log = logging.getLogger("recgoat")


def _file_digest(path: Path | None) -> str:
    return digest([path.read_bytes()]) if path is not None and path.exists() else "missing"


def build_features(dataset: RecDataset, metadata: dict, out_dir: str | Path, text_fields: list[str],
                   text_encoder=None, image_encoder=None, profile: str = "template", max_history: int = 50,
                   prompt_fields: list[str] | None = None, llm_client=None, llm_concurrency: int = 4,
                   without_answer: str = "template", llm_users: int | None = None, force: bool = False) -> dict:
    """Write ``text_feat.npy``, ``image_feat.npy`` and ``user_pref_feat.npy`` (+ sidecars) to ``out_dir``.

    ``metadata`` maps raw item ids to their fields (see :mod:`recgoat.features.sources`); rows
    follow ``dataset.item_ids`` / ``dataset.user_ids``. ``prompt_fields`` describe an item in the LLM
    prompt (``None``: the ``text_fields``); a user whose LLM response has no ``<answer>`` gets the
    template profile (``without_answer="template"``) or the whole response (``"response"``). ``llm_users``: ask
    the LLM for the first that many users only (dataset order; ``None``: all), the others get templates. Each file is
    skipped when its sidecar says it was built from the same inputs by the same encoder. Returns a summary
    with timings.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out_dir": str(out)}
    metas = [metadata.get(_key(i, metadata)) for i in dataset.item_ids]
    no_meta = [str(i) for i, m in zip(dataset.item_ids, metas, strict=True) if m is None]
    if len(no_meta) == dataset.n_items:  # every item's text would be empty: identical vectors, silently useless
        raise DataError(f"no item id of the item metadata matches the interactions' item ids (the interactions' first: "
                        f"{no_meta[:3]}; the metadata's first: {[str(k) for k in list(metadata)[:3]]}): check the "
                        f"source's id column")
    if no_meta:
        log.warning("%d item(s) have no metadata (first: %s); their text is empty", len(no_meta), no_meta[:5])
    texts, missing_fields = [], dict.fromkeys(text_fields, 0)
    for m in metas:
        t, miss = item_text(m, text_fields)
        texts.append(t)
        for f in miss:
            missing_fields[f] += 1
    row_order = {"rows": "dataset item index (item_ids order)", "item_ids_sha256": ids_digest(dataset.item_ids),
                 "n_rows": dataset.n_items}

    if text_encoder is not None:
        enc = text_encoder.describe()
        h = digest([*texts, *text_fields])
        path = out / "text_feat.npy"
        if force or not is_up_to_date(path, enc, h):
            t0 = time.perf_counter()
            x = text_encoder.encode(texts, desc="item text")
            dt = time.perf_counter() - t0
            cut = truncated(text_encoder, texts, "item text")
            write_features(path, x, enc, h, input_fields=text_fields, row_order=row_order,
                           missing_fields=missing_fields, items_without_metadata=no_meta, truncated_texts=cut,
                           seconds=dt)
            summary["text"] = {"rows": len(texts), "seconds": dt, "items_per_s": len(texts) / dt}
        else:
            summary["text"] = "up to date"

    if image_encoder is not None:
        paths = [m.get("image") if m else None for m in metas]
        if not any(paths):   # every row would be the fill value: a feature that says nothing, silently
            raise DataError(f"image features were asked for (features.images=true), but none of the {len(paths)} "
                            f"items has an image in the item metadata: name the source's image column "
                            f"(features.source.image_column for an item table), or set features.images=false")
        enc = image_encoder.describe()
        h = digest(_file_digest(p) for p in paths)
        path = out / "image_feat.npy"
        if force or not is_up_to_date(path, enc, h):
            t0 = time.perf_counter()
            x, failed = image_encoder.encode(paths, desc="item images")
            dt = time.perf_counter() - t0
            write_features(path, x, enc, h, input_fields=["image"], row_order=row_order,
                           missing_images={str(dataset.item_ids[r]): why for r, why in failed.items()},
                           fill_rule=image_encoder.missing, seconds=dt)
            summary["image"] = {"rows": len(paths), "missing": len(failed), "seconds": dt,
                                "items_per_s": len(paths) / dt}
        else:
            summary["image"] = "up to date"

    if profile != "none" and text_encoder is not None:
        prompt_texts = texts if prompt_fields is None else [item_text(m, prompt_fields)[0] for m in metas]
        summary["profiles"] = _user_profiles(dataset, metas, prompt_texts, out, text_encoder, profile,
                                             max_history, llm_client, llm_concurrency, without_answer, llm_users,
                                             force)
    return summary


def truncated(text_encoder, texts: list[str], what: str) -> int | None:
    """How many ``texts`` the encoder reads only in part (``None``: an encoder that cannot say), with a warning."""
    count = getattr(text_encoder, "truncated", None)
    if count is None:
        return None
    cut = count(texts)
    if cut:
        log.warning("%d of %d %ss are longer than the text encoder reads (%s tokens): their ends are not encoded",
                    cut, len(texts), what, getattr(getattr(text_encoder, "model", None), "max_seq_length", "?"))
    return cut


def _key(raw_id, metadata: dict):
    """Metadata keys may be ints where dataset ids are numpy ints or strings."""
    if raw_id in metadata:
        return raw_id
    as_str = str(raw_id)
    if as_str in metadata:
        return as_str
    try:
        return int(raw_id)
    except (TypeError, ValueError):
        return raw_id


def llm_usage(cache_path: Path, requests: dict, client, wall_s: float) -> dict:
    """Token counts and request times of the cached responses to ``requests`` (this run's and earlier ones)."""
    cached = read_cache(cache_path)
    records = [cached[k] for k, m in requests.items()
               if k in cached and cached[k].get("request_sha256") == client.request_sha256(m)]
    prompt = sum(r.get("usage", {}).get("prompt_tokens", 0) for r in records)
    completion = sum(r.get("usage", {}).get("completion_tokens", 0) for r in records)
    seconds = sum(r.get("seconds", 0.0) for r in records)
    return {"responses": len(records), "prompt_tokens": prompt, "completion_tokens": completion,
            "request_seconds": round(seconds, 1), "wall_s_this_run": round(wall_s, 1),
            "completion_tokens_per_request_second": round(completion / seconds, 1) if seconds else None}


def _user_profiles(dataset, metas, texts, out, text_encoder, mode, max_history, client, concurrency, without_answer,
                   llm_users, force) -> dict:
    histories = prof.training_histories(dataset, max_history)
    # an item is named by its title, or by its text from the fields the source was given (an item table's columns)
    names = [(m or {}).get("title") or text for m, text in zip(metas, texts, strict=True)]
    empty = [dataset.user_ids[u] for u, h in enumerate(histories) if not any(names[i] for i in h)]
    if empty:
        raise DataError(f"{len(empty)} user profile(s) would have no item text (first: user {str(empty[0])!r}): "
                        f"none of their training items has a title or text in the item metadata; check the source's "
                        f"text columns and that its ids are the interactions' item ids")
    categories = [(m or {}).get("genres") or (m or {}).get("category") for m in metas]
    templates = [prof.template_profile(h, names, categories) for h in histories]
    stats: dict = {"mode": mode, "users": dataset.n_users}
    if mode == "template":
        profile_texts = templates
        source = {"profile": "template", "max_history": max_history}
    elif mode == "llm":
        if without_answer not in ("template", "response"):
            raise ValueError(f"llm_without_answer must be 'template' or 'response', got {without_answer!r}")
        if client is None:
            raise ValueError("profile=llm needs an endpoint: set features.llm.base_url and features.llm.model")
        if llm_users is not None and not 0 < llm_users <= dataset.n_users:
            raise ValueError(f"llm_users must be in 1..{dataset.n_users} (the dataset's users) or null, "
                             f"got {llm_users}")
        if client.structured != "tags" and client.max_tokens < prof.MAX_ANSWER_TOKENS:
            log.warning("llm.max_tokens=%d may cut the longest structured answer (up to %d tokens: 9 fields of %d "
                        "characters); a cut answer fails the schema and its user gets the template (counted)",
                        client.max_tokens, prof.MAX_ANSWER_TOKENS, prof.MAX_FIELD_CHARS)
        asked = dataset.user_ids[: dataset.n_users if llm_users is None else llm_users]
        requests = {str(u): prof.chat_request(h, dataset.item_ids, texts, client.structured)
                    for u, h in zip(asked, histories, strict=False)}
        t0 = time.perf_counter()
        cached = set() if force else set(cached_responses(client, requests, out / "user_pref_llm.jsonl"))
        responses, errors = generate(client, requests, out / "user_pref_llm.jsonl", concurrency=concurrency,
                                     refresh=force)   # force=true asks the LLM again
        stats["llm"] = llm_usage(out / "user_pref_llm.jsonl", requests, client, time.perf_counter() - t0)
        profile_texts, no_answer = [], []
        for u, template in zip(dataset.user_ids, templates, strict=True):
            if str(u) not in requests:                  # beyond llm_users: not asked
                profile_texts.append(template)
                continue
            response = responses.get(str(u), "")
            answer = prof.parse_profile(response, client.structured)
            if answer is None:
                if str(u) in responses:
                    no_answer.append(str(u))
                # the user branch never gets an empty input: a failed request always gets the template
                answer = response.strip() if without_answer == "response" and response.strip() else template
            profile_texts.append(answer)
        stats.update({"asked": len(requests), "requested_errors": len(errors), "without_answer": len(no_answer),
                      "answered": len(requests) - len(errors) - len(no_answer), "cached": len(cached),
                      "fallback_to_template": len(errors) + (len(no_answer) if without_answer == "template" else 0),
                      "not_asked": dataset.n_users - len(requests)})
        if stats["answered"] == 0:
            log.warning("none of the %d LLM answers was a profile (%d failed requests, %d answers without one; %d of "
                        "them from the cache): every user got the %s. The answers are in %s; fix the server or "
                        "prompt, then rerun with force=true to ask again", len(requests), len(errors), len(no_answer),
                        len(cached & set(no_answer)), "template profile" if without_answer == "template" else
                        "raw response", out / "user_pref_llm.jsonl")
        if errors:
            log.warning("%d LLM request(s) failed (first: %s); template profiles used for them; rerun to retry",
                        len(errors), next(iter(errors.values())))
        prompt = [prof.SYSTEM_PROMPT, prof.USER_PROMPT] if client.structured == "tags" else \
            [prof.SYSTEM_PROMPT, prof.STRUCTURED_PROMPT, json.dumps(prof.PREFERENCE_SCHEMA, sort_keys=True)]
        stats["structured"] = client.structured
        source = {"profile": "llm" if stats["answered"] else f"{without_answer} (the LLM answered no profile)",
                  "model": client.model, "endpoint": client.url, "max_history": max_history,
                  "structured": client.structured, "prompt_sha256": digest(prompt), "usage": stats["llm"],
                  "asked": stats["asked"], "answered": stats["answered"], "cached": stats["cached"],
                  "fallback_to_template": stats["fallback_to_template"], "without_answer_gets": without_answer,
                  "errors": errors,
                  "without_answer": no_answer}
    else:
        raise ValueError(f"profile must be 'template', 'llm' or 'none', got {mode!r}")
    enc = text_encoder.describe()
    h = digest([*profile_texts, mode])
    path = out / "user_pref_feat.npy"
    if force or not is_up_to_date(path, enc, h):
        t0 = time.perf_counter()
        x = text_encoder.encode(profile_texts, desc="user profiles")
        stats["seconds"] = time.perf_counter() - t0
        source["truncated_texts"] = stats["truncated"] = truncated(text_encoder, profile_texts, "user profile")
        write_features(path, x, enc, h, row_order={"rows": "dataset user index (user_ids order)",
                                                   "user_ids_sha256": ids_digest(dataset.user_ids),
                                                   "train_sha256": train_digest(dataset),
                                                   "split": f"{dataset.train.nnz} training interactions"},
                       history="training interactions only", **source)
    else:
        stats["status"] = "up to date"
    (out / "user_profiles.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in profile_texts))
    return stats

