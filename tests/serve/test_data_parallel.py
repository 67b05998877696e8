"""--data-parallel N: N engines behind one HTTP front, each request to the least loaded; answers unchanged."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import dlm

from .conftest import ServerProcess

BODY = {"max_tokens": 32, "block_length": 32, "steps": 8, "logits_eos_inf": True}


@pytest.mark.slow
def test_two_engines_share_the_requests(chat_path, tmp_path):
    s = ServerProcess(["--model", str(chat_path), "--data-parallel", "2", "--device", "cpu", "--max-rows", "2"],
                      tmp_path / "server.log")
    prompts = [f"item {i}:" for i in range(8)]

    async def main():
        async with httpx.AsyncClient(base_url=s.url, timeout=120) as http:
            rs = await asyncio.gather(*(http.post("/v1/completions", json={**BODY, "prompt": p}) for p in prompts))
            return [r.json()["choices"][0]["text"] for r in rs]

    try:
        card = httpx.get(s.url + "/v1/models").json()["data"][0]["dlm"]
        texts = asyncio.run(main())
        steps = [s.metric(f'dlm_engine_steps_total{{replica="{r}"}}') for r in ("0", "1")]
    finally:
        s.stop()
    lm = dlm.load(chat_path, device="cpu")
    cfg = dlm.GenerationConfig(gen_length=32, steps=8, logits_eos_inf=True)
    assert texts == [lm.generate(p, cfg).texts[0] for p in prompts]
    assert card["replicas"] == 2 and card["max_rows"] == 4
    assert all(n > 0 for n in steps), steps
