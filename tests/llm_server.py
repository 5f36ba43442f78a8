"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests, with scripted failures."""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLLM:
    """Serves POST /v1/chat/completions. ``behaviour(key, attempt) -> (status, body)`` scripts answers.

    Records every request (the user key parsed from the prompt, the messages) and the peak number
    of requests in flight. ``structured``: the structured-output modes it takes (a request with another
    ``response_format`` type gets HTTP 400, as from a server without it); ``enforce``: a request whose
    ``response_format`` carries a schema, or that carries a ``grammar``, is answered with a JSON object that
    satisfies the preference schema, whatever the behaviour answered (a constraining server).
    Retryable statuses carry ``retry-after-ms: 10``.
    """

    def __init__(self, behaviour=None, delay: float = 0.0, structured=("json_schema", "json_object", "grammar"),
                 enforce: bool = False):
        self.behaviour = behaviour or (lambda key, attempt: (200, answer_body(f"likes things of {key}")))
        self.delay = delay
        self.structured = set(structured)
        self.enforce = enforce
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                text = payload["messages"][-1]["content"]
                key = server.key_of(text)
                with server.lock:
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                    server.attempts[key] = server.attempts.get(key, 0) + 1
                    attempt = server.attempts[key]
                    server.requests.append({"key": key, "payload": payload, "auth": self.headers.get("Authorization")})
                try:
                    time.sleep(server.delay)
                    status, body = server.behaviour(key, attempt)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                mode = (payload.get("response_format") or {}).get("type") or ("grammar" if "grammar" in payload
                                                                               else None)
                if mode is not None and mode not in server.structured:
                    status, body = 400, {"error": {"message": f"response_format type {mode!r} is not supported"}}
                elif server.enforce and mode is not None and status == 200:
                    body = json_body(key)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status in (408, 409, 429) or status >= 500:
                    self.send_header("retry-after-ms", "10")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def key_of(prompt: str) -> str:
        m = re.search(r"KEY=(\S+)", prompt)
        return m.group(1) if m else prompt[-40:]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer_body(answer: str | None, think: str = "reasoning") -> dict:
    content = f"<think>{think}</think>" + (f"<answer>{answer}</answer>" if answer is not None else "no answer tag")
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": content}, "finish_reason": "stop"}]}


def preference_answer(key: str) -> dict:
    """A JSON answer that satisfies the preference schema, naming the user."""
    return {"shared_attributes": f"things of {key}",
            **{f: {"preference": f"{f} of {key}", "evidence": "the history"}
               for f in ("style_aesthetics", "function_usability", "context_emotion", "other")}}


def json_body(key: str, content: str | None = None) -> dict:
    content = json.dumps(preference_answer(key)) if content is None else content
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
            "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}
