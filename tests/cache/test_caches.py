"""Cache policies: interface invariants for every registered cache, exactness with refresh at every step,
padding invariance, the Dream logit shift, and storage allocated once."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.cache.base import CacheContext, StepInfo

from ..conftest import random_prompts

CACHES = dlm.cache.names()
EXACT_SCHEDULERS = ["low_confidence", "maskgit_plus", "entropy"]


def exact_kwargs(name: str) -> dict:
    """Parameters that make a policy refresh at every step (and so exact)."""
    params = dlm.cache.get(name).Params
    return {"refresh_every": 1} if "refresh_every" in params.__dataclass_fields__ else {}


class Recorder:
    """Wraps a policy to record every plan and the storage pointers at every step."""

    def __init__(self, policy):
        self.policy, self.plans, self.pointers = policy, [], []
        orig = policy.plan

        def plan(info: StepInfo):
            p = orig(info)
            self.plans.append((info, p))
            self.pointers.append(policy.storage_pointers())
            return p

        policy.plan = plan


def run_recorded(lm, prompts, cfg, monkeypatch):
    """Generate while recording the cache policy's plans."""
    created = []
    real_create = dlm.cache.create

    def create(name, kwargs=None):
        policy = real_create(name, kwargs)
        created.append(Recorder(policy))
        return policy

    monkeypatch.setattr(dlm.cache, "create", create)
    out = lm.generate(prompts, cfg)
    monkeypatch.setattr(dlm.cache, "create", real_create)
    return out, created[0]


@pytest.mark.parametrize("name", CACHES)
def test_plan_invariants_for_every_cache(tiny, name, monkeypatch):
    """Every plan feeds valid positions, always includes the positions whose logits are needed, reads logits
    only from fed positions, and the storage is allocated once (no reallocation over the steps)."""
    prompts = random_prompts(tiny, 3, seed=21, min_len=2, max_len=15)
    for scheduler in ("low_confidence", "threshold" if "threshold" in dlm.schedulers.names() else "maskgit_plus"):
        cfg = GenerationConfig(gen_length=24, block_length=8, steps=24, scheduler=scheduler, cache=name,
                               stop_at_eos=False)
        out, rec = run_recorded(tiny, prompts, cfg, monkeypatch)
        assert rec.plans, "the policy was never asked for a plan"
        shift = tiny.logits_shift
        for info, plan in rec.plans:
            L = info.length
            if isinstance(plan.fed, slice):
                assert 0 <= plan.fed.start < plan.fed.stop <= L
                fed = torch.arange(plan.fed.start, plan.fed.stop).expand(len(prompts), -1)
            else:
                fed = plan.fed
                assert fed.dtype == torch.long and ((fed >= 0) & (fed < L)).all()
            index = plan.logits_index
            src = fed[:, index] if isinstance(index, slice) else fed.gather(1, index)
            if plan.targets is None:
                want = torch.arange(info.region_start, info.region_end) - shift
                assert torch.equal(src, want.expand_as(src)), "logits must come from the region's source positions"
            else:
                assert torch.equal(src, plan.targets + info.region_start - shift)
                masked = info.masked[:, info.region_start : info.region_end]
                # fresh candidates at least where the previous step committed next to a mask is not required, but
                # every target must be a real region column
                assert ((plan.targets >= 0) & (plan.targets < masked.shape[1])).all()
            if info.step == 0:
                assert plan.refresh, "every block starts with a full forward"
        assert all(p == rec.pointers[0] for p in rec.pointers), "storage was reallocated during generation"
        assert out.sequences.shape == (3, 24)


@pytest.mark.parametrize("name", CACHES)
def test_refresh_every_step_is_exact(tiny, name):
    """With refresh at every step, every policy reproduces the no-cache output token for token."""
    for scheduler in EXACT_SCHEDULERS:
        for seed in range(3):
            prompts = random_prompts(tiny, 1 + seed, seed=100 + seed, min_len=1, max_len=16)
            base = GenerationConfig(gen_length=16, block_length=8, scheduler=scheduler, stop_at_eos=False,
                                    temperature=0.7 if seed == 2 else 0.0, seed=seed)
            ref = tiny.generate(prompts, base).sequences
            out = tiny.generate(prompts, base.replace(cache=name, cache_kwargs=exact_kwargs(name))).sequences
            assert torch.equal(out, ref), (name, scheduler, seed)


