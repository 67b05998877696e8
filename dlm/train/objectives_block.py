"""Block diffusion training (BD3-LM, Arriola et al. 2025, arXiv:2503.09573; SDAR, Cheng et al. 2025) for
dlm-tiny-block.

The canvas is cut into blocks of ``block_size`` tokens counted from its first token (BOS), as the block-causal
attention of the model and its decoders count them. Every block draws its own noise level ``t ~ U(eps, 1)``
(BD3-LM's per-block levels; SDAR draws one per sequence) and each of its maskable tokens is replaced by the mask
token with probability ``t``. The model must recover a block from its noisy self (bidirectionally) and the CLEAN
earlier blocks, which is what it sees when decoding block by block.

The vectorised form (both references train this way) feeds the noisy and the clean row side by side, ``2L``
tokens whose two halves share position ids, under one attention mask (:func:`block_diffusion_attention`):

* a noisy query of block b sees the noisy keys of block b (bidirectional inside the block) and the clean keys of
  blocks < b;
* a clean query of block b sees the clean keys of blocks <= b (the block-causal forward of the clean row, whose
  keys/values the noisy blocks read);
* no clean query sees a noisy key.

So one forward gives every block's denoising prediction at once. The loss is dlm-tiny's (see
:mod:`.objectives`): cross-entropy at the masked positions of the noisy half weighted by 1/t of their block,
divided by the row's number of maskable tokens, averaged over rows; prompt tokens are never masked. Each row's
canvas is extended to the end of its last block (the padding there is EOS, like the rest of the answer's
padding), since decoding always works on whole blocks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .data import Batch
from .objectives import add_noise, sample_t, weighted_ce


def block_noise_levels(n_rows: int, n_blocks: int, eps: float, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu", stratified: bool = True) -> torch.Tensor:
    """(n_rows, n_blocks) noise levels in [eps, 1), one per block. ``stratified``: the n_rows * n_blocks levels of
    the batch are evenly spaced (one shared random offset), dealt so that each row gets a spread of them."""
    t = sample_t(n_rows * n_blocks, eps, generator, device, stratified)
    return t.view(n_blocks, n_rows).T


def canvas_end(valid_len: torch.Tensor, row_len: int, block_size: int) -> torch.Tensor:
    """(B,) each row's canvas end ``valid_len`` rounded up to a block boundary (at most ``row_len``)."""
    return (torch.div(valid_len + block_size - 1, block_size, rounding_mode="floor") * block_size).clamp(max=row_len)


def block_diffusion_attention(row_len: int, block_size: int, valid: torch.Tensor) -> torch.Tensor:
    """The attention mask of the noisy + clean concatenation (see the module docstring).

    Args:
        row_len: L, the length of each half.
        block_size: tokens per block, counted from position 0.
        valid: (B, L) bool, the positions of each row's canvas (keys outside it are never attended to, in either
            half).

    Returns:
        (B, 2L, 2L) bool, True where query q may attend to key k: queries and keys ``[0, L)`` are the noisy half,
        ``[L, 2L)`` the clean half.
    """
    i = torch.arange(2 * row_len, device=valid.device)
    clean = i >= row_len
    block = torch.div(i % row_len, block_size, rounding_mode="floor")
    qb, kb = block[:, None], block[None, :]
    qc, kc = clean[:, None], clean[None, :]
    allowed = (~qc & ~kc & (kb == qb)) | (~qc & kc & (kb < qb)) | (qc & kc & (kb <= qb))
    return allowed.unsqueeze(0) & valid.repeat(1, 2).unsqueeze(1)


class BlockDiffusionObjective:
    """Block-diffusion loss of a block-causal :class:`dlm.models.Transformer` (e.g. the SDAR model; logits not
    shifted)."""

    name = "block"

    def __init__(self, mask_id: int, block_size: int, eps: float = 1e-3, stratified: bool = True):
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.mask_id, self.block_size, self.eps, self.stratified = mask_id, block_size, eps, stratified
        self._hidden: Callable | None = None

    def prepare(self, model, compile: bool = False) -> None:
        fn = model.hidden_states
        self._hidden = torch.compile(fn, dynamic=False) if compile else fn

    def noise(self, batch: Batch, generator: torch.Generator | None = None, t: torch.Tensor | None = None
              ) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The noisy half of ``batch``.

        Args:
            t: (B, n_blocks) noise levels of the blocks (drawn with ``generator`` when None).

        Returns:
            batch: ``batch`` with its canvases extended to whole blocks.
            noisy: (B, L) ids, masked positions replaced by the mask token.
            masked: (B, L) bool, the positions replaced.
            maskable: (B, L) bool, ``prompt_len <= i < canvas end``.
            t_pos: (B, L) each position's noise level (its block's).
        """
        ids = batch.ids
        B, L = ids.shape
        n_blocks = -(-L // self.block_size)
        if t is None:
            t = block_noise_levels(B, n_blocks, self.eps, generator, ids.device, self.stratified)
        batch = Batch(ids, batch.prompt_len, batch.answer_end, canvas_end(batch.valid_len, L, self.block_size))
        t_pos = t.repeat_interleave(self.block_size, dim=1)[:, :L]
        noisy, masked, maskable = add_noise(batch, self.mask_id, t_pos, generator)
        return batch, noisy, masked, maskable, t_pos

    def loss(self, model, batch: Batch, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Loss of one batch (noise drawn with ``generator``; ``t`` (B, n_blocks) may be given). Returns
        (loss, #masked)."""
        hidden_fn = self._hidden if self._hidden is not None else model.hidden_states
        batch, noisy, masked, maskable, t_pos = self.noise(batch, generator, t)
        ids = batch.ids
        B, L = ids.shape
        pos = torch.arange(L, device=ids.device).expand(B, L)
        valid = pos < batch.valid_len.unsqueeze(1)
        attention = block_diffusion_attention(L, self.block_size, valid)
        h = hidden_fn(torch.cat([noisy, ids], 1), torch.cat([pos, pos], 1), attention)  # (B, 2L, d)
        rows = masked.nonzero()[:, 0]
        logits = model.logits(h[:, :L][masked])  # (N, V): the noisy half's masked positions only
        divisor = t_pos[masked] * maskable.sum(1)[rows].clamp(min=1).to(t_pos.dtype)
        return weighted_ce(logits, ids[masked], divisor, B), int(rows.numel())
