"""A client for OpenAI-compatible chat-completions endpoints (vLLM, Ollama, llama.cpp, OpenAI, ...), on the
``openai`` package, with what it lacks for a long batch of requests.

The ``openai`` client sends the requests (``base_url``, key, timeout; 408, 409, 429, 5xx, timeouts and connection
errors retried with exponential backoff, ``Retry-After`` honoured); :func:`generate` runs them concurrently with a
hard bound and appends every successful response to a JSONL cache at once (flushed and fsynced), so an interrupted
run resumes where it stopped and nothing already paid for is requested again. A cached response is reused only for
the same request: model, messages, generation settings and any structured-output field (``request_sha256``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import openai
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

STRUCTURED = ("json_schema", "json_object", "grammar", "tags")


class LLMError(RuntimeError):
    """A request failed for good (non-retryable status, retries exhausted, or a malformed response)."""


class ChatClient:
    """``POST {base_url}/chat/completions`` through ``openai.OpenAI``.

    A request is the chat messages plus optional extra fields of the body (``response_format``, a llama.cpp
    ``grammar``); :meth:`request` is the whole body, which the cache key hashes.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        api_key_env: environment variable holding the API key; without one, local servers need none (a placeholder
            is sent, as the ``openai`` client requires a key).
        timeout: seconds per attempt.
        max_retries: retries after the first attempt for retryable failures (the ``openai`` client's backoff:
            0.5 s doubling to 8 s, with jitter, or the server's ``Retry-After``).
        temperature, max_tokens: generation settings.
        structured: how a structured answer is asked for: ``json_schema`` (OpenAI's ``response_format``: OpenAI,
            vLLM, Ollama, llama.cpp's own server), ``json_object`` (``{"type": "json_object", "schema": ...}``:
            servers with a JSON mode), ``grammar`` (a GBNF ``grammar`` field: llama.cpp's servers), ``tags`` (none: the
            prompt asks for ``<answer>`` tags).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None, timeout: float, max_retries: int,
                 temperature: float, max_tokens: int, structured: str):
        if structured not in STRUCTURED:
            raise ValueError(f"llm.structured must be one of {', '.join(STRUCTURED)}, got {structured!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.structured = structured
        key = os.environ.get(api_key_env) if api_key_env else None
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "unused-by-local-servers", timeout=timeout,
                                    max_retries=max_retries)
        self.max_retries = max_retries

    def request(self, req: dict) -> bytes:
        """The request body: ``req`` (``messages`` and any extra fields) with the model and generation settings."""
        return json.dumps({"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                           **req}, sort_keys=True).encode()

    def request_sha256(self, req: dict) -> str:
        return hashlib.sha256(self.request(req)).hexdigest()  # not the URL: a local server's port varies

    def complete(self, req: dict) -> str:
        """The assistant message's content; raises :class:`LLMError` when it cannot be had."""
        return self.complete_with_usage(req)[0]

    def complete_with_usage(self, req: dict) -> tuple[str, dict]:
        """The content and the response's ``usage`` (token counts; ``{}`` when the server sends none)."""
        extra = {k: v for k, v in req.items() if k not in ("messages", "response_format")}
        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=req["messages"], temperature=self.temperature, max_tokens=self.max_tokens,
                **({"response_format": req["response_format"]} if "response_format" in req else {}),
                **({"extra_body": extra} if extra else {}))
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            raise LLMError(f"{self.url}: HTTP {e.status_code}{f' after {self.max_retries} retries' if retried else ''}"
                           f": {str(e.message)[:200]}") from None
        except (openai.APIResponseValidationError, ValueError) as e:   # a body that is not a chat completion
            raise LLMError(f"{self.url}: malformed response ({type(e).__name__}): {str(e)[:200]}") from None
        except openai.APIConnectionError as e:   # timeouts included
            raise LLMError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({type(e).__name__}: {e})"
                           ) from None
        try:
            content = resp.choices[0].message.content
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
        except (AttributeError, IndexError, TypeError) as e:
            raise LLMError(f"{self.url}: malformed response ({type(e).__name__}): {str(resp)[:200]}") from None
        return content, (resp.usage.model_dump(exclude_none=True) if resp.usage else {})


def read_cache(path: Path) -> dict[str, dict]:
    """Cached responses by key (the last line of a key wins); a truncated last line (a killed run) is ignored."""
    out: dict[str, dict] = {}
    if not Path(path).exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "key" in rec and "response" in rec:
                out[str(rec["key"])] = rec
    return out


def _timed(client: ChatClient, req: dict) -> tuple[str, dict, float]:
    t0 = time.perf_counter()
    text, usage = client.complete_with_usage(req)
    return text, usage, time.perf_counter() - t0


def cached_responses(client: ChatClient, requests: dict[str, dict], cache_path: str | Path) -> dict[str, str]:
    """The responses in ``cache_path`` to exactly these requests (the same model, prompt and settings), by key."""
    cached = read_cache(Path(cache_path))
    return {k: cached[k]["response"] for k, m in requests.items()
            if k in cached and cached[k].get("request_sha256") == client.request_sha256(m)}


def generate(client: ChatClient, requests: dict[str, dict], cache_path: str | Path, concurrency: int = 4,
             progress: bool = True, refresh: bool = False) -> tuple[dict[str, str], dict[str, str]]:
    """Complete every request (``{"messages": [...], ...}``) not already in the cache (``refresh``: every request);
    returns (responses by key, errors by key).

    At most ``concurrency`` requests are in flight. Responses are appended to ``cache_path`` as
    they arrive (a key's last line wins); failed requests are reported in the errors and not cached, so a rerun
    retries them.
    """
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    request_sha = {k: client.request_sha256(m) for k, m in requests.items()}
    responses = {} if refresh else cached_responses(client, requests, cache_path)
    pending = [k for k in requests if k not in responses]
    errors: dict[str, str] = {}
    lock = threading.Lock()
    if pending:
        log.info("LLM: %d cached, %d to request from %s (concurrency %d)", len(responses), len(pending),
                 client.url, concurrency)
    with open(cache_path, "a", encoding="utf-8") as sink, ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(_timed, client, requests[k]): k for k in pending}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="LLM profiles", disable=not progress):
            key = futures[fut]
            try:
                text, usage, seconds = fut.result()
            except LLMError as e:
                errors[key] = str(e)
                continue
            with lock:
                sink.write(json.dumps({"key": key, "model": client.model, "request_sha256": request_sha[key],
                                       "response": text, "usage": usage, "seconds": round(seconds, 3)}) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            responses[key] = text
    return responses, errors
