"""Reusing a step's packed layout while the requests' plans repeat (dlm.engine.pack): a plan is reused only when
everything it is built from is equal, the packed layout only for the very same plan objects, and answers are
those of the same requests without any reuse."""

from __future__ import annotations

import torch

import dlm
from dlm.cache.base import Plan
from dlm.engine.pack import PackCache, host_plan, pack

from ..conftest import random_prompts


def _running(lm, n: int = 3, cache: str = "dual"):
    engine = dlm.Engine(lm, max_rows=n, max_tokens=n * 64)
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, steps=16, cache=cache, stop_at_eos=False)
    reqs = [engine.submit(p, cfg) for p in random_prompts(lm, n, seed=3, min_len=4, max_len=9)]
    engine.step()
    return engine, reqs


def test_host_plan_reuses_a_plan_only_when_it_repeats(llada):
    _, (r, other, _) = _running(llada)
    shift = llada.logits_shift
    start, end = r.block_span()
    plan = Plan(slice(start, end), slice(0, end - start))
    first = host_plan(r, plan, shift)
    assert host_plan(r, Plan(slice(start, end), slice(0, end - start)), shift) is first  # equal slices
    assert host_plan(r, Plan(slice(start - 1, end), slice(1, end - start + 1)), shift) is not first
    assert host_plan(other, plan, shift) is not first  # another request (another slot)
    tensor_plan = Plan(torch.arange(start, end).unsqueeze(0), slice(0, end - start))
    a, b = host_plan(r, tensor_plan, shift), host_plan(r, tensor_plan, shift)
    assert a is not b and torch.equal(a.fed, b.fed)  # index plans are never reused
    again = host_plan(r, plan, shift)  # after an index plan nothing is kept to reuse
    assert again is not first and host_plan(r, plan, shift) is again
    r.length -= 1  # the request's visible canvas changed (its keys): the plan is rebuilt
    assert host_plan(r, plan, shift) is not again


def test_pack_cache_reuses_only_the_same_plan_objects(llada):
    _, reqs = _running(llada)
    shift = llada.logits_shift
    plans = [host_plan(r, Plan(slice(*r.block_span()), slice(0, 8)), shift) for r in reqs]
    cache = PackCache()
    first = cache.pack(plans, False, 1)
    assert cache.pack(list(plans), False, 1) is first
    for r in reqs:  # equal plans, new objects: packed again, to the same layout
        r.row_plan = None
    fresh = [host_plan(r, Plan(slice(*r.block_span()), slice(0, 8)), shift) for r in reqs]
    again = cache.pack(fresh, False, 1)
    assert again is not first
    ref = pack(plans, False, 1)
    for name in ("slot", "position", "logits_index", "cond", "uncond", "cfg_scale", "cand_slot", "cand_col"):
        assert torch.equal(getattr(again, name), getattr(ref, name)), name
    assert cache.pack(fresh[:2], False, 1) is not again  # a request left
    kept = cache.pack(fresh, False, 1)
    assert cache.pack(fresh, False, 16) is not kept  # other padding of the logits: packed again


def test_in_block_steps_reuse_the_layout_and_answers_do_not_change(llada, dream):
    for lm in (llada, dream):
        engine, reqs = _running(lm)
        layouts = [engine.core.packs._packed]
        while not all(r.done for r in reqs):
            engine.step()
            layouts.append(engine.core.packs._packed)
        distinct = len({id(p) for p in layouts})  # (the list keeps every layout alive: ids stay unique)
        assert len(layouts) == 16 and distinct <= 4, (distinct, len(layouts))  # per block: refresh, in-block
        for r in reqs:  # each request alone, in its own engine
            alone = dlm.Engine(lm, max_rows=1, max_tokens=64)
            solo = alone.submit(r.prompt_ids, r.config)
            alone.run()
            assert torch.equal(solo.output.sequences, r.output.sequences)


def test_fresh_rows_are_placed_first_and_logits_keep_the_plans_order(llada):
    """Requests that refresh (fresh rows) between requests in their blocks: the fresh rows are placed first,
    one view for the padded attention when their lengths are equal, and every request's logits, candidates and
    segment stay where the plans' order puts them (requests 2 and 3 with guidance: two rows each, their
    unconditional logits on their second slot)."""
    engine = dlm.Engine(llada, max_rows=6, max_tokens=6 * 64)
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, steps=16, cache="dual", stop_at_eos=False)
    guided = cfg.replace(cfg_scale=1.5)
    prompts = random_prompts(llada, 4, seed=5, min_len=6, max_len=6)
    reqs = [engine.submit(p, cfg if i < 2 else guided) for i, p in enumerate(prompts)]
    engine.step()
    shift = llada.logits_shift
    plans = []
    for i, r in enumerate(reqs):
        start, end = r.block_span()
        if i % 2:  # the whole canvas, logits of the block
            plans.append(host_plan(r, Plan(slice(0, r.visible), slice(start, end)), shift))
        else:  # the block only
            plans.append(host_plan(r, Plan(slice(start, end), slice(0, end - start)), shift))
    assert [p.fresh for p in plans] == [False, True, False, True]
    packed = pack(plans, False, 1)
    rows = packed.rows
    assert rows.fresh == [True, True, True, False, False, False]  # request 3's two rows, then 0 and 2's
    assert rows.q_start[:3] == [0, reqs[1].visible, 2 * reqs[1].visible]
    for i, (plan, first, n) in enumerate(packed.segments):
        assert plan is plans[i]
        r = reqs[i]
        for kind, slot in (("cond", r.slots[0]), ("uncond", r.slots[-1])):
            where = packed.logits_index[getattr(packed, kind)[first : first + n]]
            assert torch.equal(packed.position[where], plan.fed[plan.logit_src]), (i, kind)
            assert set(packed.slot[where].tolist()) == {slot}, (i, kind)
        assert len(r.slots) == (2 if i >= 2 else 1)
        assert set(packed.cand_slot[first : first + n].tolist()) == {r.slots[0]}
        assert set(packed.cfg_scale[first : first + n].tolist()) == {1.5 if i >= 2 else 0.0}
    from dlm.models.ragged import _Group

    group = _Group.build(rows, [0, 1, 2], False, "cpu")
    assert group.uniform == (0, 3 * reqs[1].visible)
