"""The denoising loop: configuration errors, bad inputs, padding invariance, NFE, trace, streaming, batching."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.errors import ConfigError, GenerationError, RegistryError

from .conftest import random_prompts


# ---------------------------------------------------------------------------------------------- configuration
def test_config_defaults_and_round_trip():
    c = GenerationConfig()
    assert c.effective_block_length == 32 and c.effective_steps == 128 and c.num_blocks == 4
    c2 = GenerationConfig(gen_length=48)  # 32 does not divide 48: one block
    assert c2.effective_block_length == 48 and c2.num_blocks == 1
    assert c.replace(gen_length=16).effective_block_length == 16  # defaults follow replace()
    c3 = GenerationConfig(gen_length=64, block_length=16, steps=32, scheduler="maskgit_plus",
                          scheduler_kwargs={"eps": 0.01}, cache="delayed", cache_kwargs={"refresh_every": 2},
                          temperature=0.5, top_k=5, top_p=0.9, stop_token_ids=[1, 2], eotp=True, eotp_threshold=0.8)
    again = GenerationConfig.from_json(c3.to_json())
    assert again == c3 and again.to_dict() == c3.to_dict()
    with pytest.raises(TypeError):
        c3.scheduler_kwargs["eps"] = 0.5  # frozen, kwargs included
    with pytest.raises(AttributeError):
        c3.gen_length = 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gen_length": 50, "block_length": 32}, r"gen_length \(50\) must be a multiple of block_length \(32\)"),
        ({"gen_length": 64, "block_length": 16, "steps": 6}, r"steps \(6\) must be a multiple of the number of blocks"),
        ({"gen_length": 0}, "gen_length must be >= 1, got 0"),
        ({"gen_length": 16.0}, "gen_length must be an integer"),
        ({"temperature": -1.0}, "temperature must be >= 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"cfg_scale": float("nan")}, "cfg_scale must be a number"),
        ({"sampling": "beam"}, "sampling must be one of auto, gumbel, categorical"),
        ({"eotp_threshold": 0.9}, "eotp_threshold is set but eotp is False"),
        ({"stop_token_ids": []}, "stop_token_ids must be a non-empty list"),
        ({"scheduler_kwargs": {"tau": 0.5}}, "scheduler 'low_confidence' has no parameter"),
        ({"cache": "dual", "cache_kwargs": {"refresh_every": -1}}, "refresh_every must be a non-negative integer"),
        ({"seed": -3}, "seed must be >= 0"),
    ],
)
def test_config_errors_name_the_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GenerationConfig(**kwargs)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(RegistryError, match=r"unknown scheduler 'fastest'; known schedulers: .*low_confidence"):
        GenerationConfig(scheduler="fastest")
    with pytest.raises(RegistryError, match=r"unknown cache 'paged'; known caches: .*dual.*none"):
        GenerationConfig(cache="paged")
    with pytest.raises(RegistryError, match=r"unknown verifier 'magic'"):
        GenerationConfig(verify="magic")
    with pytest.raises(ConfigError, match="unknown GenerationConfig field"):
        GenerationConfig.from_dict({"gen_len": 3})


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs(llada, dream):
    cfg = GenerationConfig(gen_length=16, block_length=8)
    with pytest.raises(ConfigError, match="batch of prompts is empty"):
        llada.generate([], cfg)
    with pytest.raises(ConfigError, match=r"canvas needs \d+ positions but the model's context is 512"):
        llada.generate([[1] * 500], cfg)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        llada.generate([[1, 2, 10_000]], cfg)
    with pytest.raises(ConfigError, match="contains the mask token id"):
        llada.generate([[1, llada.ids.mask_id]], cfg)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        dream.generate([[1, 2], []], cfg)
    out = llada.generate([[]], cfg)  # LLaDA can generate from nothing
    assert out.sequences.shape == (1, 16)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        llada.generate([[1], [2], [3]], cfg, batch_size=0)


def test_nan_logits_raise_a_clear_error(llada_path):
    lm = dlm.load(llada_path, device="cpu")
    with torch.no_grad():
        lm.model.layers[1].up.weight[0, 0] = float("nan")
    with pytest.raises(GenerationError, match=r"NaN logits for request \d+ at its step 1"):
        lm.generate([[5, 6, 7]], GenerationConfig(gen_length=8, block_length=8))


# ---------------------------------------------------------------------------------------------- behaviour
def test_padding_invariance(tiny):
    """A prompt's answer does not depend on the other prompts of its batch (temperature 0)."""
    for scheduler in ("low_confidence", "maskgit_plus", "entropy", "topk_margin"):
        cfg = GenerationConfig(gen_length=16, block_length=8, scheduler=scheduler, stop_at_eos=False)
        prompts = random_prompts(tiny, 5, seed=11, min_len=1, max_len=20)
        batched = tiny.generate(prompts, cfg).sequences
        for r, p in enumerate(prompts):
            alone = tiny.generate([p], cfg).sequences[0]
            assert torch.equal(alone, batched[r]), (scheduler, r)


