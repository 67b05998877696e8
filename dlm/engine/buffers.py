"""Device buffers indexed by pool slot: the canvases, when each position was committed, and the candidates.

Allocated once per engine (like the key/value pool) and reused by every request that gets the slot. Canvas rows
are twice the slot length wide so that a region read or written as ``start + arange(n)`` never runs past the
row, whatever ``start`` (the extra columns are never part of a canvas).
"""

from __future__ import annotations

import torch

from ..sampling import Candidates

MEASURE_FIELDS = {"margin": "margin", "entropy": "neg_entropy", "logit_gap": "logit_gap"}


class SlotBuffers:
    """Per-slot state of the running requests.

    Attributes:
        tokens: (slots, 2 * slot_len) long, each slot's canvas (prompt, committed tokens, mask ids).
        commit_step: (slots, 2 * slot_len) int32, the request step at which each position was committed, -1 if
            never (prompt, not yet, or filled with EOS after the answer stopped).
        committed: (slots, 2 * slot_len) bool, positions committed by the request's last step.
        cand_tokens, cand_confidence: (slots, slot_len) the candidates of each request's region (column c is
            canvas position region_start + c), kept between steps for policies that refresh only some columns.
        measures: the optional candidate measures (``margin``, ``neg_entropy``, ``logit_gap``), allocated the first
            time a scheduler asks for one.
    """

    def __init__(self, num_slots: int, slot_len: int, device: torch.device):
        width = 2 * slot_len
        self.slot_len = slot_len
        self.device = device
        self.tokens = torch.zeros(num_slots, width, dtype=torch.long, device=device)
        self.commit_step = torch.full((num_slots, width), -1, dtype=torch.int32, device=device)
        self.committed = torch.zeros(num_slots, width, dtype=torch.bool, device=device)
        self.cand_tokens = torch.zeros(num_slots, slot_len, dtype=torch.long, device=device)
        self.cand_confidence = torch.zeros(num_slots, slot_len, dtype=torch.float32, device=device)
        self.measures: dict[str, torch.Tensor] = {}

    def measure(self, name: str) -> torch.Tensor:
        """The buffer of a candidate measure (``margin``, ``neg_entropy``, ``logit_gap``), allocated on first use."""
        if name not in self.measures:
            self.measures[name] = torch.zeros_like(self.cand_confidence)
        return self.measures[name]

    def reset(self, slot: int, canvas: torch.Tensor) -> None:
        """Start a request in ``slot`` with ``canvas`` (L,) long."""
        self.tokens[slot, : canvas.numel()] = canvas
        self.commit_step[slot] = -1
        self.committed[slot] = False

    def store_candidates(self, slots: torch.Tensor, cols: torch.Tensor, cand: Candidates) -> None:
        """Write fresh candidates (N,) of region columns ``cols`` (N,) of ``slots`` (N,)."""
        self.cand_tokens[slots, cols] = cand.tokens
        self.cand_confidence[slots, cols] = cand.confidence.float()
        for measure, name in MEASURE_FIELDS.items():
            value = getattr(cand, name)
            if value is not None:
                self.measure(name)[slots, cols] = value.float()

    def candidates(self, slots: torch.Tensor, width: int, measures: frozenset[str]) -> Candidates:
        """The stored candidates (B, width) of the regions of ``slots`` (B,)."""
        extra = {name: self.measure(name)[slots, :width] for m, name in MEASURE_FIELDS.items() if m in measures}
        return Candidates(self.cand_tokens[slots, :width], self.cand_confidence[slots, :width], **extra)
