"""What generation returns: GenerationOutput and the per-step event of the stream callback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepTrace:
    """When each answer position was committed.

    Attributes:
        commit_step: (B, gen_length) int32, the row's forward pass (0-based, counted per request) after which the
            position was committed; -1 for positions never decoded (filled with EOS after the answer stopped).
        block_steps: per row, the forward passes it spent on each block, in order (fewer entries than blocks
            when the row finished early).
    """

    commit_step: torch.Tensor
    block_steps: list[list[int]] = field(default_factory=list)


@dataclass
class GenerationOutput:
    """The result of :meth:`DiffusionLM.generate`.

    Attributes:
        sequences: (B, gen_length) long, the answer tokens. After a row stopped (``stop_at_eos`` or EoTP) its
            remaining positions hold EOS.
        prompt_ids: the prompt token ids of each row (no padding).
        texts: each answer decoded up to (excluding) its first stop token, special tokens skipped; ``None``
            without a tokenizer.
        nfe: (B,) long, forward passes each row took part in while it was still decoding (a CFG step counts 2).
        steps: forward passes of the whole batch.
        timings: seconds: ``total`` (the whole call, tokenising and the engine steps included).
        trace: :class:`StepTrace` when ``return_trace`` was set.
        stats: extra counters (e.g. ``fed_positions`` of the cache, verification statistics).
    """

    sequences: torch.Tensor
    prompt_ids: list[list[int]]
    texts: list[str] | None
    nfe: torch.Tensor
    steps: int
    timings: dict[str, float]
    trace: StepTrace | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> float:
        """Answer tokens per forward pass, averaged over rows (counting tokens up to the first stop token)."""
        return float(self.sequences.shape[1]) / max(1.0, float(self.nfe.float().mean()))


@dataclass
class StepEvent:
    """What one request did in one engine step (``Engine.step()`` returns one per running request; the
    ``stream`` callback of ``generate`` receives them as they come).

    Attributes:
        request_id: the request's id (``Request.id``).
        step: forward passes this request has taken so far (its commit steps are ``step - 1`` for this step).
        block: index of the request's active block during the step.
        committed: (gen_length,) bool, answer positions committed by this step.
        tokens: (gen_length,) long, the request's answer after this step (mask id where still masked).
        done: the request has finished (or failed, or was cancelled) with this step.
        tag: what the submitter attached to the request (``generate`` puts the prompt's index there).
        request: the request itself.

    Call :meth:`stop` to end the request after this step; its output keeps the masks it still has.
    """

    request_id: int
    step: int
    block: int
    committed: torch.Tensor
    tokens: torch.Tensor
    done: bool
    tag: Any = None
    request: Any = None
    stop_requested: bool = False

    def stop(self) -> None:
        """Ask the engine to end this request after this step (cancel it, keeping what it has committed)."""
        self.stop_requested = True

    def new_tokens(self) -> list[tuple[int, int]]:
        """(answer position, token id) pairs committed by this step."""
        pos = self.committed.nonzero().squeeze(1).tolist()
        tokens = self.tokens.tolist() if pos else []  # one conversion, not one tensor index per position
        return [(p, tokens[p]) for p in pos]


# statistics that are ratios of two counters (the verifiers' block efficiency and acceptance rate)
RATIO_STATS = {
    "block_efficiency": ("accepted_tokens", "row_rounds"),
    "acceptance_rate": ("accepted_draft_tokens", "drafted_tokens"),
}


def merge_outputs(outs: list[GenerationOutput]) -> GenerationOutput:
    """One output whose rows are the rows of ``outs`` in order; counters summed, ratios recomputed."""
    first = outs[0]
    trace = None
    if first.trace is not None:
        trace = StepTrace(torch.cat([o.trace.commit_step for o in outs]), [s for o in outs for s in o.trace.block_steps])
    stats: dict[str, float] = {}
    for o in outs:
        for k, v in o.stats.items():
            stats[k] = stats.get(k, 0.0) + v
    # counters add up across batches; ratios are recomputed from them
    for ratio, (num, den) in RATIO_STATS.items():
        if ratio in stats and num in stats and den in stats:
            stats[ratio] = stats[num] / max(1.0, stats[den])
    return GenerationOutput(
        sequences=torch.cat([o.sequences for o in outs]),
        prompt_ids=[p for o in outs for p in o.prompt_ids],
        texts=None if first.texts is None else [t for o in outs for t in o.texts],
        nfe=torch.cat([o.nfe for o in outs]),
        steps=sum(o.steps for o in outs),
        timings={k: sum(o.timings[k] for o in outs) for k in first.timings},
        trace=trace,
        stats=stats,
    )
