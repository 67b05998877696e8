"""Training objectives: masked diffusion (LLaDA / MDLM) for dlm-tiny, next-token prediction for dlm-tiny-ar.

Masked diffusion (Nie et al. 2025, arXiv:2502.09992, and Sahoo et al. 2024, MDLM): for each row draw a noise
level ``t ~ U(eps, 1)``, replace every maskable token by the mask token independently with probability ``t``,
and train the model to predict the original tokens at the masked positions. The loss of a row is the sum over its
masked positions of ``CE / t``, divided by the number of maskable tokens of the row (its answer length including
EOS padding for prompt/answer rows, as in LLaDA's SFT; its length for plain text, as in LLaDA's pre-training),
and the batch loss is the mean over rows. This is an upper bound on the row's negative log-likelihood per token.
Prompt tokens are never masked.

Both objectives expose ``loss(model, batch, generator) -> (loss, n_targets)`` and ``prepare(model, compile)``;
``prepare`` binds the (optionally ``torch.compile``-d) model body used by ``loss`` from then on.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .data import Batch


def sample_t(n: int, eps: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
             stratified: bool = True) -> torch.Tensor:
    """(n,) noise levels in [eps, 1). ``stratified``: one uniform offset shared by n evenly spaced levels (MDLM's
    low-discrepancy sampler), which lowers the variance of the batch loss without changing its mean."""
    u = torch.rand(1 if stratified else n, device=device, generator=generator)
    if stratified:
        u = (u + torch.arange(n, device=device) / n) % 1.0
    return eps + (1.0 - eps) * u


def add_noise(batch: Batch, mask_id: int, t: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward (masking) process.

    Args:
        batch: rows (B, L) with their lengths.
        mask_id: the mask token.
        t: (B,) masking probability of each row, or (B, L) of each position (block diffusion: one per block).

    Returns:
        noisy: (B, L) ids with the masked positions replaced by ``mask_id``.
        masked: (B, L) bool, the positions replaced (a subset of the maskable ones).
        maskable: (B, L) bool, ``prompt_len <= i < valid_len``.
    """
    ids = batch.ids
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device).unsqueeze(0)
    maskable = (pos >= batch.prompt_len.unsqueeze(1)) & (pos < batch.valid_len.unsqueeze(1))
    draw = torch.rand(B, L, device=ids.device, generator=generator)
    masked = (draw < (t if t.dim() == 2 else t.unsqueeze(1))) & maskable
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    return noisy, masked, maskable


def masked_diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, t: torch.Tensor,
                          n_maskable: torch.Tensor) -> torch.Tensor:
    """The LLaDA/MDLM loss from the logits of the masked positions.

    Args:
        logits: (N, V) logits at the N masked positions (any float dtype; computed in float32).
        targets: (N,) original token at each masked position.
        rows: (N,) row of each masked position.
        t: (B,) the rows' masking probabilities.
        n_maskable: (B,) the rows' numbers of maskable tokens.

    Returns:
        scalar: ``mean over rows of sum_masked CE / (t * n_maskable)``.
    """
    return weighted_ce(logits, targets, t[rows] * n_maskable[rows].clamp(min=1).to(t.dtype), t.shape[0])


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, divisor: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``sum(CE / divisor) / n_rows`` over N targets: logits (N, V) (computed in float32), targets and divisor (N,)."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce / divisor).sum() / n_rows


def _valid_mask(batch: Batch) -> torch.Tensor | None:
    """(B, L) key mask of the rows' canvases, or None when every row uses its whole length."""
    L = batch.ids.shape[1]
    if bool((batch.valid_len >= L).all()):
        return None
    return torch.arange(L, device=batch.ids.device).unsqueeze(0) < batch.valid_len.unsqueeze(1)


class DiffusionObjective:
    """Masked-diffusion loss of a :class:`dlm.models.Transformer` (bidirectional, logits not shifted)."""

    name = "diffusion"

    def __init__(self, mask_id: int, eps: float = 1e-3, stratified: bool = True):
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.mask_id, self.eps, self.stratified = mask_id, eps, stratified
        self._hidden: Callable | None = None

    def prepare(self, model, compile: bool = False) -> None:
        fn = model.hidden_states
        self._hidden = torch.compile(fn, dynamic=False) if compile else fn

    def loss(self, model, batch: Batch, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        """Loss of one batch (noise drawn with ``generator``; ``t`` (B,) may be given). Returns (loss, #masked)."""
        hidden_fn = self._hidden if self._hidden is not None else model.hidden_states
        ids = batch.ids
        B, L = ids.shape
        if t is None:
            t = sample_t(B, self.eps, generator, ids.device, self.stratified)
        noisy, masked, maskable = add_noise(batch, self.mask_id, t, generator)
        pos = torch.arange(L, device=ids.device).expand(B, L)
        h = hidden_fn(noisy, pos, _valid_mask(batch))  # (B, L, d)
        rows = masked.nonzero()[:, 0]
        logits = model.logits(h[masked])  # (N, V): only the masked positions need the vocabulary
        loss = masked_diffusion_loss(logits, ids[masked], rows, t, maskable.sum(1))
        return loss, int(rows.numel())


class CausalObjective:
    """Next-token cross-entropy of a transformers causal LM on the answer (or every token of plain text)."""

    name = "causal"

    def __init__(self) -> None:
        self._body: Callable | None = None

    def prepare(self, model, compile: bool = False) -> None:
        def body(ids: torch.Tensor) -> torch.Tensor:
            return model.model(input_ids=ids).last_hidden_state

        self._body = torch.compile(body, dynamic=False) if compile else body

    def loss(self, model, batch: Batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Mean CE over the targets: positions ``max(prompt_len, 1) <= i < answer_end``, predicted from i - 1."""
        ids = batch.ids
        L = ids.shape[1]
        pos = torch.arange(L, device=ids.device).unsqueeze(0)
        target = (pos >= batch.prompt_len.clamp(min=1).unsqueeze(1)) & (pos < batch.answer_end.unsqueeze(1))
        # (B, L, d); causal attention, so padding after the answer cannot leak back
        h = self._body(ids) if self._body is not None else model.model(input_ids=ids).last_hidden_state
        sel = target[:, 1:]
        logits = model.lm_head(h[:, :-1][sel])  # (N, V)
        loss = F.cross_entropy(logits.float(), ids[:, 1:][sel])
        return loss, int(sel.sum())
