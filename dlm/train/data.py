"""Token-level training data: pools of prompt/answer rows and of plain text, sampled into fixed-shape batches.

A :class:`Batch` is ``B`` rows of ``L`` tokens with three lengths per row that both objectives read:

* ``prompt_len``: the leading tokens (BOS + prompt) that are given, never masked and never a target;
* ``answer_end``: one past the answer's terminating EOS; the causal objective predicts ``[prompt_len, answer_end)``;
* ``valid_len``: the end of the row's canvas. Tokens in ``[answer_end, valid_len)`` are EOS padding, and the
  diffusion objective masks and predicts them like answer tokens (the model learns where answers end); tokens
  from ``valid_len`` on are not part of the row at all: no attention reaches them and no loss is taken there.

Plain text rows have ``prompt_len = 0`` and ``answer_end = valid_len = L``: every token is a target.

Pools live on the training device, so drawing a batch is a few indexing kernels and no host work.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class Batch:
    """``ids`` (B, L) long; ``prompt_len``, ``answer_end``, ``valid_len`` (B,) long (see the module docstring)."""

    ids: torch.Tensor
    prompt_len: torch.Tensor
    answer_end: torch.Tensor
    valid_len: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ids.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.ids, self.prompt_len, self.answer_end,
                                                                  self.valid_len)))

    @staticmethod
    def cat(batches: Sequence["Batch"]) -> "Batch":
        """Rows of several batches of the same length ``L``, stacked."""
        lengths = {b.ids.shape[1] for b in batches}
        if len(lengths) != 1:
            raise ValueError(f"cannot stack batches of different row lengths {sorted(lengths)}")
        return Batch(*(torch.cat([getattr(b, f) for b in batches]) for f in ("ids", "prompt_len", "answer_end",
                                                                              "valid_len")))


class PairPool:
    """Prompt/answer pairs as rows ``BOS + prompt + answer + EOS...`` of ``row_len`` tokens.

    Args:
        prompts, answers: token ids of each prompt (without BOS) and answer (without EOS).
        row_len: L. Pairs that do not fit (``1 + prompt + answer + 1 > L``) are dropped and counted in ``dropped``.
        bos_id, eos_id: special ids.
        random_window: draw each sampled row's canvas length uniformly between "answer + one EOS" and the whole
            row, so the model sees answers followed by every amount of EOS padding a generation length can leave;
            otherwise every canvas is the whole row.
        device: where the pool lives.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], row_len: int, bos_id: int,
                 eos_id: int, random_window: bool = True, device: torch.device | str = "cpu"):
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        plen = np.fromiter((1 + len(p) for p in prompts), dtype=np.int64, count=len(prompts))
        alen = np.fromiter((len(a) for a in answers), dtype=np.int64, count=len(answers))
        keep = np.flatnonzero(plen + alen + 1 <= row_len)
        self.dropped = len(prompts) - len(keep)
        if not len(keep):
            raise ValueError(f"no pair fits a row of {row_len} tokens (BOS + prompt + answer + EOS)")
        plen, alen = plen[keep], alen[keep]
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.chain((bos_id,), prompts[i], answers[i]) for i in keep.tolist()),
            dtype=np.int32, count=int((plen + alen).sum()))
        rows = np.full((len(keep), row_len), eos_id, dtype=np.int32)
        rows[np.arange(row_len) < (plen + alen)[:, None]] = flat  # row-major fill: each row's tokens in order
        self.rows = torch.from_numpy(rows).to(device)
        self.prompt_len = torch.from_numpy(plen).to(device)
        self.answer_len = torch.from_numpy(alen).to(device)
        self.row_len = row_len
        self.random_window = random_window

    def __len__(self) -> int:
        return self.rows.shape[0]

    def take(self, index: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        """Rows ``index`` (n,) as a Batch (random canvas lengths drawn with ``generator`` if enabled)."""
        ids = self.rows[index].long()
        plen = self.prompt_len[index]
        answer_end = plen + self.answer_len[index] + 1
        if self.random_window:
            u = torch.rand(index.shape[0], device=ids.device, generator=generator)
            span = self.row_len - answer_end + 1  # canvas ends anywhere in [answer_end, row_len]
            valid = answer_end + (u * span).long().clamp(max=span - 1)
        else:
            valid = torch.full_like(plen, self.row_len)
        return Batch(ids, plen, answer_end, valid)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        index = torch.randint(len(self), (n,), device=self.rows.device, generator=generator)
        return self.take(index, generator)


class TextPool:
    """A token stream (files joined, each ended by EOS) cut into random windows of ``row_len`` tokens."""

    def __init__(self, stream: torch.Tensor, row_len: int, device: torch.device | str = "cpu"):
        if stream.dim() != 1 or stream.numel() < row_len + 1:
            raise ValueError(f"the text stream has {stream.numel()} tokens; need more than row_len={row_len}")
        self.stream = stream.to(device=device, dtype=torch.int32)
        self.row_len = row_len
        self._offsets = torch.arange(row_len, device=self.stream.device)

    @staticmethod
    def from_documents(docs: Sequence[Sequence[int]], eos_id: int, row_len: int,
                       device: torch.device | str = "cpu") -> "TextPool":
        flat: list[int] = []
        for d in docs:
            flat.extend(d)
            flat.append(eos_id)
        return TextPool(torch.tensor(flat, dtype=torch.int32), row_len, device)

    def __len__(self) -> int:
        return self.stream.numel()

    def take(self, starts: torch.Tensor) -> Batch:
        ids = self.stream[starts.unsqueeze(1) + self._offsets].long()
        n = starts.shape[0]
        zeros = torch.zeros(n, dtype=torch.long, device=ids.device)
        full = torch.full((n,), self.row_len, dtype=torch.long, device=ids.device)
        return Batch(ids, zeros, full, full.clone())

    def sample(self, n: int, generator: torch.Generator | None = None) -> Batch:
        starts = torch.randint(len(self) - self.row_len + 1, (n,), device=self.stream.device, generator=generator)
        return self.take(starts)

    def windows(self, n: int) -> Batch:
        """``n`` evenly spaced windows (deterministic; for validation)."""
        last = len(self) - self.row_len
        starts = torch.linspace(0, last, n, device=self.stream.device).long()
        return self.take(starts)


@dataclass
class Group:
    """One forward per step: ``batch_size`` rows of the same length drawn from ``sources`` with ``fractions``.

    ``weight`` scales this group's loss in the step's total.
    """

    name: str
    sources: list[PairPool | TextPool]
    fractions: list[float]
    batch_size: int
    weight: float = 1.0
    counts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.fractions) or not self.sources:
            raise ValueError(f"group {self.name!r}: give one fraction per source")
        if len({s.row_len for s in self.sources}) != 1:
            raise ValueError(f"group {self.name!r}: sources have different row lengths "
                             f"{[s.row_len for s in self.sources]}")
        if any(f < 0 for f in self.fractions) or sum(self.fractions) <= 0:
            raise ValueError(f"group {self.name!r}: fractions must be >= 0 with a positive sum, got {self.fractions}")
        total = sum(self.fractions)
        counts = [int(self.batch_size * f / total) for f in self.fractions]
        counts[max(range(len(counts)), key=lambda i: self.fractions[i])] += self.batch_size - sum(counts)
        self.counts = counts

    @property
    def row_len(self) -> int:
        return self.sources[0].row_len

    def sample(self, generator: torch.Generator | None = None) -> Batch:
        parts = [s.sample(c, generator) for s, c in zip(self.sources, self.counts) if c > 0]
        return parts[0] if len(parts) == 1 else Batch.cat(parts)


class Mixture:
    """The data of one training step: one batch per :class:`Group`."""

    def __init__(self, groups: Sequence[Group]):
        if not groups:
            raise ValueError("a mixture needs at least one group")
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        self.groups = list(groups)

    def sample(self, generator: torch.Generator | None = None) -> list[tuple[str, Batch, float]]:
        return [(g.name, g.sample(generator), g.weight) for g in self.groups]

    def tokens_per_step(self) -> int:
        return sum(g.batch_size * g.row_len for g in self.groups)
