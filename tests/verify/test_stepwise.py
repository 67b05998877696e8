"""``verify="stepwise"``: token for token the one-token-per-step greedy decode, in fewer forward passes.

The property test runs 208 random prompts (52 per model) over four tiny random models (two LLaDA, two Dream,
so the logit shift is covered), batch 1 and batches of up to 16 prompts of different lengths (padding), block
lengths 4, 8, 16 and 32, fixed and adaptive numbers of drafts, stop tokens (chosen among the tokens the models
actually produce, so answers end mid-canvas), classifier-free guidance with ``confidence_eos_eot_inf`` (ties at
-inf) and exact caches. For every row it checks the sequences and texts, and the forward passes exactly: with
``a_1..a_n`` tokens accepted in the row's rounds, the reference spends ``sum a_i`` and the verifier
``n + [a_n >= 2]`` (see :mod:`dlm.verify.stepwise`).

Block lengths are multiples of 4: torch's CPU matmul picks a different kernel for fewer than 12 rows except at
4 and 8 rows, and the verifier batches K drafts where the reference has one row, so other small shapes would
compare logits that differ by an ulp (the module doc of ``dlm.verify.stepwise`` explains the assumption).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from dlm import GenerationConfig
from dlm.errors import ConfigError
from dlm.schedulers.base import select_top
from dlm.verify import StepwiseVerifier
from dlm.verify.stepwise import stepwise_order

from ..conftest import random_prompts
from .conftest import DIFFUSION_MODELS


@dataclass(frozen=True)
class Case:
    name: str
    n: int  # prompts
    batch: int  # prompts per generate call
    gen: int
    block: int
    verify: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    stops: bool = False  # stop at a token the model produces (answers end early)


CASES = [
    Case("batch1-block8", n=10, batch=1, gen=16, block=8, verify={"drafts": 4}),
    Case("batch8-block4-adaptive", n=8, batch=8, gen=16, block=4, verify={"drafts": 2, "adaptive": True,
                                                                         "max_drafts": 8}),
    Case("batch16-block16", n=16, batch=16, gen=32, block=16, verify={"drafts": 8}),
    Case("batch5-block8-stops", n=10, batch=5, gen=32, block=8, verify={"drafts": 5}, stops=True),
    Case("batch4-block32-dualexact-cfg", n=8, batch=4, gen=32, block=32, verify={"drafts": 6}, stops=True,
         config={"cache": "dual", "cache_kwargs": {"refresh_every": 1}, "cfg_scale": 0.5,
                 "confidence_eos_eot_inf": True}),
]


def frequent_token(lm, prompts, cfg) -> int:
    """The byte token the reference produces most often: used as a stop token, answers end early."""
    seqs = lm.generate(prompts, cfg.replace(stop_at_eos=False)).sequences
    seqs = seqs[seqs < 256]
    return int(torch.bincount(seqs).argmax())


def rounds_of(commit_step_row: torch.Tensor) -> list[int]:
    """Tokens committed per round (in round order) from the verifier's trace of one row."""
    steps = commit_step_row[commit_step_row >= 0].long()
    counts = torch.bincount(steps)
    return counts[counts > 0].tolist()


def check_row_nfe(out, ref, copies: int) -> int:
    """Exact NFE accounting per row; returns the forwards saved over the batch."""
    saved = 0
    for r in range(out.sequences.shape[0]):
        a = rounds_of(out.trace.commit_step[r])
        ref_tokens = int((ref.trace.commit_step[r] >= 0).sum())
        assert sum(a) == ref_tokens, "the verifier committed a different number of tokens than the reference"
        assert int(ref.nfe[r]) == copies * ref_tokens
        assert int(out.nfe[r]) == copies * (len(a) + (a[-1] >= 2)), (a, int(out.nfe[r]))
        assert int(out.nfe[r]) <= int(ref.nfe[r])
        if any(x >= 2 for x in a[:-1]) or a[-1] >= 3:
            assert int(out.nfe[r]) < int(ref.nfe[r])
        saved += int(ref.nfe[r]) - int(out.nfe[r])
    return saved


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("model", list(DIFFUSION_MODELS))
def test_stepwise_equals_one_token_per_step(diffusion_models, model, case):
    lm = diffusion_models[model]
    seed = 1000 * list(DIFFUSION_MODELS).index(model) + CASES.index(case)
    prompts = random_prompts(lm, case.n, seed=seed, max_len=12)
    cfg = GenerationConfig(gen_length=case.gen, block_length=case.block, return_trace=True, **case.config)
    if case.stops:
        cfg = cfg.replace(stop_token_ids=(frequent_token(lm, prompts, cfg),))
    vcfg = cfg.replace(verify="stepwise", verify_kwargs=case.verify)
    ref_cfg = StepwiseVerifier.reference_config(vcfg)
    assert ref_cfg == cfg.replace(steps=case.gen)  # the default config IS the one-token-per-step decode
    copies = 2 if cfg.cfg_scale > 0 else 1
    saved = stopped = 0
    for i in range(0, case.n, case.batch):
        batch = prompts[i : i + case.batch]
        ref = lm.generate(batch, ref_cfg)
        out = lm.generate(batch, vcfg)
        assert torch.equal(out.sequences, ref.sequences), f"rows differ: {(out.sequences != ref.sequences).any(1)}"
        assert out.texts == ref.texts
        saved += check_row_nfe(out, ref, copies)
        stopped += int(torch.isin(ref.sequences[:, :-1], torch.tensor(cfg.stop_token_ids or ())).any(1).sum())
        s = out.stats
        assert s["accepted_tokens"] * copies == s["nfe_reference"] == float(ref.nfe.sum())
        assert s["block_efficiency"] == pytest.approx(s["accepted_tokens"] / s["row_rounds"])
        assert s["forwards"] * copies == float(out.nfe.sum()) and s["draft_rows"] >= out.nfe.sum()
    assert saved > 0, "no round accepted more than one draft: the test would not exercise verification"
    if case.stops and not cfg.confidence_eos_eot_inf:  # (that option commits stop tokens last)
        assert stopped > 0, "no answer stopped early: the stop rules were not exercised"


