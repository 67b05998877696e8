"""32 concurrent clients, several requests each, mixed settings: every answer equals ``model.generate`` of
that request alone (greedy and seeded sampling), whatever ran beside it."""

from __future__ import annotations

import asyncio

import pytest

import dlm

PROMPTS = ["def add(a, b):", "class Stack:\n", "def read_lines(path):\n", "x = [1, 2, 3]\n"]
# (max_tokens, dlm fields, temperature, seed): greedy and sampled, two schedulers, two lengths
SETTINGS = [(32, {"steps": 8}, 0.0, None), (64, {"steps": 16, "logits_eos_inf": True}, 0.9, 11),
            (32, {"scheduler": "threshold", "scheduler_kwargs": {"threshold": 0.5}}, 0.8, 5),
            (32, {"steps": 8, "logits_eos_inf": True}, 1.0, 3)]
CLIENTS, PER_CLIENT = 32, 3


def request_of(i: int, k: int) -> tuple[str, int, dict, float, int | None, bool]:
    """Client i's k-th request: (prompt, max_tokens, dlm fields, temperature, seed, stream)."""
    n = i * PER_CLIENT + k
    max_tokens, fields, temperature, seed = SETTINGS[n % len(SETTINGS)]
    return PROMPTS[(n // len(SETTINGS)) % len(PROMPTS)], max_tokens, fields, temperature, seed, n % 4 == 3


async def ask(client, prompt, max_tokens, fields, temperature, seed, stream) -> str:
    kwargs = dict(model="dlm-tiny", prompt=prompt, max_tokens=max_tokens, temperature=temperature,
                  extra_body=dict(fields))
    if seed is not None:
        kwargs["seed"] = seed
    if not stream:
        return (await client.completions.create(**kwargs)).choices[0].text
    parts = []
    async for chunk in await client.completions.create(stream=True, **kwargs):
        parts.append(chunk.choices[0].text)
    return "".join(parts)


@pytest.mark.slow
def test_every_answer_equals_the_request_alone(server, model):
    from openai import AsyncOpenAI

    async def client_task(client, i):
        return [await ask(client, *request_of(i, k)) for k in range(PER_CLIENT)]

    async def main():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(client_task(client, i) for i in range(CLIENTS)))

    answers = asyncio.run(main())
    expected: dict[tuple, str] = {}
    for i in range(CLIENTS):
        for k in range(PER_CLIENT):
            prompt, max_tokens, fields, temperature, seed, _ = request_of(i, k)
            key = (prompt, max_tokens, repr(sorted(fields.items())), temperature, seed)
            if key not in expected:
                config = dlm.GenerationConfig(gen_length=max_tokens, block_length=32, temperature=temperature,
                                              seed=seed or 0, **fields)
                expected[key] = model.generate(prompt, config).texts[0]
            assert answers[i][k] == expected[key], (i, k, key)
    assert len(expected) == len(PROMPTS) * len(SETTINGS)  # distinct requests, each computed alone once
    assert server.metric("dlm_running_requests") == 0
