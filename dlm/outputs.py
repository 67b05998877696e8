"""What generation returns: GenerationOutput and the per-step event of the stream callback."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepTrace:
    """When each answer position was committed.

    Attributes:
        commit_step: (B, gen_length) int32, the forward pass (0-based, counted per generation) after which the
            position was committed; -1 for positions never decoded (filled with EOS after the answer stopped).
        block_steps: forward passes spent on each block, in order (fewer entries than blocks when every row
            finished early).
    """

    commit_step: torch.Tensor
    block_steps: list[int] = field(default_factory=list)


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
        timings: seconds: ``total``, ``model`` (forward passes), ``prepare`` (tokenising and canvas set-up).
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
    """Passed to the stream callback after every step.

    Attributes:
        step: forward passes so far in this generation.
        block: index of the active block.
        committed: (B, gen_length) bool, answer positions committed by this step.
        tokens: (B, gen_length) long, the answer canvas after this step (mask id where still masked).
        done: (B,) bool, rows that have finished.

    Call :meth:`stop` from the callback to end the generation early.
    """

    step: int
    block: int
    committed: torch.Tensor
    tokens: torch.Tensor
    done: torch.Tensor
    stop_requested: bool = False

    def stop(self) -> None:
        """Ask the engine to end the generation after this step; unfinished rows keep their masks."""
        self.stop_requested = True

    def new_tokens(self, row: int) -> list[tuple[int, int]]:
        """(answer position, token id) pairs committed by this step in ``row``."""
        pos = self.committed[row].nonzero().squeeze(1).tolist()
        return [(p, int(self.tokens[row, p])) for p in pos]