def test_nfe_and_steps(llada):
    cfg = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    out = llada.generate(random_prompts(llada, 2, seed=3), cfg)
    assert out.nfe.tolist() == [16, 16] and out.steps == 16
    out = llada.generate(random_prompts(llada, 2, seed=3), cfg.replace(steps=8))
    assert out.nfe.tolist() == [8, 8]
    out = llada.generate(random_prompts(llada, 2, seed=3), cfg.replace(steps=8, cfg_scale=1.0))
    assert out.nfe.tolist() == [16, 16]  # a guided step is two forward passes
    assert out.tokens_per_step == 1.0


def test_trace_and_stream(tiny):
    events = []
    cfg = GenerationConfig(gen_length=16, block_length=4, steps=8, return_trace=True, stop_at_eos=False)
    prompts = random_prompts(tiny, 3, seed=4)
    out = tiny.generate(prompts, cfg, stream=events.append)
    trace = out.trace.commit_step
    assert trace.shape == (3, 16) and (trace >= 0).all()
    assert out.trace.block_steps == [[2, 2, 2, 2]] * 3
    for b in range(1, 4):  # blocks are decoded left to right
        assert trace[:, b * 4 : (b + 1) * 4].min() > trace[:, (b - 1) * 4 : b * 4].max()
    assert len(events) == 3 * out.steps and out.steps == 8  # one event per request and step
    rebuilt = torch.full((3, 16), tiny.ids.mask_id)
    for e in events:
        r = e.tag
        for pos, tok in e.new_tokens():
            assert rebuilt[r, pos] == tiny.ids.mask_id  # each position is committed once
            rebuilt[r, pos] = tok
            assert trace[r, pos] == e.step - 1
    assert torch.equal(rebuilt, out.sequences)


def test_seeded_sampling_is_reproducible(llada):
    prompts = random_prompts(llada, 2, seed=8)
    cfg = GenerationConfig(gen_length=16, block_length=8, temperature=1.0, seed=42, stop_at_eos=False)
    a, b = llada.generate(prompts, cfg).sequences, llada.generate(prompts, cfg).sequences
    c = llada.generate(prompts, cfg.replace(seed=43)).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_size_splits_like_one_batch(llada):
    prompts = random_prompts(llada, 5, seed=9)
    cfg = GenerationConfig(gen_length=8, block_length=8, stop_at_eos=False, return_trace=True)
    whole = llada.generate(prompts, cfg)
    parts = llada.generate(prompts, cfg, batch_size=2, progress=False)
    assert torch.equal(whole.sequences, parts.sequences) and parts.texts == whole.texts
    assert parts.trace.commit_step.shape == (5, 8)


def test_text_prompts_and_chat_template(llada, dream):
    for lm, marker in ((llada, "<|start_header_id|>"), (dream, "<|im_start|>")):
        ids = lm.encode("hi there", chat_template=True)[0]
        assert marker in lm.tokenizer.decode(ids)
        out = lm.generate(["hi there", "x"], gen_length=8, chat_template=True)
        assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
        assert out.prompt_ids[0] == ids


def test_texts_stop_at_the_first_stop_token(llada):
    out = llada.generate([[1, 2, 3]], GenerationConfig(gen_length=8, block_length=8, stop_at_eos=False))
    seq = out.sequences[0].tolist()
    cut = next((i for i, t in enumerate(seq) if t in llada.ids.stop_ids), len(seq))
    assert out.texts[0] == llada.tokenizer.decode(seq[:cut], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------- CLI
def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "dlm", *map(str, args)], capture_output=True, text=True)


def test_cli_generate_end_to_end(llada_path, tmp_path):
    r = _cli("generate", "--model", llada_path, "hello", "--gen-length", 16, "--block-length", 8, "--json",
             "--return-trace", "--scheduler-arg", "x=1")
    assert r.returncode == 2 and "has no parameter(s) 'x'" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", llada_path, "hello", "--gen-length", 16, "--block-length", 8, "--json",
             "--return-trace", "--no-stop-at-eos")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(rec["tokens"]) == 16 and rec["nfe"] == 16 and len(rec["commit_step"]) == 16
    inp = tmp_path / "prompts.jsonl"
    inp.write_text('"plain string"\n{"prompt": "hi"}\n{"prompt_ids": [1, 2, 3]}\n')
    out = tmp_path / "out" / "answers.jsonl"
    r = _cli("generate", "--model", llada_path, "--input", inp, "--output", out, "--gen-length", 8,
             "--scheduler", "low_confidence", "--cache", "dual", "--batch-size", 2, "--temperature", 0.5, "--seed", 3)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[2]["prompt_ids"] == [1, 2, 3] and all(len(x["tokens"]) == 8 for x in rows)


def test_cli_errors_are_one_line(tmp_path, llada_path):
    r = _cli("generate", "--model", tmp_path / "missing", "hi")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", llada_path, "hi", "--gen-length", 10, "--block-length", 4)
    assert r.returncode == 2 and "must be a multiple of block_length" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    r = _cli("generate", "--model", llada_path, "--input", bad)
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = _cli("schedulers")
    assert r.returncode == 0 and "low_confidence" in r.stdout and "maskgit_plus" in r.stdout
    r = _cli("caches")
    assert r.returncode == 0 and "dual" in r.stdout and "delayed" in r.stdout
