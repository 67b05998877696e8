"""The invariants every scheduler keeps, checked on a recorded generation (used by the common tests, and by the
plugin tests on a plugin's scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

import torch

import dlm
from dlm.engine import Generation
from dlm.outputs import GenerationOutput, StepEvent

# prompts of different lengths (left padding); byte tokens, never special ids
PROMPTS = [[72, 101, 108, 108, 111, 33, 32], [9, 8], [100, 101, 102, 103]]


@dataclass
class Run:
    """One generation with everything the invariants look at."""

    out: GenerationOutput
    events: list[StepEvent] = field(default_factory=list)
    prompt_snapshots: list[torch.Tensor] = field(default_factory=list)  # canvas[:, :P] before every forward
    initial_prompt: torch.Tensor | None = None


def record(lm, prompts, config: dlm.GenerationConfig) -> Run:
    """Generate with a stream callback recording every step and a spy on the canvas' prompt part."""
    events: list[StepEvent] = []
    snaps: list[torch.Tensor] = []
    original = Generation.forward

    def forward(self, policy, plan, key_mask):
        snaps.append(self.x[:, : self.P].clone())
        return original(self, policy, plan, key_mask)

    with mock.patch.object(Generation, "forward", forward):
        out = lm.generate(prompts, config, stream=events.append)
    P = max(len(p) for p in prompts)
    initial = torch.full((len(prompts), P), lm.ids.pad_id, dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            initial[r, P - len(p):] = torch.tensor(p)
    return Run(out, events, snaps, initial)


def check_run(run: Run, lm, config: dlm.GenerationConfig, name: str) -> None:
    """Assert the scheduler invariants on a recorded run (``stop_at_eos`` EOS fill allowed, EoTP off)."""
    mask, eos = lm.ids.mask_id, lm.ids.eos_id
    bl = config.effective_block_length
    out, events = run.out, run.events
    B, G = out.sequences.shape
    assert events, f"{name}: no step recorded"
    # prompt tokens never change (the canvas' prompt part, padding included, is what it was built as)
    for snap in run.prompt_snapshots:
        assert torch.equal(snap.cpu(), run.initial_prompt), f"{name}: a prompt token changed"
    prev = torch.full((B, G), mask, dtype=torch.long)
    prev_done = torch.zeros(B, dtype=torch.bool)
    steps_of_row = torch.zeros(B, dtype=torch.long)
    for ev in events:
        tokens, committed, done = ev.tokens.cpu(), ev.committed.cpu(), ev.done.cpu()
        b0, b1 = ev.block * bl, (ev.block + 1) * bl
        in_block = torch.zeros(G, dtype=torch.bool)
        in_block[b0:b1] = True
        was_masked = prev == mask
        active_before = ~prev_done & (was_masked & in_block).any(1)
        # only masked positions are committed, and the committed token is what the canvas now holds
        assert not (committed & ~was_masked).any(), f"{name}: step {ev.step} committed an unmasked position"
        assert not (committed & (tokens == mask)).any(), f"{name}: step {ev.step} committed the mask token"
        # a committed token never changes afterwards, except the EOS fill of a row that stopped at this step
        changed = ~was_masked & (tokens != prev)
        for r in changed.any(1).nonzero().flatten().tolist():
            assert bool(done[r]) and not bool(prev_done[r]), f"{name}: row {r} changed a committed token at " \
                f"step {ev.step} without stopping"
            assert (tokens[r][changed[r]] == eos).all(), f"{name}: row {r} overwrote a committed token with " \
                "something other than EOS"
        # positions unmasked without a commit: only the EOS fill of a row stopping now
        filled = was_masked & (tokens != mask) & ~committed
        for r in filled.any(1).nonzero().flatten().tolist():
            assert bool(done[r]) and (tokens[r][filled[r]] == eos).all(), f"{name}: row {r} step {ev.step}: " \
                "positions unmasked without a commit"
        # inactive rows are untouched; active rows commit >= 1 position of the active block
        assert not committed[~active_before].any(), f"{name}: step {ev.step} committed in a row not decoding"
        for r in active_before.nonzero().flatten().tolist():
            assert committed[r, b0:b1].any(), f"{name}: row {r} committed nothing in block {ev.block} at " \
                f"step {ev.step} while masks remained"
            # nothing outside the active block unless the row finished at this step
            if committed[r, ~in_block].any():
                assert bool(done[r]), f"{name}: row {r} committed outside block {ev.block} without finishing"
        steps_of_row += active_before.long()
        prev, prev_done = tokens, done
    final = out.sequences.cpu()
    assert torch.equal(final, prev), f"{name}: the output differs from the last streamed canvas"
    assert not (final == mask).any(), f"{name}: masks remain in the output"
    assert bool(prev_done.all()), f"{name}: a row never finished"
    assert torch.equal(out.nfe.cpu(), steps_of_row * (2 if config.cfg_scale > 0 else 1)), f"{name}: NFE mismatch"
    if out.trace is not None:
        cs = out.trace.commit_step
        for ev in events:
            assert (cs[ev.committed.cpu()] == ev.step - 1).all(), f"{name}: trace disagrees with the stream"
        assert all(s <= bl for s in out.trace.block_steps), f"{name}: a block took more than {bl} steps: " \
            f"{out.trace.block_steps}"
