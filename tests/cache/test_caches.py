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


@pytest.fixture
def recording(registered_cache):
    """``recording(name)``: the name of a registered subclass of cache ``name`` that records every
    (StepInfo, Plan) it produces in ``cls.plans`` (one list shared by every request)."""

    def make(name: str) -> tuple[str, type]:
        base = dlm.cache.get(name)

        class Recording(base):
            plans: list = []

            def plan(self, info):
                p = super().plan(info)
                Recording.plans.append((info, p))
                return p

        Recording.__name__ = f"Recording{base.__name__}"
        return registered_cache(f"test_rec_{name}", Recording), Recording

    return make


@pytest.mark.parametrize("name", CACHES)
def test_plan_invariants_for_every_cache(tiny, name, recording):
    """Every plan feeds valid positions, always includes the positions whose logits are needed, reads logits
    only from fed positions, and every block starts with a full forward."""
    prompts = random_prompts(tiny, 3, seed=21, min_len=2, max_len=15)
    rec_name, rec = recording(name)
    for scheduler in ("low_confidence", "threshold"):
        rec.plans.clear()
        cfg = GenerationConfig(gen_length=24, block_length=8, steps=24, scheduler=scheduler, cache=rec_name,
                               stop_at_eos=False)
        out = tiny.generate(prompts, cfg)
        assert rec.plans, "the policy was never asked for a plan"
        shift = tiny.logits_shift
        for info, plan in rec.plans:
            L = info.length
            if isinstance(plan.fed, slice):
                assert 0 <= plan.fed.start < plan.fed.stop <= L
                fed = torch.arange(plan.fed.start, plan.fed.stop).unsqueeze(0)
            else:
                fed = plan.fed
                assert fed.dtype == torch.long and fed.shape[0] == 1 and ((fed >= 0) & (fed < L)).all()
            index = plan.logits_index
            src = fed[:, index] if isinstance(index, slice) else fed.gather(1, index)
            if plan.targets is None:
                want = torch.arange(info.region_start, info.region_end) - shift
                assert torch.equal(src, want.unsqueeze(0)), "logits must come from the region's source positions"
            else:
                assert torch.equal(src, plan.targets + info.region_start - shift)
                assert ((plan.targets >= 0) & (plan.targets < info.region_end - info.region_start)).all()
            if info.step == 0:
                assert plan.refresh, "every block starts with a full forward"
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


def _ctx(L=12, shift=0):
    return CacheContext(canvas_length=L, answer_start=4, logits_shift=shift)


def _info(step, masked, committed, L=12):
    return StepInfo(step=step, block_start=4, block_end=8, region_start=4, region_end=8, length=L, masked=masked,
                    committed_last=committed)


def test_delayed_plan_follows_dkv_rules_with_and_without_shift():
    """dKV-Cache-Decode: masked positions and the previous step's commits are recomputed; with Dream's shift the
    position before each masked position too; everything else comes from the cache."""
    for shift in (0, 1):
        for row_masked, row_committed in (([6, 9, 10, 11], [5]), ([7, 8, 11], [6])):
            policy = dlm.cache.create("delayed", {"refresh_every": 0})
            policy.setup(_ctx(shift=shift))
            masked = torch.zeros(1, 12, dtype=torch.bool)
            masked[0, row_masked] = True
            committed = torch.zeros(1, 12, dtype=torch.bool)
            committed[0, row_committed] = True
            plan = policy.plan(_info(1, masked, committed))
            assert not plan.refresh
            fed = set(plan.fed[0].tolist())
            need = set(row_masked) | set(row_committed) | set(range(4 - shift, 8 - shift))
            if shift:
                need |= {p - 1 for p in row_masked}
            assert fed == need, (shift, sorted(fed), sorted(need))
            # logits come from the first fed positions: the region's sources, in order
            assert plan.fed[0, :4].tolist() == list(range(4 - shift, 8 - shift))


def test_dual_and_prefix_feed_the_shift_position_for_dream():
    for name, stop in (("dual", 8), ("prefix", 12)):
        policy = dlm.cache.create(name)
        policy.setup(_ctx(shift=1))
        zeros = torch.zeros(1, 12, dtype=torch.bool)
        plan = policy.plan(_info(1, zeros, zeros))
        assert plan.fed == slice(3, stop) and plan.logits_index == slice(0, 4)


def test_geometry_only_policies_read_no_device_state():
    """none, prefix and dual plan from the geometry alone: the lazily computed tensors are never read."""
    def boom():
        raise AssertionError("the policy read a device tensor it does not need")

    for name in ("none", "prefix", "dual"):
        policy = dlm.cache.create(name)
        policy.setup(_ctx())
        for step in (0, 1, 2):
            policy.plan(StepInfo(step=step, block_start=4, block_end=8, region_start=4, region_end=8, length=12,
                                 masked=boom, committed_last=boom, confidence=boom))


def test_storage_is_preallocated_once(llada):
    """The key/value pool keeps its addresses and size through many requests of different lengths."""
    engine = dlm.Engine(llada, max_rows=4, max_tokens=4 * 64)
    before = (engine.core.pool.nbytes(), tuple(engine.core.pool.pointers()))
    cfg = GenerationConfig(gen_length=32, block_length=8, cache="delayed", stop_at_eos=False)
    reqs = [engine.submit(p, cfg.replace(gen_length=8 * (1 + i % 4))) for i, p in
            enumerate(random_prompts(llada, 10, seed=1))]
    while engine.pending:
        engine.step()
        assert engine.core.pool.in_use() <= 4
        assert (engine.core.pool.nbytes(), tuple(engine.core.pool.pointers())) == before
    assert all(r.done and r.error is None for r in reqs)
    assert engine.core.pool.in_use() == 0, "finished requests must give their slots back"


