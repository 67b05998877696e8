"""The API key, the queue limit (429), the request timeout (504), and a failing request that fails alone."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import dlm

from .conftest import ENDLESS, KEY, wait_for

AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"prompt": "def add(a, b):", "max_tokens": 32, "steps": 8}


def expected(model) -> str:
    return model.generate(OK["prompt"], dlm.GenerationConfig(gen_length=32, steps=8)).texts[0]


def test_every_api_route_needs_the_key(small_server):
    url = small_server.url
    for path in ("/v1/models", "/metrics", "/v1/dlm/options"):
        r = httpx.get(url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + path, headers=AUTH).status_code == 200
    assert httpx.post(url + "/v1/completions", json=OK).status_code == 401
    assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200


def test_openai_client_with_a_wrong_key(small_server):
    import openai

    client = openai.OpenAI(base_url=small_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.completions.create(model="dlm-tiny", prompt="x", max_tokens=8)


def test_a_full_server_answers_429_with_retry_after(small_server, model):
    s = small_server

    async def main():
        async with httpx.AsyncClient(base_url=s.url, headers=AUTH, timeout=60) as http:
            held = [asyncio.create_task(http.post("/v1/completions", json=ENDLESS)) for _ in range(3)]
            # 2 rows running + 1 queued = the capacity (--max-rows 2 --max-queue 1)
            await asyncio.to_thread(wait_for, lambda: s.metric("dlm_running_requests", AUTH) == 2
                                    and s.metric("dlm_queue_depth", AUTH) == 1)
            r = await http.post("/v1/completions", json=OK)
            for t in held:  # the clients leave: their requests are cancelled
                t.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            return r

    r = asyncio.run(main())
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "queue_full" and int(r.headers["Retry-After"]) >= 1
    wait_for(lambda: s.metric("dlm_active_rows", AUTH) == 0 and s.metric("dlm_queue_depth", AUTH) == 0)
    assert s.metric('dlm_requests_total{endpoint="completions",outcome="rejected"}', AUTH) >= 1
    r = httpx.post(s.url + "/v1/completions", json=OK, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected(model)


def test_a_request_over_the_timeout_is_cancelled(small_server):
    s = small_server
    t0 = time.monotonic()
    r = httpx.post(s.url + "/v1/completions", json=ENDLESS, headers=AUTH, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert 5 < time.monotonic() - t0 < 30
    wait_for(lambda: s.metric("dlm_active_rows", AUTH) == 0)
    assert s.metric('dlm_requests_total{endpoint="completions",outcome="timeout"}', AUTH) >= 1


def test_a_failing_request_fails_alone(small_server, model):
    s = small_server

    async def main():
        async with httpx.AsyncClient(base_url=s.url, headers=AUTH, timeout=60) as http:
            return await asyncio.gather(http.post("/v1/completions", json={**OK, "scheduler": "explode"}),
                                        http.post("/v1/completions", json=OK))

    bad, good = asyncio.run(main())
    assert bad.status_code == 500
    err = bad.json()["error"]
    assert err["type"] == "server_error" and "explode" in err["message"] and "boom" in err["message"]
    assert good.status_code == 200 and good.json()["choices"][0]["text"] == expected(model)


def test_a_failing_stream_ends_with_an_error_event(small_server):
    import openai

    client = openai.OpenAI(base_url=small_server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIError, match="boom"):
        for _ in client.completions.create(model="dlm-tiny", prompt="x", max_tokens=32, stream=True,
                                           extra_body={"scheduler": "explode"}):
            pass


def test_the_server_still_serves_correctly_afterwards(small_server, model):
    r = httpx.post(small_server.url + "/v1/completions", json=OK, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected(model)
    assert small_server.metric("dlm_active_rows", AUTH) == 0


def test_more_answers_than_the_server_can_ever_hold_is_400(small_server):
    r = httpx.post(small_server.url + "/v1/completions", json={**OK, "n": 4}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "at most 3" in r.json()["error"]["message"]
