"""The LLM client and profile generation against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hydra.utils import instantiate

from recgoat.features import profiles as prof
from recgoat.features.llm import ChatClient, LLMError, generate, read_cache
from recgoat.features.profiles import parse_answer
from tests.llm_server import FakeLLM, answer_body, json_body, preference_answer


@functools.cache
def llm_config():
    from recgoat.utils.config import compose
    return compose(["features=ml100k", "profile=llm"], config_name="features").llm


def make_client(url: str, model: str = "m", **overrides) -> ChatClient:
    """The shipped client config (conf/features.yaml) pointed at a test server, without an API key."""
    return instantiate(llm_config(), base_url=url, model=model, **{"api_key_env": None, **overrides})


def requests_for(n: int) -> dict[str, dict]:
    return {f"u{i}": {"messages": [{"role": "user", "content": f"history ... KEY=u{i}"}]} for i in range(n)}


def ask(content: str) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


def test_concurrency_bound_is_respected(tmp_path):
    with FakeLLM(delay=0.15) as server:
        client = make_client(server.base_url)
        responses, errors = generate(client, requests_for(12), tmp_path / "c.jsonl", concurrency=3, progress=False)
    assert not errors and len(responses) == 12
    assert server.peak_in_flight <= 3
    assert server.peak_in_flight >= 2  # requests really overlap


def test_retries_on_429_and_500_then_succeeds(tmp_path):
    def flaky(key, attempt):
        return {1: (429, {"error": "slow down"}), 2: (500, {"error": "boom"})}.get(attempt, (200, answer_body("ok")))

    with FakeLLM(flaky) as server:
        client = make_client(server.base_url)
        responses, errors = generate(client, requests_for(4), tmp_path / "c.jsonl", concurrency=2, progress=False)
    assert not errors and all(parse_answer(r) == "ok" for r in responses.values())
    assert set(server.attempts.values()) == {3}


def test_non_retryable_status_and_exhausted_retries_are_reported_and_the_run_goes_on(tmp_path):
    def mixed(key, attempt):
        if key == "u0":
            return 400, {"error": "bad request"}
        if key == "u1":
            return 503, {"error": "down"}
        return 200, answer_body("fine")

    with FakeLLM(mixed) as server:
        client = make_client(server.base_url, max_retries=2)
        responses, errors = generate(client, requests_for(5), tmp_path / "c.jsonl", concurrency=2, progress=False)
    assert set(errors) == {"u0", "u1"} and "HTTP 400" in errors["u0"] and "HTTP 503 after 2 retries" in errors["u1"]
    assert server.attempts["u0"] == 1 and server.attempts["u1"] == 3
    assert set(responses) == {"u2", "u3", "u4"}
    assert set(read_cache(tmp_path / "c.jsonl")) == {"u2", "u3", "u4"}  # failures are not cached: a rerun retries


def test_malformed_response_and_unreachable_endpoint(tmp_path):
    with FakeLLM(lambda k, a: (200, b"not json at all")) as server:
        with pytest.raises(LLMError, match="malformed response"):
            make_client(server.base_url).complete(ask("KEY=x"))
        port = server.httpd.server_address[1]
    client = make_client(f"http://127.0.0.1:{port}/v1", max_retries=1, timeout=2)
    with pytest.raises(LLMError, match="gave up after 2 attempts"):
        client.complete(ask("KEY=x"))
    assert parse_answer("<think>x</think> nothing else") is None
    assert parse_answer("<think>x</think><answer> likes A </answer>") == "likes A"


def test_api_key_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RECGOAT_TEST_KEY", "sk-test")
    with FakeLLM() as server:
        client = make_client(server.base_url, api_key_env="RECGOAT_TEST_KEY")
        client.complete(ask("KEY=a"))
        make_client(server.base_url).complete(ask("KEY=b"))     # no key: local servers need none
    assert server.requests[0]["auth"] == "Bearer sk-test"
    assert server.requests[1]["auth"] == "Bearer unused-by-local-servers"


def test_a_slow_server_times_out_and_is_retried(tmp_path):
    with FakeLLM(delay=1.5) as server:
        client = make_client(server.base_url, max_retries=1, timeout=0.3)
        with pytest.raises(LLMError, match="gave up after 2 attempts .*Timeout"):
            client.complete(ask("KEY=slow"))
    assert server.attempts == {"slow": 2}


RUNNER = """
import sys
from recgoat.features.llm import generate
from tests.test_llm import make_client
reqs = {f"u{i}": {"messages": [{"role": "user", "content": f"KEY=u{i}"}]} for i in range(int(sys.argv[3]))}
generate(make_client(sys.argv[1]), reqs, sys.argv[2], concurrency=1, progress=False)
"""


def test_resume_after_a_killed_run_resends_nothing_cached(tmp_path):
    cache = tmp_path / "cache.jsonl"
    with FakeLLM(delay=0.2) as server:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, server.base_url, str(cache), "20"],
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 60
        while time.time() < deadline and len(read_cache(cache)) < 4:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = set(read_cache(cache))
        assert 4 <= len(done_before) < 20
        n_before = len(server.requests)
        reqs = {f"u{i}": {"messages": [{"role": "user", "content": f"KEY=u{i}"}]} for i in range(20)}
        responses, errors = generate(make_client(server.base_url), reqs, cache,
                                     concurrency=4, progress=False)
        resent = {r["key"] for r in server.requests[n_before:]}
    assert not errors and len(responses) == 20
    assert not resent & done_before
    assert set(read_cache(cache)) == set(reqs)
    lines = cache.read_text().splitlines()
    assert len({json.loads(x)["key"] for x in lines if x.strip().endswith("}")}) == 20


def test_a_cached_response_is_reused_only_for_the_same_request(tmp_path):
    cache = tmp_path / "c.jsonl"
    with FakeLLM(lambda k, a: (200, answer_body(f"first {k}"))) as server:
        generate(make_client(server.base_url), requests_for(3), cache, progress=False)
    with FakeLLM(lambda k, a: (200, answer_body(f"second {k}"))) as server:
        same, _ = generate(make_client(server.base_url), requests_for(3), cache,
                           progress=False)
        assert server.attempts == {}                                   # all three served from the cache
        other_model, _ = generate(make_client(server.base_url, "m2"), requests_for(3), cache,
                                  progress=False)
        changed = requests_for(3)
        changed["u1"] = ask("another history ... KEY=u1")
        changed_prompt, _ = generate(make_client(server.base_url, "m2"), changed, cache,
                                     progress=False)
    assert {parse_answer(r) for r in same.values()} == {"first u0", "first u1", "first u2"}
    assert {parse_answer(r) for r in other_model.values()} == {"second u0", "second u1", "second u2"}
    assert server.attempts == {"u0": 1, "u1": 2, "u2": 1}    # m2 once each, then only the changed prompt
    assert {k: parse_answer(r) for k, r in changed_prompt.items() if k != "u1"} == {"u0": "second u0",
                                                                                   "u2": "second u2"}


def test_the_llm_client_config_sets_every_argument_and_the_client_has_no_defaults():
    import inspect

    from recgoat.utils.config import check_targets, compose
    cfg = compose(["features=ml100k", "profile=llm", "llm.model=m"], config_name="features")
    check_targets(cfg)
    params = inspect.signature(ChatClient).parameters
    assert all(p.default is inspect.Parameter.empty for p in params.values())  # the yaml is the only source
    assert set(params) == set(cfg.llm) - {"_target_"}
    assert isinstance(instantiate(cfg.llm), ChatClient)


def test_the_llama_cpp_server_config_sets_every_argument_and_nothing_else():
    import inspect

    from recgoat.features.server import LlamaCppServer
    from recgoat.utils.config import check_targets, compose
    cfg = compose(["features=ml100k", "profile=llm", "llm_server=llama_cpp"], config_name="features")
    check_targets(cfg)                                                   # no unknown key
    params = inspect.signature(LlamaCppServer).parameters
    assert all(p.default is inspect.Parameter.empty for p in params.values())  # the yaml is the only source
    assert set(params) == set(cfg.llm_server) - {"_target_"}
    assert cfg.llm_server.host == "127.0.0.1" and cfg.features.prompt_fields == ["title", "genres", "year"]
    assert compose(["features=ml100k"], config_name="features").get("llm_server") is None


def test_the_preference_schema_is_sent_and_each_mode_sends_its_own_field():
    items, ids, texts = [0, 2], ["a", "b", "c"], ["Alien", "Brazil", "Cube"]
    schema = prof.chat_request(items, ids, texts, "json_schema")
    assert schema["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "user_preferences", "strict": True, "schema": prof.PREFERENCE_SCHEMA}}
    assert "- [a] Alien" in schema["messages"][-1]["content"] and "JSON object" in schema["messages"][-1]["content"]
    assert prof.chat_request(items, ids, texts, "json_object")["response_format"] == {
        "type": "json_object", "schema": prof.PREFERENCE_SCHEMA}
    assert prof.chat_request(items, ids, texts, "grammar")["grammar"] == prof.PREFERENCE_GRAMMAR
    tags = prof.chat_request(items, ids, texts, "tags")
    assert set(tags) == {"messages"} and "<answer>" in tags["messages"][-1]["content"]
    required = prof.PREFERENCE_SCHEMA["required"]
    assert required == ["shared_attributes", "style_aesthetics", "function_usability", "context_emotion", "other"]


def test_structured_answers_through_a_constraining_server_become_profiles_in_a_fixed_order(tmp_path):
    with FakeLLM(lambda k, a: (200, answer_body("ignored")), enforce=True) as server:
        client = make_client(server.base_url, structured="json_schema")
        reqs = {f"u{i}": prof.chat_request([0], ["x"], [f"item KEY=u{i}"], "json_schema") for i in range(3)}
        responses, errors = generate(client, reqs, tmp_path / "c.jsonl", progress=False)
    assert not errors
    sent = server.requests[0]["payload"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == prof.PREFERENCE_SCHEMA
    assert prof.parse_profile(responses["u1"], "json_schema") == (
        "Shared attributes: things of u1. Style & Aesthetics: style_aesthetics of u1. Function & Usability: "
        "function_usability of u1. Context & Emotion: context_emotion of u1. Other: other of u1.")
    assert read_cache(tmp_path / "c.jsonl")["u1"]["usage"]["completion_tokens"] == 20


def test_answers_that_break_the_schema_parse_to_nothing():
    good = preference_answer("u")
    assert prof.parse_structured(json.dumps(good)) is not None
    missing = {k: v for k, v in good.items() if k != "other"}
    empty = {**good, "style_aesthetics": {"preference": "", "evidence": "x"}}
    extra = {**good, "mood": "happy"}
    for bad in ("not json", json.dumps(missing), json.dumps(empty), json.dumps(extra), "[]", ""):
        assert prof.parse_structured(bad) is None
    assert prof.parse_profile("<answer>likes A</answer>", "tags") == "likes A"
    assert prof.parse_profile("<answer>likes A</answer>", "json_schema") is None



def test_every_field_is_bounded_alike_in_the_schema_and_the_grammar_so_an_answer_ends_within_max_tokens():
    n = prof.MAX_FIELD_CHARS
    at_bound = {**preference_answer("u"), "shared_attributes": "a" * n}
    assert prof.parse_structured(json.dumps(at_bound)) is not None
    for field in ("shared_attributes", "style_aesthetics"):
        longer = {**at_bound, field: "a" * (n + 1) if field == "shared_attributes" else
                  {"preference": "p", "evidence": "e" * (n + 1)}}
        assert prof.parse_structured(json.dumps(longer)) is None
    assert f'string ::= "\\"" char{{1,{n}}} "\\"" ws' in prof.PREFERENCE_GRAMMAR.splitlines()

def test_a_server_without_the_mode_answers_400_and_the_error_names_it(tmp_path):
    with FakeLLM(lambda k, a: (200, json_body(k)), structured=("json_object",)) as server:
        client = make_client(server.base_url, structured="json_schema")
        _, errors = generate(client, {"u0": prof.chat_request([0], ["x"], ["KEY=u0"], "json_schema")},
                             tmp_path / "c.jsonl", progress=False)
        ok, no_errors = generate(make_client(server.base_url, structured="json_object"),
                                 {"u0": prof.chat_request([0], ["x"], ["KEY=u0"], "json_object")},
                                 tmp_path / "c.jsonl", progress=False)
    assert "HTTP 400" in errors["u0"] and "'json_schema' is not supported" in errors["u0"]
    assert not no_errors and prof.parse_structured(ok["u0"]) is not None
    assert server.attempts["u0"] == 2                       # a 400 is not retried


def test_the_cache_key_is_the_whole_request_schema_included():
    client = make_client("http://127.0.0.1:9/v1")
    base = prof.chat_request([0], ["x"], ["KEY=a"], "json_schema")
    other_schema = {**base, "response_format": {**base["response_format"], "json_schema": {
        **base["response_format"]["json_schema"], "schema": {"type": "object"}}}}
    keys = {client.request_sha256(r) for r in (base, other_schema, prof.chat_request([0], ["x"], ["KEY=a"], "tags"),
                                               prof.chat_request([0], ["x"], ["KEY=a"], "grammar"))}
    assert len(keys) == 4
    # a tags request hashes as the body before structured output existed: earlier caches stay valid
    tags = prof.chat_request([0], ["x"], ["KEY=a"], "tags")
    before = json.dumps({"model": "m", "messages": tags["messages"], "temperature": client.temperature,
                         "max_tokens": client.max_tokens}, sort_keys=True).encode()
    assert client.request(tags) == before
    with pytest.raises(Exception, match="llm.structured must be one of json_schema, json_object, grammar, tags"):
        make_client("http://127.0.0.1:9/v1", structured="xml")
