"""The speculative-sampling acceptance rule (Leviathan et al., 2023, arXiv:2211.17192; Chen et al., 2023,
arXiv:2302.01318), pure functions on probability vectors: accept a draft token x drawn from q with probability
min(1, p(x) / q(x)), else draw from normalize(max(0, p - q)); every emitted token is then distributed as p.
"""

from __future__ import annotations

import torch

def accept_probabilities(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Probability of accepting each possible draft token: ``min(1, p / q)``; 1 where ``q`` is 0 (such a token
    is never drafted). p, q: (..., V) probability vectors. Returns (..., V)."""
    safe = torch.where(q > 0, q, torch.ones_like(q))
    return torch.where(q > 0, torch.clamp(p / safe, max=1.0), torch.ones_like(p))


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalize(max(0, p - q))``: where a rejected draft's replacement is drawn from. When it has no mass
    (p == q, so nothing is ever rejected) it is ``p``. p, q: (..., V). Returns (..., V)."""
    r = torch.clamp(p - q, min=0.0)
    mass = r.sum(-1, keepdim=True)
    return torch.where(mass > 0, r / torch.where(mass > 0, mass, torch.ones_like(mass)), p)


def emitted_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distribution of the token the rule emits at a position when the draft token is drawn from ``q``:
    ``q(x) * accept(x)`` for each ``x``, plus the rejection mass times the residual. Equals ``p`` (the point of
    the rule): ``sum_x min(p, q) + (p - min(p, q)) = p``. p, q: (..., V). Returns (..., V)."""
    kept = q * accept_probabilities(p, q)
    return kept + (1.0 - kept.sum(-1, keepdim=True)) * residual_distribution(p, q)


def speculative_sample(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[list[int], int]:
    """Run the rule over one draft.

    p: (n + 1, V) target distributions (row i: after the first i draft tokens); q: (n, V) the draft tokens'
    proposal distributions; draft: (n,) long. Returns (emitted tokens, number of draft tokens accepted); the
    emitted tokens are the accepted ones plus one more (the residual draw, or the bonus draw from ``p[n]``).
    """
    n = int(draft.numel())
    out: list[int] = []
    acc = accept_probabilities(p[:n], q).gather(1, draft.view(n, 1)).squeeze(1) if n else p.new_zeros(0)
    for i in range(n):
        u = torch.rand((), dtype=torch.float64, device=p.device, generator=generator)
        if bool(u < acc[i]):
            out.append(int(draft[i]))
            continue
        res = residual_distribution(p[i], q[i])
        out.append(int(torch.multinomial(res, 1, generator=generator)))
        return out, i
    out.append(int(torch.multinomial(p[n], 1, generator=generator)))
    return out, n