@pytest.mark.parametrize("name", CACHES)
def test_padding_invariance_with_each_cache(tiny, name):
    """Default (approximate) settings too: a row's output does not depend on its batch."""
    cfg = GenerationConfig(gen_length=16, block_length=8, cache=name, stop_at_eos=False)
    prompts = random_prompts(tiny, 4, seed=31, min_len=1, max_len=18)
    batched = tiny.generate(prompts, cfg).sequences
    for r, p in enumerate(prompts):
        assert torch.equal(tiny.generate([p], cfg).sequences[0], batched[r]), (name, r)


@pytest.mark.parametrize("name", CACHES)
def test_every_cache_with_every_scheduler_and_stream(tiny, name):
    events = []
    for scheduler in dlm.schedulers.names():
        kwargs = {}
        cfg = GenerationConfig(gen_length=16, block_length=8, scheduler=scheduler, scheduler_kwargs=kwargs,
                               cache=name, return_trace=True)
        out = tiny.generate(random_prompts(tiny, 2, seed=5, min_len=2, max_len=9), cfg, stream=events.append)
        assert out.sequences.shape == (2, 16)
        assert (out.sequences != tiny.ids.mask_id).all(), (name, scheduler)
    assert events


def test_cfg_with_cache_is_exact_when_refreshing(llada):
    prompts = random_prompts(llada, 2, seed=9)
    base = GenerationConfig(gen_length=16, block_length=8, cfg_scale=1.0, stop_at_eos=False)
    ref = llada.generate(prompts, base).sequences
    for name in CACHES:
        out = llada.generate(prompts, base.replace(cache=name, cache_kwargs=exact_kwargs(name))).sequences
        assert torch.equal(out, ref), name


def _ctx(rows=2, L=12, shift=0):
    return CacheContext(rows=rows, copies=1, canvas_length=L, num_layers=1, num_kv_heads=1, head_dim=2,
                        dtype=torch.float32, device=torch.device("cpu"), answer_start=4, logits_shift=shift)


def test_delayed_plan_follows_dkv_rules_with_and_without_shift():
    """dKV-Cache-Decode: masked positions and the previous step's commits are recomputed; with Dream's shift the
    position before each masked position too; everything else comes from the cache."""
    for shift in (0, 1):
        policy = dlm.cache.create("delayed", {"refresh_every": 0})
        policy.setup(_ctx(shift=shift))
        masked = torch.zeros(2, 12, dtype=torch.bool)
        masked[0, [6, 9, 10, 11]] = True
        masked[1, [7, 8, 11]] = True
        committed = torch.zeros(2, 12, dtype=torch.bool)
        committed[0, 5] = committed[1, 6] = True
        info = StepInfo(step=1, global_step=5, block_start=4, block_end=8, region_start=4, region_end=8,
                        masked=masked, committed_last=committed, length=12)
        plan = policy.plan(info)
        assert not plan.refresh
        for row in range(2):
            fed = set(plan.fed[row].tolist())
            need = set(masked[row].nonzero().squeeze(1).tolist()) | set(committed[row].nonzero().squeeze(1).tolist())
            if shift:
                need |= {p - 1 for p in masked[row].nonzero().squeeze(1).tolist()}
            need |= set(range(4 - shift, 8 - shift))  # the region's logit sources
            assert fed == need, (shift, row, sorted(fed), sorted(need))
        # logits come from the first fed positions: the region's sources, in order
        assert plan.fed[:, : 4].tolist() == [list(range(4 - shift, 8 - shift))] * 2


def test_dual_and_prefix_feed_the_shift_position_for_dream():
    for name, stop in (("dual", 8), ("prefix", 12)):
        policy = dlm.cache.create(name)
        policy.setup(_ctx(shift=1))
        info = StepInfo(step=1, global_step=1, block_start=4, block_end=8, region_start=4, region_end=8,
                        masked=torch.zeros(2, 12, dtype=torch.bool), committed_last=torch.zeros(2, 12, dtype=torch.bool),
                        length=12)
        plan = policy.plan(info)
        assert plan.fed == slice(3, stop) and plan.logits_index == slice(0, 4)


def test_storage_is_preallocated_once(llada, monkeypatch):
    """Storage tensors keep their addresses and total size through a whole generation."""
    sizes = []
    real_create = dlm.cache.create

    def create(name, kwargs=None):
        policy = real_create(name, kwargs)
        orig = policy.after_step

        def after(committed):
            sizes.append((policy.storage_bytes(), tuple(policy.storage_pointers())))
            return orig(committed)

        policy.after_step = after
        return policy

    monkeypatch.setattr(dlm.cache, "create", create)
    llada.generate(random_prompts(llada, 3, seed=1), GenerationConfig(gen_length=32, block_length=8, cache="delayed",
                                                                      stop_at_eos=False))
    assert len(sizes) == 32 and len(set(sizes)) == 1 and sizes[0][0] > 0
