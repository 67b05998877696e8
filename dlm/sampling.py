"""Logits -> candidate tokens and the per-position measures schedulers rank them by.

Two sampling families, matching the official samplers:

``gumbel`` (LLaDA's ``generate.py``)
    token = argmax of the Gumbel-perturbed logits ``exp(l) / (-log u) ** T`` computed in float64 (plain
    argmax at T = 0); confidence = softmax(l)[token] of the *untempered* logits.
``categorical`` (Dream's ``generation_utils.py``)
    logits / T, then top-p, then top-k filtering; probs = softmax; token ~ Categorical(probs) (argmax at
    T = 0); confidence = probs[token]; margin and entropy are measured on the same processed probs.
``multinomial`` (the block-diffusion samplers: LLaDA2's ``generate``, SDAR's ``generate.py``)
    at T = 0: argmax, confidence = softmax(l)[token] (no filters); else logits / T, then top-k, then top-p,
    probs = softmax, token ~ Categorical(probs), confidence = probs[token].

At temperature 0 without top-k/top-p both families give the same tokens and confidences. Random draws come
from the ``torch.Generator`` of each request (:class:`Draws`), over its candidate positions only, so a request's
tokens depend on its own seed and nothing else (not on the other requests of a batch); the draws cover the
positions the step can commit, not the whole canvas as the official scripts do, which changes which random
numbers are used, not the distribution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

SAMPLING_MODES = ("gumbel", "categorical", "multinomial")
MEASURES = ("margin", "entropy", "logit_gap")


@dataclass
class Candidates:
    """What each candidate position would become now, and how sure the model is. Shapes (B, n).

    Attributes:
        tokens: token each position would be committed to.
        confidence: probability of that token (see the module doc for which distribution); ``-inf`` where
            ``confidence_eos_eot_inf`` excludes it.
        margin: top-1 minus top-2 probability (``None`` unless a scheduler asked for it).
        neg_entropy: sum p log(p + 1e-10), Dream's entropy confidence: higher is more certain.
        logit_gap: top-1 minus top-2 raw logit (Prophet's measure).
    """

    tokens: torch.Tensor
    confidence: torch.Tensor
    margin: torch.Tensor | None = None
    neg_entropy: torch.Tensor | None = None
    logit_gap: torch.Tensor | None = None

    def scatter_(self, index: torch.Tensor, fresh: "Candidates") -> None:
        """Overwrite the positions ``index`` (B, m) with ``fresh`` (B, m) values, in place."""
        for name in ("tokens", "confidence", "margin", "neg_entropy", "logit_gap"):
            dst, src = getattr(self, name), getattr(fresh, name)
            if dst is not None and src is not None:
                dst.scatter_(1, index, src.to(dst.dtype))

    def select(self, index: torch.Tensor) -> "Candidates":
        """A new Candidates holding the positions ``index`` (B, m)."""
        def g(t):
            return None if t is None else t.gather(1, index)

        return Candidates(g(self.tokens), g(self.confidence), g(self.margin), g(self.neg_entropy), g(self.logit_gap))


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (the top token always)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    remove = cum > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(remove).scatter(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


class Draws:
    """Where the random numbers of a batch of candidate positions come from: consecutive segments of rows, each
    drawn from its own generator (one segment per request), so a request's draws do not depend on the others.

    segments: (generator, number of rows) pairs covering the rows in order. The rows are the leading dimension
    of the (rows, ..., V) logits; a request's rows are drawn together, in one call on its generator.
    """

    def __init__(self, segments: list[tuple[torch.Generator | None, int]]):
        self.segments = segments

    @classmethod
    def single(cls, generator: torch.Generator | None, rows: int) -> "Draws":
        return cls([(generator, rows)])

    def uniform(self, shape: tuple[int, ...], device, dtype=torch.float64) -> torch.Tensor:
        """U(0, 1) of ``shape`` (rows first), each segment from its generator."""
        parts = [torch.rand((n,) + tuple(shape[1:]), dtype=dtype, device=device, generator=g)
                 for g, n in self.segments]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def multinomial(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per position from ``probs`` (rows, ..., V); returns (rows, ...)."""
        out, start = [], 0
        for g, n in self.segments:
            block = probs[start : start + n]
            flat = block.reshape(-1, block.shape[-1])
            out.append(torch.multinomial(flat, 1, generator=g).view(block.shape[:-1]))
            start += n
        return out[0] if len(out) == 1 else torch.cat(out)


def gumbel_argmax(logits: torch.Tensor, temperature: float, draws: "Draws | torch.Generator | None") -> torch.Tensor:
    """argmax of exp(l) / (-log u)^T with u ~ U(0, 1) in float64 (LLaDA's sampler). T = 0: plain argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    l64 = logits.to(torch.float64)
    draws = draws if isinstance(draws, Draws) else Draws.single(draws, l64.shape[0])
    u = draws.uniform(tuple(l64.shape), l64.device)
    return (l64.exp() / (-torch.log(u)) ** temperature).argmax(-1)


def id_index(ids, device) -> torch.Tensor:
    """Token ``ids`` as a long tensor on ``device``, made once per (ids, device): indexing with a Python list would
    copy it from pageable host memory at every step, which makes the host wait for the GPU."""
    return _id_index(tuple(int(i) for i in ids), torch.device(device))


@functools.lru_cache(maxsize=64)
def _id_index(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long, device=device)


def compute_candidates(
    logits: torch.Tensor,  # (B, n, V) in any float dtype
    *,
    mode: str,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: "Draws | torch.Generator | None" = None,
    measures: frozenset[str] | set[str] = frozenset(),
    ban_ids: tuple[int, ...] = (),
    low_confidence_ids: tuple[int, ...] = (),
    never_ids: tuple[int, ...] = (),
) -> Candidates:
    """Turn logits into :class:`Candidates`.

    Args:
        mode: ``"gumbel"`` or ``"categorical"`` (see the module doc).
        generator: a :class:`Draws` (one generator per request's rows) or a single generator for all rows.
        measures: extra measures to compute: any of ``margin``, ``entropy``, ``logit_gap``.
        ban_ids: token ids whose logits are set to -inf first (``logits_eos_inf``).
        low_confidence_ids: candidates equal to one of these get confidence -inf (``confidence_eos_eot_inf``).
        never_ids: token ids never chosen as a candidate (the mask token: committing it would make no progress).
            Unlike ``ban_ids`` they do not change the probabilities confidences are read from, so whenever the
            best token is not one of them, tokens and confidences are exactly the official samplers'.
    """
    pick = _PICKS.get(mode)
    if pick is None:
        raise ValueError(f"unknown sampling mode {mode!r}; allowed: {', '.join(SAMPLING_MODES)}")
    raw, owned = _float_logits(logits, ban_ids)
    margin = neg_entropy = gap = None
    if "logit_gap" in measures:
        top2 = raw.topk(2, dim=-1).values
        gap = top2[..., 0] - top2[..., 1]
    tokens, probs = _choose(pick, raw, owned, temperature, top_k, top_p, generator, never_ids)
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if "margin" in measures:
        top2p = probs.topk(2, dim=-1).values
        margin = top2p[..., 0] - top2p[..., 1]
    if "entropy" in measures:
        neg_entropy = (probs * torch.log(probs + 1e-10)).sum(-1)
    confidence = _low_confidence(tokens, confidence, low_confidence_ids)
    return Candidates(tokens, confidence, margin, neg_entropy, gap)


def candidates_of_rows(logits: torch.Tensor, rows: torch.Tensor, *, fused: bool = False, **kwargs) -> Candidates:
    """``compute_candidates(logits[rows], **kwargs)`` for 2-D logits (positions, V) and a 1-D index of rows
    (non-negative, within the logits); with ``fused``, by the temperature-0 kernel of :mod:`dlm.sampling_kernel`
    where it applies (same tokens, ``categorical``'s only for bfloat16/float16 logits; the confidences differ in
    the last bits, see that module), without gathering or converting the rows."""
    if fused and _greedy_without_extras(dtype=logits.dtype, **kwargs):
        from . import sampling_kernel  # (imports Triton: only once a fused step asks for it)

        if sampling_kernel.applies(logits, rows):
            dev = logits.device
            ban, never = (id_index(kwargs.get(k, ()), dev) for k in ("ban_ids", "never_ids"))
            tokens, confidence, _ = sampling_kernel.greedy(logits, rows, ban, never)
            return Candidates(tokens, _low_confidence(tokens, confidence, kwargs.get("low_confidence_ids", ())))
    return compute_candidates(logits[rows], **kwargs)


def _greedy_without_extras(*, mode: str, temperature: float = 0.0, top_k: int | None = None,
                           top_p: float | None = None, measures=frozenset(), dtype: torch.dtype = torch.bfloat16,
                           **_) -> bool:
    """Whether these settings pick the argmax of the logits, with the confidence from their plain softmax and
    no extra measure (what the fused kernel computes): temperature 0 in any mode, but ``categorical`` filters
    its probabilities by top-k/top-p even then, and takes the argmax of probabilities (the kernel's larger logit
    is the same token for logits of ``dtype`` bfloat16 or float16 only: see :mod:`dlm.sampling_kernel`)."""
    if temperature != 0 or measures or mode not in _PICKS:
        return False
    return mode != "categorical" or (top_k is None and (top_p is None or top_p >= 1)
                                     and dtype in (torch.bfloat16, torch.float16))


def _low_confidence(tokens: torch.Tensor, confidence: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """``confidence`` at -inf where the token is one of ``ids`` (``confidence_eos_eot_inf``)."""
    if not ids:
        return confidence
    return confidence.masked_fill(torch.isin(tokens, id_index(ids, tokens.device)), float("-inf"))


def _float_logits(logits: torch.Tensor, ban_ids: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """(float32 logits with the banned ids at -inf, whether that tensor is a copy this call owns)."""
    raw = logits.float()
    owned = raw is not logits  # a copy of the caller's logits (other dtype): free to change in place
    if ban_ids:
        raw = raw if owned else raw.clone()
        owned = True
        raw.index_fill_(-1, id_index(ban_ids, raw.device), float("-inf"))
    return raw, owned


def _choose(pick, raw, owned: bool, temperature, top_k, top_p, generator,
            never_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, probs) of a sampling mode's ``pick``, the never-chosen ids kept out of the choice."""
    if never_ids and owned and pick is _pick_gumbel:
        # the confidences' softmax first, then the never-chosen ids filled into the copy itself: the same tokens
        # and probabilities as with a second copy of the logits, without writing one (a large share of a
        # batched step's sampling on a GPU)
        probs = torch.softmax(raw, dim=-1)
        raw.index_fill_(-1, id_index(never_ids, raw.device), float("-inf"))
        return _gumbel_tokens(raw, temperature, top_k, top_p, generator), probs
    choice = raw
    if never_ids:
        choice = raw.clone()
        choice.index_fill_(-1, id_index(never_ids, raw.device), float("-inf"))
    return pick(raw, choice, temperature, top_k, top_p, generator, never_ids)


def _draw(pick: torch.Tensor, generator) -> torch.Tensor:
    draws = generator if isinstance(generator, Draws) else Draws.single(generator, pick.shape[0])
    return draws.multinomial(pick)


def _without(probs: torch.Tensor, never_ids: tuple[int, ...]) -> torch.Tensor:
    """``probs`` with the never-chosen ids at 0 (a copy when there are any)."""
    if not never_ids:
        return probs
    out = probs.clone()
    out.index_fill_(-1, id_index(never_ids, out.device), 0.0)
    return out


def _pick_gumbel(raw, choice, temperature, top_k, top_p, generator, never_ids):
    """(tokens, probs): Gumbel-max over the filtered logits; confidences from the unfiltered distribution."""
    return _gumbel_tokens(choice, temperature, top_k, top_p, generator), torch.softmax(raw, dim=-1)


def _gumbel_tokens(choice, temperature, top_k, top_p, generator):
    filtered = choice
    if temperature > 0:
        if top_p is not None and top_p < 1:
            filtered = top_p_filter(filtered, top_p)
        if top_k is not None:
            filtered = top_k_filter(filtered, top_k)
    return gumbel_argmax(filtered, temperature, generator)


def _pick_categorical(raw, choice, temperature, top_k, top_p, generator, never_ids):
    """(tokens, probs): a draw from (or the argmax of) the tempered, top-p then top-k filtered distribution."""
    proc = raw / temperature if temperature > 0 else raw
    if top_p is not None and top_p < 1:
        proc = top_p_filter(proc, top_p)
    if top_k is not None:
        proc = top_k_filter(proc, top_k)
    probs = torch.softmax(proc, dim=-1)
    pick = _without(probs, never_ids)
    return (_draw(pick, generator) if temperature > 0 else pick.argmax(-1)), probs


def _pick_multinomial(raw, choice, temperature, top_k, top_p, generator, never_ids):
    """(tokens, probs): a draw from the tempered, top-k then top-p filtered distribution; greedy at temperature 0
    with confidences from the unfiltered one."""
    if temperature <= 0:
        return choice.argmax(-1), torch.softmax(raw, dim=-1)
    proc = raw / temperature
    if top_k is not None:
        proc = top_k_filter(proc, top_k)
    if top_p is not None and top_p < 1:
        proc = top_p_filter(proc, top_p)
    probs = torch.softmax(proc, dim=-1)
    return _draw(_without(probs, never_ids), generator), probs


_PICKS = {"gumbel": _pick_gumbel, "categorical": _pick_categorical, "multinomial": _pick_multinomial}