@pytest.mark.parametrize("model", ["llada-1", "dream-2"])
def test_blind_acceptance_would_be_caught(diffusion_models, model):
    """The models are sensitive to the commit order: committing 4 tokens per step (what accepting every draft
    of K = 4 would do when confidences do not move) changes the output, so the equality tests above fail on a
    verifier that accepts drafts without checking them."""
    lm = diffusion_models[model]
    prompts = random_prompts(lm, 8, seed=77)
    cfg = GenerationConfig(gen_length=16, block_length=8)
    ref = lm.generate(prompts, cfg)
    par = lm.generate(prompts, cfg.replace(steps=4))
    assert not torch.equal(ref.sequences, par.sequences)


def test_prefix_exact_cache_and_bigger_drafts_than_block(diffusion_models):
    lm = diffusion_models["dream-12"]
    prompts = random_prompts(lm, 6, seed=5)
    cfg = GenerationConfig(gen_length=16, block_length=4, cache="prefix", cache_kwargs={"refresh_every": 1})
    ref = lm.generate(prompts, cfg)
    out = lm.generate(prompts, cfg.replace(verify="stepwise", verify_kwargs={"drafts": 12}))
    assert torch.equal(out.sequences, ref.sequences) and out.texts == ref.texts
    assert out.stats["drafted_tokens"] <= out.stats["row_rounds"] * 4  # drafts never leave the block


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("cache, kwargs", [("dual", {}), ("prefix", {"refresh_every": 2}), ("delayed", {}),
                                           ("window", {"refresh_every": 4}),
                                           ("dual", {"refresh_every": 1, "refresh_to": "block"}),
                                           ("dual", {"refresh_every": 1, "refresh_from": "last_block"})])
def test_approximate_cache_is_refused(llada, cache, kwargs):
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=cache, cache_kwargs=kwargs, verify="stepwise")
    with pytest.raises(ConfigError, match=rf"needs an exact cache, but cache='{cache}'.*refresh_every': 1"):
        llada.generate([[1, 2, 3]], cfg)


@pytest.mark.parametrize("changes, message", [
    ({"temperature": 0.7}, "temperature must be 0, got 0.7"),
    ({"scheduler": "threshold"}, "scheduler must be 'low_confidence'"),
    ({"eotp": True}, "does not support eotp=True"),
    ({"verify_kwargs": {"draft": 3}}, r"verifier 'stepwise' has no parameter\(s\) 'draft'; its parameters are: "
                                      "adaptive, drafts, max_drafts"),
    ({"verify_kwargs": {"drafts": 0}}, "drafts must be an integer >= 1, got 0"),
])
def test_bad_settings_are_refused(llada, changes, message):
    cfg = GenerationConfig(gen_length=16, block_length=8, verify="stepwise").replace(**changes)
    with pytest.raises(ConfigError, match=message):
        llada.generate([[1, 2, 3]], cfg)


# ------------------------------------------------------------------------------------------------ pieces
def test_stepwise_order_is_select_tops_order():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 12, (1,), generator=g))
        scores = torch.randint(0, 4, (3, n), generator=g).float()  # many ties
        scores[torch.rand(3, n, generator=g) < 0.2] = float("-inf")  # allowed -inf (confidence_eos_eot_inf)
        allowed = torch.rand(3, n, generator=g) < 0.7
        order = stepwise_order(scores, allowed)
        for k in range(n + 1):
            top = torch.zeros(3, n, dtype=torch.bool).scatter_(1, order[:, :k], True) & allowed
            assert torch.equal(top, select_top(scores, allowed, torch.full((3,), k)))


def test_stream_reports_every_round(llada):
    prompts = random_prompts(llada, 3, seed=9)
    events = []
    cfg = GenerationConfig(gen_length=16, block_length=8, verify="stepwise")
    out = llada.generate(prompts, cfg, stream=events.append)
    # one event per request and step: its first step seeds (commits nothing), then one per round
    assert len(events) == out.stats["row_rounds"] + len(prompts)
    for r in range(len(prompts)):
        mine = [e for e in events if e.tag == r]
        committed = torch.stack([e.committed for e in mine]).sum(0)
        assert committed.max() <= 1 and not mine[0].committed.any()
        assert torch.equal(mine[-1].tokens, out.sequences[r]) and mine[-1].done
    total = sum(int(e.committed.sum()) for e in events)
    assert total == out.stats["accepted_tokens"]