def _dual_refresh_fed(kwargs: dict, shift: int, length: int = 20) -> list:
    """What each block start's refresh feeds for ``dual`` with ``kwargs``: blocks of 4 from position 4."""
    policy = dlm.cache.create("dual", kwargs)
    policy.setup(CacheContext(canvas_length=length, answer_start=4, logits_shift=shift))
    zeros = torch.zeros(1, length, dtype=torch.bool)
    fed = []
    for start in (4, 8, 12):
        policy.begin_block(start, start + 4)
        plan = policy.plan(StepInfo(step=0, block_start=start, block_end=start + 4, region_start=start,
                                    region_end=start + 4, length=length, masked=zeros, committed_last=zeros))
        assert plan.logits_index == slice(start - shift - plan.fed.start, start + 4 - shift - plan.fed.start)
        assert plan.refresh == (plan.fed == slice(0, length))  # only a whole-canvas refresh is exact
        fed.append(plan.fed)
    return fed


@pytest.mark.parametrize("shift", [0, 1])
def test_dual_cheaper_refreshes_feed_what_they_name(shift):
    """The first block refreshes everything. After it, refresh_from="last_block" starts a refresh at the block
    just finished (minus the logit shift) and refresh_to="block" ends it at the current block's end; logits
    still come from the region."""
    full = slice(0, 20)
    assert _dual_refresh_fed({}, shift) == [full] * 3
    assert _dual_refresh_fed({"refresh_from": "last_block"}, shift) == [full, slice(4 - shift, 20),
                                                                        slice(8 - shift, 20)]
    assert _dual_refresh_fed({"refresh_to": "block"}, shift) == [full, slice(0, 12), slice(0, 16)]
    assert _dual_refresh_fed({"refresh_from": "last_block", "refresh_to": "block"}, shift) == [
        full, slice(4 - shift, 12), slice(8 - shift, 16)]


@pytest.mark.parametrize("cheap", [{"refresh_from": "last_block"}, {"refresh_to": "block"},
                                   {"refresh_from": "last_block", "refresh_to": "block"}])
def test_dual_cheaper_refreshes_equal_the_exact_one_for_one_block_and_feed_less_for_more(tiny, cheap):
    prompts = random_prompts(tiny, 3, seed=41, min_len=2, max_len=12)
    one = GenerationConfig(gen_length=16, block_length=16, cache="dual", stop_at_eos=False)
    assert torch.equal(tiny.generate(prompts, one).sequences,
                       tiny.generate(prompts, one.replace(cache_kwargs=cheap)).sequences)
    many = GenerationConfig(gen_length=32, block_length=8, cache="dual", stop_at_eos=False)
    exact = tiny.generate(prompts, many)
    approx = tiny.generate(prompts, many.replace(cache_kwargs=cheap))
    assert approx.sequences.shape == exact.sequences.shape and (approx.sequences != tiny.ids.mask_id).all()
    assert approx.stats["fed_positions"] < exact.stats["fed_positions"]
    for r, p in enumerate(prompts):  # approximate, but still independent of the batch
        assert torch.equal(tiny.generate([p], many.replace(cache_kwargs=cheap)).sequences[0], approx.sequences[r])


def test_dual_refresh_bounds_are_checked():
    with pytest.raises(dlm.errors.ConfigError, match="refresh_from must be one of canvas, last_block, got 'all'"):
        GenerationConfig(cache="dual", cache_kwargs={"refresh_from": "all"})
    with pytest.raises(dlm.errors.ConfigError, match="refresh_to must be one of canvas, block, got 'end'"):
        GenerationConfig(cache="dual", cache_kwargs={"refresh_to": "end"})


def test_window_padding_changes_shapes_not_results(tiny, registered_cache):
    """Under CUDA graphs the ``window`` policy pads its fed positions to a multiple of the context's
    ``shape_step`` with copies of a fed position (repeated shapes); the tokens are those of the unpadded policy,
    on many prompts, with either scheduler and with sampling."""
    import dataclasses

    from dlm.cache.window import WindowCache

    class Padded(WindowCache):
        def setup(self, ctx):
            super().setup(dataclasses.replace(ctx, shape_step=16))

    padded_name = registered_cache("test_window_padded", Padded)
    cfgs = [GenerationConfig(gen_length=24, block_length=8, steps=steps, scheduler=sch, cache="window",
                             cache_kwargs=kw, stop_at_eos=False, temperature=t, seed=3)
            for sch, steps, kw, t in (("low_confidence", 12, {}, 0.0), ("threshold", 24, {"window": 1}, 0.0),
                                      ("low_confidence", 24, {"candidates": 2, "refresh_every": None}, 0.8))]
    prompts = random_prompts(tiny, 6, seed=77, min_len=1, max_len=20)
    for cfg in cfgs:
        plain = tiny.generate(prompts, cfg)
        padded = tiny.generate(prompts, cfg.replace(cache=padded_name))
        assert torch.equal(plain.sequences, padded.sequences), cfg
        assert plain.stats["fed_positions"] < padded.stats["fed_positions"]
