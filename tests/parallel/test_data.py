"""Data parallelism: replicas in spawned CPU processes give the answers of one process, in input order."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.errors import CheckpointError, ConfigError, GenerationError
from dlm.parallel.data import ReplicaPool, as_prompt_list, replica_devices, shares

from ..conftest import random_prompts

CONFIGS = {
    "dual": dlm.GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", stop_at_eos=False),
    "threshold": dlm.GenerationConfig(gen_length=16, block_length=8, scheduler="threshold", cache="prefix"),
}


@pytest.fixture(scope="module")
def pool(peaky_llada):
    with ReplicaPool.from_path(peaky_llada, ["cpu", "cpu"], start_timeout=240, tokenizer=True) as p:
        yield p


@pytest.fixture(scope="module")
def single(peaky_llada):
    return dlm.load(peaky_llada, device="cpu")


def test_shares_cover_in_order():
    for n in range(0, 12):
        for parts in range(1, 5):
            ranges = shares(n, parts)
            assert [i for r in ranges for i in r] == list(range(n))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_prompt_list():
    assert as_prompt_list("a") == ["a"]
    assert as_prompt_list([1, 2]) == [[1, 2]]
    assert as_prompt_list(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert as_prompt_list(["a", "b"]) == ["a", "b"]


def test_replica_devices():
    assert replica_devices(3, "cpu") == [torch.device("cpu")] * 3
    assert replica_devices("2", "cpu") == [torch.device("cpu")] * 2
    for bad in (0, -1, "x", 1.5, True):
        with pytest.raises(ConfigError, match="positive number of replicas"):
            replica_devices(bad, "cpu")
    if torch.cuda.device_count() == 0:
        assert replica_devices("auto") == [torch.device("cpu")]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_answers_as_one_process(pool, single, name):
    prompts = random_prompts(single, 7, seed=11, max_len=10)  # 7 over 2 replicas: shares of 3 and 4
    ref = single.generate(prompts, CONFIGS[name])
    out = pool.generate(prompts, CONFIGS[name])
    assert torch.equal(out.sequences, ref.sequences)
    assert out.prompt_ids == ref.prompt_ids
    assert out.texts == ref.texts
    assert torch.equal(out.nfe, ref.nfe)


@pytest.mark.slow
def test_batches_subsets_and_text(pool, single):
    prompts = ["def f(x):", "import os", "a = 1", "class A:", "x"]
    cfg = CONFIGS["dual"]
    ref = single.generate(prompts, cfg)
    assert torch.equal(pool.generate(prompts, cfg, batch_size=2).sequences, ref.sequences)
    assert torch.equal(pool.generate(prompts, cfg, replicas=[1]).sequences, ref.sequences)
    one = pool.generate(prompts[:1], cfg)  # fewer prompts than replicas: one share is empty
    assert torch.equal(one.sequences, ref.sequences[:1])


@pytest.mark.slow
def test_worker_errors_come_back_and_pool_survives(pool, single):
    too_long = [[1] * 600]
    with pytest.raises(ConfigError, match="context"):
        pool.generate([[1, 2]] + too_long, CONFIGS["dual"])
    prompts = random_prompts(single, 2, seed=3)
    assert torch.equal(pool.generate(prompts, CONFIGS["dual"]).sequences,
                       single.generate(prompts, CONFIGS["dual"]).sequences)
    with pytest.raises(ConfigError, match="replicas must be distinct"):
        pool.generate(prompts, CONFIGS["dual"], replicas=[0, 0])


def test_bad_folder_fails_before_spawning(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ReplicaPool.from_path(tmp_path / "nope", ["cpu"])
    with pytest.raises(ConfigError, match="drop device"):
        ReplicaPool.from_path(None, ["cpu"], device="cpu")


def _crash_loader(device):
    raise ConfigError("broken replica")


@pytest.mark.slow
def test_load_error_and_dead_worker(peaky_llada):
    with pytest.raises(ConfigError, match="broken replica"):
        ReplicaPool(_crash_loader, ["cpu"], start_timeout=120)
    pool = ReplicaPool.from_path(peaky_llada, ["cpu"], start_timeout=120)
    try:
        pool._procs[0].kill()
        pool._procs[0].join(timeout=10)
        with pytest.raises(GenerationError, match="replica 0 on cpu exited"):
            pool.generate([[1, 2]], CONFIGS["dual"], timeout=60)
    finally:
        pool.close()


@pytest.mark.slow
def test_cli(peaky_llada, single, tmp_path):
    from dlm.cli import main

    prompts = random_prompts(single, 3, seed=5)
    ref = single.generate(prompts, CONFIGS["dual"])
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    dst = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(peaky_llada), "--input", str(src), "--output", str(dst), "--device", "cpu",
            "--gen-length", "16", "--block-length", "8", "--steps", "8", "--cache", "dual", "--no-stop-at-eos",
            "--data-parallel", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["tokens"] for r in rows] == ref.sequences.tolist()
    assert [r["prompt_ids"] for r in rows] == prompts
