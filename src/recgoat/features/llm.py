"""A client for OpenAI-compatible chat-completions endpoints (vLLM, Ollama, llama.cpp, OpenAI, ...).

Requests run concurrently with a hard bound; 429, 5xx, timeouts and connection errors are
retried with exponential backoff (``Retry-After`` honoured); every successful response is
appended to a JSONL cache at once (flushed and fsynced), so an interrupted run resumes where it
stopped and nothing already paid for is requested again. A cached response is reused only for the
same request (model, messages and generation settings: ``request_sha256``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


class LLMError(RuntimeError):
    """A request failed for good (non-retryable status, retries exhausted, or a malformed response)."""


class ChatClient:
    """POST ``{base_url}/chat/completions``.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        api_key_env: environment variable holding the API key (sent as a Bearer token if set).
        timeout: seconds per request.
        max_retries: retries after the first attempt for retryable failures.
        backoff: first retry delay in seconds, doubled each retry (capped at ``max_backoff``).
        temperature, max_tokens: generation settings.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None, timeout: float, max_retries: int,
                 backoff: float, max_backoff: float, temperature: float, max_tokens: int):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.temperature = temperature
        self.max_tokens = max_tokens

    def _post(self, payload: bytes) -> tuple[int, bytes, dict]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})

    def request(self, messages: list[dict]) -> bytes:
        return json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}, sort_keys=True).encode()

    def request_sha256(self, messages: list[dict]) -> str:
        return hashlib.sha256(self.request(messages)).hexdigest()  # not the URL: a local server's port varies

    def complete(self, messages: list[dict]) -> str:
        """The assistant message's content; raises :class:`LLMError` when it cannot be had."""
        return self.complete_with_usage(messages)[0]

    def complete_with_usage(self, messages: list[dict]) -> tuple[str, dict]:
        """The content and the response's ``usage`` (token counts; ``{}`` when the server sends none)."""
        payload = self.request(messages)
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                status, body, headers = self._post(payload)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                status, body, headers, last = None, b"", {}, f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if status is not None and 200 <= status < 300:
                try:
                    answer = json.loads(body)
                    return answer["choices"][0]["message"]["content"], dict(answer.get("usage") or {})
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    raise LLMError(f"{self.url}: malformed response ({type(e).__name__}): {body[:200]!r}") from None
            if status is not None:
                last = f"HTTP {status}: {body[:200].decode(errors='replace')}"
                if status not in RETRYABLE:
                    raise LLMError(f"{self.url}: {last}")
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                retry_after = headers.get("Retry-After") if headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = min(self.max_backoff, float(retry_after))
                time.sleep(delay)
        raise LLMError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({last})")


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


def _timed(client: ChatClient, messages: list[dict]) -> tuple[str, dict, float]:
    t0 = time.perf_counter()
    text, usage = client.complete_with_usage(messages)
    return text, usage, time.perf_counter() - t0


def generate(client: ChatClient, requests: dict[str, list[dict]], cache_path: str | Path, concurrency: int = 4,
             progress: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """Complete every request not already in the cache; returns (responses by key, errors by key).

    At most ``concurrency`` requests are in flight. Responses are appended to ``cache_path`` as
    they arrive; failed requests are reported in the errors and not cached, so a rerun retries them.
    """
    cache_path = Path(cache_path)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cached = read_cache(cache_path)
    request_sha = {k: client.request_sha256(m) for k, m in requests.items()}
    responses = {k: cached[k]["response"] for k in requests
                 if k in cached and cached[k].get("request_sha256") == request_sha[k]}
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
