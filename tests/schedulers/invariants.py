"""The invariants every scheduler keeps, checked on a recorded run of the engine (used by the common tests, and by
the plugin tests on a plugin's scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import dlm
from dlm.outputs import GenerationOutput, StepEvent

# prompts of different lengths; byte tokens, never special ids
PROMPTS = [[72, 101, 108, 108, 111, 33, 32], [9, 8], [100, 101, 102, 103]]


@dataclass
class Run:
    """One batch of requests with everything the invariants look at: per request, its events and its canvas
    (prompt + answer) after every step."""

    out: GenerationOutput
    events: list[list[StepEvent]] = field(default_factory=list)
    canvases: list[list[torch.Tensor]] = field(default_factory=list)


def record(lm, prompts, config: dlm.GenerationConfig) -> Run:
    """Run the prompts through a :class:`dlm.Engine`, recording every event and every request's canvas."""
    engine = dlm.Engine(lm, max_rows=2 * len(prompts))
    reqs = [engine.submit(p, config) for p in prompts]
    events = [[] for _ in reqs]
    canvases = [[] for _ in reqs]
    index = {r.id: i for i, r in enumerate(reqs)}
    while engine.pending:
        for ev in engine.step():
            i = index[ev.request_id]
            events[i].append(ev)
            if not ev.done:
                canvases[i].append(engine.canvas(reqs[i]))
    for r in reqs:
        if r.error is not None:
            raise r.error
    out = dlm.api.merge_outputs([r.output for r in reqs])
    return Run(out, events, canvases)


def check_run(run: Run, lm, config: dlm.GenerationConfig, name: str) -> None:
    """Assert the scheduler invariants on a recorded run (``stop_at_eos`` EOS fill allowed, EoTP off)."""
    for r, (events, canvases) in enumerate(zip(run.events, run.canvases)):
        prompt = run.out.prompt_ids[r]
        for canvas in canvases:  # prompt tokens never change
            assert canvas[: len(prompt)].tolist() == prompt, f"{name}: a prompt token of request {r} changed"
        check_request(events, run.out, r, lm, config, name)


def check_request(events, out, r: int, lm, config, name: str) -> None:
    mask, eos = lm.ids.mask_id, lm.ids.eos_id
    bl = config.effective_block_length
    sched = dlm.schedulers.create(config.scheduler, dict(config.scheduler_kwargs))
    G = out.sequences.shape[1]
    assert events, f"{name}: request {r} recorded no step"
    prev = torch.full((G,), mask, dtype=torch.long)
    for n, ev in enumerate(events):
        assert ev.step == n + 1, f"{name}: request {r}'s steps are not consecutive"
        tokens, committed = ev.tokens, ev.committed
        b0, b1 = ev.block * bl, (ev.block + 1) * bl
        in_block = torch.zeros(G, dtype=torch.bool)
        in_block[b0:b1] = True
        was_masked = prev == mask
        # only masked positions are committed (or, by an editing scheduler, re-committed inside the active block),
        # and the committed token is what the canvas now holds
        edited = committed & ~was_masked
        assert not (edited & ~in_block).any() and (sched.edits or not edited.any()), \
            f"{name}: step {ev.step} committed an unmasked position"
        assert not (committed & (tokens == mask)).any(), f"{name}: step {ev.step} committed the mask token"
        # a committed token never changes afterwards (but by an edit), except the EOS fill of a stopping request
        changed = ~was_masked & (tokens != prev) & ~edited
        if changed.any():
            assert ev.done and (tokens[changed] == eos).all(), f"{name}: request {r} changed a committed token at " \
                f"step {ev.step} without stopping (or to something other than EOS)"
        filled = was_masked & (tokens != mask) & ~committed
        if filled.any():
            assert ev.done and (tokens[filled] == eos).all(), f"{name}: request {r} step {ev.step}: positions " \
                "unmasked without a commit"
        # every step commits >= 1 position of the active block while it has masks (a held block has none)
        if (was_masked & in_block).any():
            assert (committed & was_masked)[b0:b1].any(), f"{name}: request {r} committed nothing in block " \
                f"{ev.block} at step {ev.step} while masks remained"
        else:
            assert sched.edits, f"{name}: request {r} stepped in block {ev.block} without masks"
        if committed[~in_block].any():  # nothing outside the active block unless the request finished now
            assert ev.done, f"{name}: request {r} committed outside block {ev.block} without finishing"
        prev = tokens
    assert events[-1].done, f"{name}: request {r} never finished"
    final = out.sequences[r]
    assert torch.equal(final, prev), f"{name}: the output differs from the last streamed canvas"
    assert not (final == mask).any(), f"{name}: masks remain in the output"
    assert int(out.nfe[r]) == len(events) * (2 if config.cfg_scale > 0 else 1), f"{name}: NFE mismatch"
    if out.trace is not None:
        cs = out.trace.commit_step[r]
        last = torch.full_like(cs, -1)  # the step of each position's last write (an edit rewrites it)
        for ev in events:
            last[ev.committed] = ev.step - 1
        written = last >= 0
        assert torch.equal(cs[written], last[written]), f"{name}: trace disagrees with the stream"
        steps = out.trace.block_steps[r]
        bound = bl + sched.max_hold_steps
        assert all(s <= bound for s in steps), f"{name}: a block took more than {bound} steps: {steps}"
