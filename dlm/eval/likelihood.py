"""Log-likelihood of a continuation under a masked-diffusion model: LLaDA's Monte Carlo estimate.

A masked-diffusion LM has no left-to-right factorisation, so ``log p(target | prefix)`` is estimated by the
model's evidence lower bound (LLaDA, arXiv 2502.09992, eq. 6 and Appendix B.5; ML-GSAI/LLaDA ``eval_llada.py``
and ``get_log_likelihood.py``)::

    log p(y | x) >= E_{l ~ U{1..T}} E_{S: uniform l-subset of the T target positions}
                        [ (T / l) * sum_{i in S} log p(y_i | x, y with S masked) ]

The official procedure, reproduced here:

1. ``mc_num`` samples are drawn in forward passes of ``b = mc_batch_size`` rows, each row prefix + target.
2. Per pass, the numbers of masked target tokens are stratified: ``k ~ U{1..T}``, then row j masks
   ``l_j = ((round(k + j T / b) - 1) mod T) + 1`` tokens (``round(linspace(k, k + (b-1) T / b, b))``), at
   positions drawn uniformly among the T target positions. The prefix is never masked.
3. With classifier-free guidance w > 0, each row is also run with the prefix replaced by masks and
   ``logits = uncond + (w + 1)(cond - uncond)``.
4. Each row contributes ``sum over masked i of -log p(y_i) / (l_j / T)``; a pass's loss is the sum over rows / b;
   the estimate is minus the mean of the passes' losses.

Where dlm differs, on purpose:

* randomness comes from a ``torch.Generator`` seeded by ``seed`` and a hash of the request, not from the global
  generator: a request's estimate does not depend on what was evaluated before it, in what order or batch;
* the masked positions of a row are the ``l_j`` smallest of T uniform draws (a uniformly random ``l_j``-subset,
  the same distribution as LLaDA's per-row ``randperm``, drawn in one call for the whole pass);
* the log-softmax is taken in float32 (LLaDA's cross-entropy runs on the model's bf16 logits), and logits are
  computed only for the target positions (the rest are never used);
* for models whose logits are shifted (Dream: position i-1 predicts token i) the logit of target position i is
  read at i-1, as the model defines.

``is_greedy`` (LLaDA's ``suffix_greedy_prediction``): from prefix + T masks, commit the single most confident
argmax token per step (low_confidence, temperature 0, one block of T) and compare with the target. Computed only
when asked (``check_greedy``); LLaDA recommends leaving it off, since none of its reported tasks need it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import GenerationConfig
from ..errors import ConfigError


@dataclass
class LikelihoodCounters:
    """What the estimates cost: forward passes, rows evaluated, seconds."""

    forwards: int = 0
    rows: int = 0
    seconds: float = 0.0


def request_seed(seed: int, *parts: Sequence[int]) -> int:
    """A 63-bit seed derived from ``seed`` and the token ids of a request (stable across runs and processes)."""
    h = hashlib.sha256(str(int(seed)).encode())
    for p in parts:
        h.update(b"|" + ",".join(map(str, p)).encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1


def masked_counts(target_len: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """(rows,) long: how many target tokens each row masks, stratified over [1, target_len] (LLaDA's scheme)."""
    T = target_len
    k = int(torch.randint(1, T + 1, (), generator=generator))
    x = torch.round(torch.linspace(float(k), k + (rows - 1) * (T / rows), steps=rows)).long()
    return ((x - 1) % T) + 1


def target_masks(counts: torch.Tensor, target_len: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, T) bool: row j masks ``counts[j]`` target positions chosen uniformly at random."""
    rank = torch.rand((counts.shape[0], target_len), generator=generator).argsort(dim=1).argsort(dim=1)
    return rank < counts.unsqueeze(1)


def target_logprobs(lm, seq: torch.Tensor, prefix_len: int, cfg_scale: float) -> torch.Tensor:
    """(rows, T, V) float32 log-probabilities at the target positions of ``seq`` (rows, P + T), with
    classifier-free guidance when ``cfg_scale`` > 0 (the unconditional rows have the prefix masked)."""
    rows, L = seq.shape
    shift = lm.logits_shift
    if shift and prefix_len == 0:
        raise ConfigError(f"{lm.model_type} predicts token i from position i-1: the context needs at least one "
                          "token (e.g. BOS)")
    x = seq
    if cfg_scale > 0:
        uncond = seq.clone()
        uncond[:, :prefix_len] = lm.ids.mask_id
        x = torch.cat([seq, uncond])
    pos = torch.arange(L, device=seq.device).expand(x.shape[0], L)
    logits = lm.model(x, pos, logits_index=slice(prefix_len - shift, L - shift)).float()
    if cfg_scale > 0:
        cond, unc = logits.chunk(2)
        mixed = unc + (cfg_scale + 1) * (cond - unc)
        # ids outside the vocabulary are -inf in both; keep them -inf instead of nan
        logits = torch.where(torch.isneginf(cond) & torch.isneginf(unc), cond, mixed)
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def mc_loglikelihood(lm, prefix: Sequence[int], target: Sequence[int], *, mc_num: int, mc_batch_size: int,
                     cfg_scale: float = 0.0, seed: int = 0, counters: LikelihoodCounters | None = None) -> float:
    """LLaDA's Monte Carlo estimate of ``log p(target | prefix)`` (see the module docstring).

    Args:
        lm: a :class:`~dlm.api.DiffusionLM`.
        prefix, target: token ids; ``target`` non-empty.
        mc_num: samples; ``mc_batch_size`` rows per forward pass (must divide ``mc_num`` once capped at it).
    """
    T = len(target)
    if T == 0:
        raise ConfigError("the continuation to score is empty (it encodes to no tokens)")
    b = min(mc_batch_size, mc_num)
    if mc_num % b:
        raise ConfigError(f"mc_num={mc_num} must be a multiple of mc_batch_size={b}")
    gen = torch.Generator().manual_seed(request_seed(seed, prefix, target))
    full = torch.tensor([*prefix, *target], dtype=torch.long, device=lm.device)
    P = len(prefix)
    y = full[P:].expand(b, T)
    losses = []
    for _ in range(mc_num // b):
        counts = masked_counts(T, b, gen)
        masked = target_masks(counts, T, gen).to(lm.device)
        seq = full.expand(b, -1).clone()
        seq[:, P:][masked] = lm.ids.mask_id
        logp = target_logprobs(lm, seq, P, cfg_scale)  # (b, T, V)
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (b, T)
        weight = T / counts.to(nll.device, torch.float32)  # 1 / p_mask
        losses.append(float((nll * masked * weight.unsqueeze(1)).sum()) / b)
        if counters is not None:
            counters.forwards += 1
            counters.rows += b * (2 if cfg_scale > 0 else 1)
    return -sum(losses) / len(losses)


def exact_elbo(lm, prefix: Sequence[int], target: Sequence[int], cfg_scale: float = 0.0,
               max_target: int = 12) -> float:
    """The expectation that :func:`mc_loglikelihood` estimates, computed exactly by enumerating every masked
    subset (2^T - 1 forward rows; for checking the estimator on short targets only)."""
    import itertools

    T = len(target)
    if not 0 < T <= max_target:
        raise ConfigError(f"exact_elbo enumerates 2^T subsets; T={T} is outside [1, {max_target}]")
    full = torch.tensor([*prefix, *target], dtype=torch.long, device=lm.device)
    P = len(prefix)
    total = 0.0
    for size in range(1, T + 1):
        subsets = list(itertools.combinations(range(T), size))
        masked = torch.zeros((len(subsets), T), dtype=torch.bool, device=lm.device)
        for r, s in enumerate(subsets):
            masked[r, list(s)] = True
        seq = full.expand(len(subsets), -1).clone()
        seq[:, P:][masked] = lm.ids.mask_id
        logp = target_logprobs(lm, seq, P, cfg_scale)
        lp = logp.gather(-1, full[P:].expand(len(subsets), T).unsqueeze(-1)).squeeze(-1)
        # E over l uniform on 1..T of (T / l) * mean over l-subsets of the masked log-probabilities
        total += (T / size) * float((lp * masked).sum()) / len(subsets) / T
    return total


def greedy_matches(lm, prefix: Sequence[int], target: Sequence[int], cfg_scale: float = 0.0) -> bool:
    """LLaDA's ``suffix_greedy_prediction``: does the one-token-per-step greedy decode of T masks after the prefix
    (low_confidence, temperature 0, a single block, no early stop) reproduce the target?"""
    T = len(target)
    config = GenerationConfig(gen_length=T, block_length=T, steps=T, scheduler="low_confidence", temperature=0.0,
                              cfg_scale=cfg_scale, stop_at_eos=False)
    out = lm.generate([list(prefix)], config, progress=False)
    return out.sequences[0].tolist() == list(target)


__all__ = ["LikelihoodCounters", "exact_elbo", "greedy_matches", "masked_counts", "mc_loglikelihood",
           "request_seed", "target_logprobs", "target_masks"]
