"""A reference decoder for block-diffusion models, used by the recipe to evaluate dlm-tiny-block until dlm's engine
decodes block-diffusion checkpoints (issue 14: the engine's block canvas with its exact KV cache replaces it).
Deliberately plain: every step recomputes the whole canvas, one token per step.

Layout of SDAR's ``generate.py``: prompt from position 0, blocks counted from position 0 (BOS), canvas = prompt +
``gen_length`` rounded up to a block boundary, so the first decoded block may end the prompt. A batch is left
padded; position ids count from each row's first real token, so padding never moves a block boundary
(:func:`dlm.models.layers.block_causal_mask`).

Each step is one forward of the canvas under the block-causal mask. In each unfinished row the current block is
the first one holding a mask; among its masks, the one whose greedy token is the most probable is committed
(LLaDA's ``low_confidence`` at one token per step, temperature 0). A row ends when its masks run out or when a
block before its current one holds a stop token: under block-causal attention later blocks never change earlier
ones and answers are cut at their first stop token, so stopping there gives the text that decoding every block
would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data import CodeExample, Example
from ..models.layers import block_causal_mask
from .evaluate import evaluate, in_batches

DECODE = "reference block decoder of dlm.train (full recomputation, one token per step, low_confidence in the block)"


@dataclass
class Canvas:
    """A left-padded batch of block canvases: ``ids``, ``pos`` (position ids, 0 at the first real token) and
    ``valid`` (B, T); ``start`` (B,) the index of each row's first generated position."""

    ids: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    start: torch.Tensor


def block_canvas(prompts: Sequence[Sequence[int]], gen_length: int, block_size: int, mask_id: int, pad_id: int,
                 device: torch.device | str = "cpu") -> Canvas:
    """Prompts followed by masks up to the block boundary at or after ``gen_length`` answer tokens; padding (the
    left padding and what follows a shorter row's last block) holds ``pad_id`` and is not part of the canvas."""
    P = torch.tensor([len(p) for p in prompts], device=device)
    pad = P.max() - P
    end = torch.div(P + gen_length + block_size - 1, block_size, rounding_mode="floor") * block_size
    T = int((pad + end).max())
    pos = torch.arange(T, device=device).unsqueeze(0) - pad.unsqueeze(1)
    valid = (pos >= 0) & (pos < end.unsqueeze(1))
    ids = torch.full(pos.shape, pad_id, dtype=torch.long, device=device)
    ids[valid & (pos >= P.unsqueeze(1))] = mask_id
    for r, p in enumerate(prompts):
        ids[r, int(pad[r]) : int(pad[r]) + len(p)] = torch.tensor(list(p), device=device)
    return Canvas(ids, pos.clamp(min=0), valid, pad + P)


def current_block(canvas: Canvas, mask_id: int, block_size: int) -> torch.Tensor:
    """(B,) index where each row's current block (the first holding a mask) starts; T for rows without masks."""
    is_mask = canvas.ids == mask_id
    T = canvas.ids.shape[1]
    first = is_mask.int().argmax(1)
    start = first - canvas.pos.gather(1, first.unsqueeze(1)).squeeze(1) % block_size
    return torch.where(is_mask.any(1), start, torch.full_like(start, T))


def stop_finished(canvas: Canvas, block_start: torch.Tensor, stop_ids: Sequence[int], mask_id: int,
                  pad_id: int) -> None:
    """End the rows with a stop token in a finished block (before ``block_start``): their masks become padding."""
    j = torch.arange(canvas.ids.shape[1], device=canvas.ids.device).unsqueeze(0)
    done = (j >= canvas.start.unsqueeze(1)) & (j < block_start.unsqueeze(1))
    hit = (torch.isin(canvas.ids, torch.tensor(list(stop_ids), device=canvas.ids.device)) & done).any(1)
    canvas.ids[hit.unsqueeze(1) & (canvas.ids == mask_id)] = pad_id


def decode_step(model, canvas: Canvas, attention: torch.Tensor, block_start: torch.Tensor, mask_id: int,
                block_size: int) -> None:
    """One forward; commit the most confident mask of the current block of every row that has one."""
    T = canvas.ids.shape[1]
    active = block_start < T
    index = block_start.clamp(max=T - block_size).unsqueeze(1) + torch.arange(block_size, device=block_start.device)
    logits = model(canvas.ids, canvas.pos, key_mask=attention, logits_index=index).float()  # (B, block, V)
    prob, token = logits.softmax(-1).max(-1)
    conf = torch.where(canvas.ids.gather(1, index) == mask_id, prob, float("-inf"))
    k = conf.argmax(1, keepdim=True)
    rows = active.nonzero().squeeze(1)
    canvas.ids[rows, index.gather(1, k).squeeze(1)[rows]] = token.gather(1, k).squeeze(1)[rows]


@torch.no_grad()
def block_decode(model, prompts: Sequence[Sequence[int]], gen_length: int, block_size: int, mask_id: int,
                 pad_id: int, stop_ids: Sequence[int]) -> tuple[list[list[int]], int]:
    """Greedy block-by-block decode of token-id ``prompts``; returns the first ``gen_length`` answer tokens of each
    row and the number of forward passes."""
    device = model.embed.weight.device
    canvas = block_canvas(prompts, gen_length, block_size, mask_id, pad_id, device)
    attention = block_causal_mask(canvas.pos, canvas.pos, canvas.valid, block_size)  # (B, T, T)
    T, steps = canvas.ids.shape[1], 0
    while True:
        block_start = current_block(canvas, mask_id, block_size)
        stop_finished(canvas, block_start, stop_ids, mask_id, pad_id)
        block_start = current_block(canvas, mask_id, block_size)
        if bool((block_start >= T).all()):
            break
        decode_step(model, canvas, attention, block_start, mask_id, block_size)
        steps += 1
    starts = canvas.start.tolist()
    return [row[s : s + gen_length] for row, s in zip(canvas.ids.tolist(), starts)], steps


def generate_block(lm, prompts: Sequence[str], gen_length: int, batch_size: int) -> tuple[list[str], list[bool]]:
    """Texts (cut at the first stop token) of a loaded block-diffusion :class:`dlm.DiffusionLM` and whether a stop
    token ended each."""
    stops = set(lm.ids.stop_ids)

    def run(batch: list[str]) -> tuple[list[str], list[bool]]:
        rows, _ = block_decode(lm.model, lm.encode(batch), gen_length, lm.block_size, lm.ids.mask_id,
                               lm.ids.pad_id, lm.ids.stop_ids)
        cuts = [next((i for i, t in enumerate(row) if t in stops), len(row)) for row in rows]
        texts = [lm.tokenizer.decode(row[:c], skip_special_tokens=True) for row, c in zip(rows, cuts)]
        return texts, [c < len(row) for row, c in zip(rows, cuts)]

    return in_batches(prompts, batch_size, run)


def evaluate_block(lm, examples: Sequence[Example], code: Sequence[CodeExample], gen_length: int = 32,
                   code_gen_length: int = 64, batch_size: int = 256, name: str = "dlm-tiny-block") -> dict[str, Any]:
    """Accuracy of a block-diffusion :class:`dlm.DiffusionLM` decoded with :func:`block_decode`."""
    return evaluate(lambda prompts, g: generate_block(lm, prompts, g, batch_size), examples, code, gen_length,
                    code_gen_length, name, DECODE)
