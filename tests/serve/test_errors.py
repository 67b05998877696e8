"""Bad input: an OpenAI-shaped 400 (404 for an unknown model or route) that names the field; the server
serves correctly afterwards."""

from __future__ import annotations

import httpx
import pytest

OK = {"prompt": "def add(a, b):", "max_tokens": 32, "steps": 8}
CHAT = {"messages": [{"role": "user", "content": "hi"}]}

# (endpoint, body, status, param, words in the message)
CASES = [
    ("completions", {**OK, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ("completions", {**OK, "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ("completions", {**OK, "temperature": -1}, 400, "temperature", "greater than or equal to 0"),
    ("completions", {**OK, "top_p": 1.5}, 400, "top_p", "(0, 1]"),
    ("completions", {**OK, "n": 0}, 400, "n", "greater than or equal to 1"),
    ("completions", {**OK, "seed": -3}, 400, "seed", "greater than or equal to 0"),
    ("completions", {**OK, "stream": "yes"}, 400, "stream", "boolean"),
    ("completions", {**OK, "scheduler": "nope"}, 400, "scheduler", "threshold"),
    ("completions", {**OK, "scheduler": "threshold", "scheduler_kwargs": {"threshold": 2}}, 400,
     "scheduler_kwargs", "threshold"),
    ("completions", {**OK, "scheduler_kwargs": {"bogus": 1}}, 400, "scheduler_kwargs", "bogus"),
    ("completions", {**OK, "cache": "nope"}, 400, "cache", "nope"),
    ("completions", {**OK, "max_tokens": 64, "steps": 7}, 400, "steps", "multiple"),
    ("completions", {**OK, "block_length": 0}, 400, "block_length", "greater than or equal to 1"),
    ("completions", {**OK, "eotp_threshold": 0.5}, 400, "eotp_threshold", "eotp"),
    ("completions", {**OK, "stop_token_ids": [10**6]}, 400, "stop_token_ids", "vocabulary"),
    ("completions", {**OK, "stop": ""}, 400, "stop", "empty"),
    ("completions", {**OK, "stop": ["a"] * 17}, 400, "stop", "at most"),
    ("completions", {**OK, "foo": 1}, 400, "foo", "unknown field"),
    ("completions", {**OK, "gen_length": 32}, 400, "gen_length", "unknown field"),
    ("completions", {**OK, "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
    ("completions", {**OK, "logprobs": 2}, 400, "logprobs", "not supported"),
    ("completions", {**OK, "echo": True}, 400, "echo", "not supported"),
    ("completions", {**OK, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("completions", {**OK, "stream": True, "stream_options": {"bogus": True}}, 400, "stream_options.bogus",
     "unknown field"),
    ("completions", {k: v for k, v in OK.items() if k != "prompt"}, 400, "prompt", "required"),
    ("completions", {**OK, "prompt": []}, 400, "prompt", "non-empty"),
    ("completions", {**OK, "prompt": 12}, 400, "prompt", "int"),
    ("completions", {**OK, "prompt": [[5, 6], []]}, 400, "prompt", "empty"),
    ("completions", {**OK, "prompt": [5, 10**6]}, 400, "prompt", "vocabulary"),
    ("completions", {**OK, "prompt": [5, 3, 6]}, 400, "prompt", "mask"),
    ("completions", {**OK, "prompt": list(range(5, 1005))}, 400, "prompt", "context"),
    ("completions", {**OK, "max_tokens": 5000}, 400, "prompt", "context"),
    ("completions", {**OK, "model": "gpt-4"}, 404, "model", "does not exist"),
    ("completions", {**OK, "verify": "nope"}, 400, "verify", "nope"),
    ("completions", {**OK, "verify": "stepwise", "temperature": 0.7}, 400, None, "temperature"),
    ("chat/completions", {**CHAT, "messages": []}, 400, "messages", "at least 1"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", "user"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "messages.0.content.0.type", "'text'"),
    ("chat/completions", {**CHAT, "tools": []}, 400, "tools", "not supported"),
    ("chat/completions", {**CHAT, "max_tokens": 8, "max_completion_tokens": 16}, 400, "max_completion_tokens",
     "disagree"),
]


@pytest.mark.parametrize("endpoint,body,status,param,words", CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_a_clear_error(server, endpoint, body, status, param, words):
    r = httpx.post(f"{server.url}/v1/{endpoint}", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == ("not_found_error" if status == 404 and param is None else "invalid_request_error")
    if param is not None or "verify" not in body:
        assert err["param"] == param, err
    assert words in err["message"], err


@pytest.mark.parametrize("raw,words", [(b'{"prompt": "x", ', "not valid JSON"), (b"[1, 2]", "JSON object"),
                                       (b"", "JSON object"), (b"null", "JSON object")])
def test_malformed_bodies(server, raw, words):
    r = httpx.post(f"{server.url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


def test_unknown_routes_and_methods(server):
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert httpx.get(server.url + "/v1/completions").status_code == 405


def test_the_server_still_serves_after_bad_input(server, model):
    import dlm

    r = httpx.post(f"{server.url}/v1/completions", json=OK, timeout=120)
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == model.generate(OK["prompt"], dlm.GenerationConfig(
        gen_length=32, steps=8)).texts[0]
    assert server.metric('dlm_requests_total{endpoint="completions",outcome="invalid"}') > 0
