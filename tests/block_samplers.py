"""Literal re-implementations of the official block-diffusion samplers, for equality tests against dlm's engine.

Every function takes ``logits_fn(ids, attention_mask) -> logits``: ids (1, L) long, attention_mask (1, L, L) bool
(True where a query may see a key: block-causal, bidirectional inside a block), logits (1, L, V). They recompute the
whole window at every step (no cache), which is what the official LLaDA2 code does; SDAR's official code keeps the
keys/values of finished blocks in a cache instead, which block-causal attention makes exact, so the tokens are the
same. Batch size 1, as in the official code. Randomness (temperature > 0) draws from ``generator`` (the global
generator when ``None``, as the official code does, so seeding torch the same reproduces its tokens).

Sources: LLaDA2.0 ``LLaDA2MoeModelLM.generate`` and LLaDA2.1 ``generate`` of the Hugging Face modeling files (as copied
in ZHZisZZ/dllm ``dllm/pipelines/llada2/models/modeling_llada2_moe.py`` and ``llada21/models/modeling_llada21_moe.py``);
SDAR ``block_diffusion_generate`` of JetAstra/SDAR ``generate.py``.

None of the official samplers excludes the mask token from the proposals: a model that proposes it "commits" a
mask, which stays a mask (SDAR then fails with an IndexError when its steps run out). Real checkpoints do not
propose it; dlm never does. Equality tests on random weights therefore give the mask token -inf logits.

How the official code lays out the canvas (all three):
- the prompt starts at position 0 and blocks are counted from position 0: the canvas is
  ``ceil((prompt + gen_length) / block) * block`` long (gen_length is rounded UP so that the canvas ends on a block
  boundary; up to block - 1 extra positions are generated, LLaDA2 then cuts the answer at prompt + gen_length);
- decoding starts at block ``prompt // block``: when the prompt does not end on a boundary, the first decoded block
  is partly prompt; its prompt tokens are never masks, so they are never committed, and LLaDA2.1 never edits them;
- positions are 0..L-1 (no padding: batch 1); attention is block-causal over the window ``[0, end of the current
  block)``; nothing after the current block is fed.

LLaDA2.0 (``llada2_generate``; defaults temperature 0, block 32, steps 32, threshold 0.95, gen_length 2048,
eos 156892, mask 156895; ``steps = min(steps, gen_length // minimal_topk)``):
- per block at most ``steps`` steps; the quota of step s is ``block // steps`` plus one for the first
  ``block % steps`` steps (of the BLOCK length, even when the prompt fills part of the block);
- a step commits every mask whose probability is > threshold (strict) when there are at least quota of them, else
  the quota (capped at the masks left) most confident masks; the block ends when no mask is left (the steps are an
  upper bound: masks left after ``steps`` steps stay masks);
- temperature 0: argmax of the softmax, confidence = its probability; else logits / temperature, top-k, top-p,
  multinomial;
- stops after any block whose generated part contains EOS; returns the answer up to and including the first EOS
  (within prompt + gen_length), all of it when there is none. ``eos_early_stop`` returns as soon as a committed EOS
  has no mask before it (searching from position 0, so an EOS inside the prompt returns an empty answer).

LLaDA2.1 (``llada21_generate``; defaults as 2.0 plus editing_threshold 0.9, max_post_steps 16, num_to_transfer 1,
eos_early_stop False; ``steps`` is accepted and unused):
- each step proposes a token for every position of the block (the same sampling as 2.0);
- commit (mask -> token): every mask with probability > threshold when there are at least num_to_transfer of them,
  else the num_to_transfer most confident masks;
- edit (token -> token): every non-mask, non-prompt position of the block whose proposal differs from its current
  token and has probability > editing_threshold; commits and edits of a step are decided on the same forward and
  applied together;
- the block ends at the first step that starts with no mask and edits nothing; steps that start with no mask are
  counted and at most max_post_steps + 1 of them run (on the last no forward is made);
- all blocks are decoded unless ``eos_early_stop`` (then it stops after a block with no mask left in the generated
  part and an EOS in it); the answer is cut after the first EOS as in 2.0.

SDAR (``sdar_generate``; ``generate.py`` defaults: block 4, denoising_steps 4, temperature 1.0, top_k 0, top_p 1.0,
remasking ``low_confidence_dynamic``, confidence_threshold 0.85, stop ids = the checkpoint's generation_config EOS;
the function's own defaults are gen_length 128, block 8, steps 8):
- quota per step as LLaDA2 (of the block length); up to ``steps`` steps per block, and the block ends when no mask
  is left;
- ``low_confidence_dynamic``: masks with probability > threshold when at least the quota of them, else top-quota;
  ``low_confidence_static``: top-quota; ``sequential``: quota positions from the first mask on. Top-quota is taken
  over confidences with -inf off the masks, so when the quota exceeds the masks left it also picks non-mask
  positions and overwrites them with their fresh sample (with the defaults, quota 1 per step, it never happens);
- sampling always draws (multinomial; no greedy branch: temperature 0 divides by zero). ``temperature=0`` here is
  an extension for deterministic tests: argmax, confidence = softmax probability;
- after each block it stops when any stop id appears after the prompt; returns the whole canvas (prompt included,
  masks left in later blocks). ``entropy_bounded`` is not reproduced: the official branch reads ``transfer_index``
  before assigning it and fails.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def block_mask(num_blocks: int, block_length: int, device=None) -> torch.Tensor:
    """(1, L, L) bool block-causal mask of ``num_blocks`` blocks."""
    blocks = torch.tril(torch.ones(num_blocks, num_blocks, dtype=torch.bool, device=device))
    return blocks.repeat_interleave(block_length, 0).repeat_interleave(block_length, 1)[None]


def canvas(prompt: torch.Tensor, gen_length: int, block_length: int, mask_id: int):
    """The prompt at position 0 then masks up to the block boundary at or after prompt + gen_length: canvas (1, L),
    its block-causal mask (1, L, L) and the number of blocks."""
    num_blocks = (prompt.shape[1] + gen_length + block_length - 1) // block_length
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, : prompt.shape[1]] = prompt
    return x, block_mask(num_blocks, block_length, prompt.device), num_blocks


def num_transfer_tokens(block_length: int, steps: int) -> torch.Tensor:
    """Commits per step: block // steps, plus one for the first block % steps steps."""
    quota = torch.full((steps,), block_length // steps, dtype=torch.int64)
    quota[: block_length % steps] += 1
    return quota


def top_k_logits(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    if k is None or k <= 0:
        return logits
    kth = torch.topk(logits, k).values[..., -1, None]
    return torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)


def top_p_logits(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    drop = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def sample_llada2(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                  generator: torch.Generator | None, argmax_of_logits: bool = False):
    """(1, n, V) float logits -> tokens (1, n), probabilities (1, n). 2.0 takes the argmax of the softmax, 2.1 of
    the logits (the same token up to ties)."""
    shape, V = logits.shape[:-1], logits.shape[-1]
    logits = logits.reshape(-1, V)
    if temperature == 0.0:
        probs = F.softmax(logits, dim=-1)
        token = torch.argmax(logits if argmax_of_logits else probs, dim=-1, keepdim=True)
        return token.view(shape), probs.gather(-1, token).view(shape)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    probs = F.softmax(top_p_logits(top_k_logits(logits, top_k), top_p), dim=-1)
    token = torch.multinomial(probs, 1, generator=generator)
    return token.view(shape), probs.gather(-1, token).view(shape)


def _first_eos_answer(x: torch.Tensor, P: int, gen_length: int, eos_id: int) -> torch.Tensor:
    answer = x[:, : P + gen_length]
    eos = (answer[0, P:] == eos_id).nonzero(as_tuple=True)[0]
    first = eos[0].item() if len(eos) else gen_length
    return answer[:, P: P + first + 1]


def _commit_masks(conf: torch.Tensor, active: torch.Tensor, threshold: float, quota: int) -> torch.Tensor:
    """Masks over the threshold when at least ``quota`` of them, else the ``quota`` most confident (capped at the
    masks left). conf, active: (n,) -> (n,) bool."""
    high = (conf > threshold) & active
    if int(high.sum()) >= quota:
        return high
    pick = torch.zeros_like(active)
    pick[torch.topk(conf, k=min(quota, int(active.sum()))).indices] = True
    return pick


@torch.no_grad()
def llada2_generate(logits_fn: LogitsFn, prompt: torch.Tensor, *, mask_id: int = 156895, eos_id: int = 156892,
                    gen_length: int = 2048, block_length: int = 32, steps: int = 32, threshold: float = 0.95,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    eos_early_stop: bool = False, minimal_topk: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """LLaDA2.0's block-wise threshold decoding. prompt (1, P) -> answer (1, n) (see the module docstring)."""
    steps = min(steps, gen_length // minimal_topk)
    P = prompt.shape[1]
    x, mask, num_blocks = canvas(prompt, gen_length, block_length, mask_id)
    quota = num_transfer_tokens(block_length, steps)
    for b in range(P // block_length, num_blocks):
        start, end = b * block_length, (b + 1) * block_length
        for step in range(steps):
            active = x[0, start:end] == mask_id
            if not active.any():
                break
            logits = logits_fn(x[:, :end], mask[:, :end, :end])[:, -block_length:].float()
            x0, p0 = sample_llada2(logits, temperature, top_k, top_p, generator)
            conf = torch.where(active, p0[0], -torch.inf)
            pick = _commit_masks(conf, active, threshold, int(quota[step]))
            x[0, start:end][pick] = x0[0][pick]
            if eos_early_stop and (x0[0][pick] == eos_id).any():
                eos = (x[0, :end] == eos_id).nonzero(as_tuple=True)[0]
                if len(eos) and (x[0, P: eos[0]] != mask_id).all():
                    return x[:, P: eos[0] + 1]
        if (x[0, P:end] == eos_id).any():
            break
    return _first_eos_answer(x, P, gen_length, eos_id)


def _edits(x0: torch.Tensor, p0: torch.Tensor, old: torch.Tensor, active: torch.Tensor, prompt_part: torch.Tensor,
           editing_threshold: float) -> torch.Tensor:
    """LLaDA2.1 token editing: committed, non-prompt positions whose new proposal differs and is confident."""
    editable = ~active & ~prompt_part
    return (torch.where(editable, p0, -torch.inf) > editing_threshold) & editable & (x0 != old)


@torch.no_grad()
def llada21_generate(logits_fn: LogitsFn, prompt: torch.Tensor, *, mask_id: int = 156895, eos_id: int = 156892,
                     gen_length: int = 2048, block_length: int = 32, steps: int = 32, threshold: float = 0.95,
                     editing_threshold: float = 0.9, max_post_steps: int = 16, num_to_transfer: int = 1,
                     temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                     eos_early_stop: bool = False, minimal_topk: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """LLaDA2.1's decoding with token editing. prompt (1, P) -> answer (1, n) (see the module docstring)."""
    del steps, minimal_topk  # accepted like the official signature; 2.1 has no per-block step schedule
    P = prompt.shape[1]
    x, mask, num_blocks = canvas(prompt, gen_length, block_length, mask_id)
    for b in range(P // block_length, num_blocks):
        start, end = b * block_length, (b + 1) * block_length
        prompt_part = torch.arange(start, end, device=x.device) < P
        post_steps = 0
        while True:
            old = x[0, start:end].clone()
            active = old == mask_id
            post_steps += int(not active.any())
            if post_steps > max_post_steps:
                break
            logits = logits_fn(x[:, :end], mask[:, :end, :end])[:, -block_length:].float()
            x0, p0 = sample_llada2(logits, temperature, top_k, top_p, generator, argmax_of_logits=True)
            x0, p0 = x0[0], p0[0]
            pick = torch.zeros_like(active)
            if active.any():
                pick = _commit_masks(torch.where(active, p0, -torch.inf), active, threshold, num_to_transfer)
            edit = _edits(x0, p0, old, active, prompt_part, editing_threshold)
            x[0, start:end][pick | edit] = x0[pick | edit]
            if not active.any() and not edit.any():
                break
        done = x[0, P:end]
        if eos_early_stop and not (done == mask_id).any() and (done == eos_id).any():
            break
    return _first_eos_answer(x, P, gen_length, eos_id)


def sample_sdar(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None):
    """SDAR's sampling: (1, n, V) -> tokens (1, n), probabilities (1, n)."""
    shape, V = logits.shape[:-1], logits.shape[-1]
    logits = logits.reshape(-1, V)
    if temperature == 0.0:  # not in the official code (see the module docstring)
        probs = F.softmax(logits, dim=-1)
        token = probs.argmax(-1, keepdim=True)
        return token.view(shape), probs.gather(-1, token).view(shape)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        logits = top_k_logits(logits, top_k)
    if top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    token = torch.multinomial(probs, num_samples=1, generator=generator)
    return token.view(shape), probs.gather(-1, token).view(shape)


def _sdar_transfer(strategy: str, x0_p: torch.Tensor, masks: torch.Tensor, quota: int, threshold: float):
    """Positions SDAR commits this step. x0_p, masks: (n,) -> (n,) bool."""
    pick = torch.zeros_like(masks)
    if strategy == "sequential":
        first = int(masks.nonzero(as_tuple=True)[0].min())
        pick[first: first + quota] = True
        return pick
    conf = torch.where(masks, x0_p, -torch.inf)
    if strategy == "low_confidence_dynamic" and int((conf > threshold).sum()) >= quota:
        return conf > threshold
    if strategy not in ("low_confidence_dynamic", "low_confidence_static"):
        raise ValueError(f"unknown remasking strategy {strategy!r} (entropy_bounded is not reproduced)")
    pick[torch.topk(conf, quota).indices] = True
    return pick


@torch.no_grad()
def sdar_generate(logits_fn: LogitsFn, prompt: torch.Tensor, mask_id: int, *, gen_length: int = 128,
                  block_length: int = 8, denoising_steps: int = 8, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, remasking_strategy: str = "low_confidence_dynamic",
                  confidence_threshold: float = 0.85, stopping_criteria_idx: list[int] | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """SDAR's block decoding. prompt (1, P) -> the whole canvas (1, L) (see the module docstring)."""
    P = prompt.shape[1]
    x, mask, num_blocks = canvas(prompt, gen_length, block_length, mask_id)
    quota = num_transfer_tokens(block_length, denoising_steps)
    for b in range(P // block_length, num_blocks):
        start, end = b * block_length, (b + 1) * block_length
        for step in range(denoising_steps + 1):
            masks = x[0, start:end] == mask_id
            if not masks.any():
                break
            logits = logits_fn(x[:, :end], mask[:, :end, :end])[:, -block_length:]
            x0, x0_p = sample_sdar(logits, temperature, top_k, top_p, generator)
            pick = _sdar_transfer(remasking_strategy, x0_p[0], masks, int(quota[step]), confidence_threshold)
            x[0, start:end][pick] = x0[0][pick]
        if stopping_criteria_idx is not None and any(s in x[:, P:] for s in stopping_criteria_idx):
            break
    return x
