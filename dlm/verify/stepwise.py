"""``stepwise``: lossless parallel decoding with respect to the model's own one-token-per-step decode.

After FreeDave (Wu et al., 2025, "Free Draft-and-Verification: Toward Lossless Parallel Decoding for Diffusion
Large Language Models", arXiv:2510.00294; cychomatica/FreeDave).

The reference is the decode :meth:`StepwiseVerifier.reference_config` describes: ``low_confidence`` at
temperature 0 with one step per token (``steps = gen_length``), the same blocks, the same stopping rules and
sampling options. Each step of it commits the masked position of the active block whose greedy token is most
probable (leftmost on ties), then runs the model again.

One *round* of the verifier, for each row, from the current canvas ``c`` and its logits:

1. Rank the block's masked positions as the reference would if the logits did not change: by confidence,
   highest first, leftmost on ties (``select_top``'s order). Let ``pi_1, pi_2, ...`` be that order and ``t_i``
   the greedy token at ``pi_i``.
2. Draft ``k`` (``k = 1..K``) is ``c`` with ``pi_1..pi_k`` committed to ``t_1..t_k``. Draft 1 is exactly the
   reference's next canvas. All drafts of all rows go through ONE batched forward (rows = drafts).
3. Draft ``k + 1`` is accepted iff draft ``k`` is, and the reference step applied to draft ``k`` (with draft
   ``k``'s own logits) commits exactly ``pi_{k+1}`` with ``t_{k+1}``. By induction every accepted draft is a
   canvas the reference passes through, with the logits the reference would compute for it.
4. The row moves to its longest accepted draft and keeps that draft's logits for the next round, so no forward
   is repeated: one forward per round, and a round commits 1 to K tokens.

Consequences and choices:

* Terminal drafts (the answer is complete, or ``stop_at_eos`` ended the row) need no logits; they are not run,
  and drafts beyond a row's first terminal one are not built. A row's NFE is therefore never above the
  reference's: with ``a_1..a_n`` tokens accepted in its rounds, the reference takes ``sum a_i`` forwards and the
  verifier ``sum a_i - sum (a_i - 1) + [a_n >= 2]`` (the last round's forward only verifies). It is strictly
  lower as soon as a non-final round accepts 2 or more, or the final round 3 or more.
* Drafts never leave the active block. When a draft completes a block, the forward also computes the logits of
  the next block, so the next block starts without an extra forward.
* Exactness needs exact logits, so the cache must be exact: ``none``, or any policy with ``refresh_every=1``
  (which recomputes every position each step and never reads its storage; the verifier runs those forwards
  without storage, bitwise the same logits). Approximate settings are refused.
* Token-for-token equality also assumes the forward is *batch invariant*: a row's logits do not depend on the
  other rows of its batch (the verifier batches K drafts where the reference has one row). torch's CPU matmuls
  are, except for matrices of fewer than 12 rows, whose kernel differs by an ulp (use block lengths that are
  multiples of 4 or at least 12 there). An ulp matters only where two confidences or two logits tie to within
  it.
* ``temperature`` must be 0 (the reference is greedy), ``eotp`` is refused (it changes the canvas length
  between steps), and ``scheduler`` must be ``low_confidence`` (the drafts are its ranking); ``steps`` is not
  used (the reference spends one step per token).

Parameters (``verify_kwargs``):
    drafts: K, nested drafts per row and round (default 6). Compute per round grows with K (K model rows per
        batch row); NFE falls as long as the chains keep being accepted.
    adaptive: per-row K: doubled (up to ``max_drafts``) after a round that accepted all K drafts, set to
        ``max(2, accepted + 1)`` after a round that rejected one.
    max_drafts: upper bound of the adaptive K (default 16).

Statistics (``GenerationOutput.stats``): ``rounds`` (batched rounds), ``row_rounds`` (rounds summed over rows),
``accepted_tokens``, ``block_efficiency`` (tokens committed per row and round), ``forwards`` (batched forward
passes, seed included), ``draft_rows`` (model rows evaluated, i.e. the compute, CFG copies included),
``nfe_reference`` (the reference's NFE summed over rows: one forward per committed token). The trace's
``commit_step`` is the round in which a position was committed and ``block_steps`` the rounds per block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .. import cache as cache_mod
from .. import schedulers as sched_mod
from ..cache.base import CacheContext, StepInfo
from ..config import GenerationConfig
from ..errors import ConfigError, GenerationError
from ..outputs import GenerationOutput, StepEvent
from ..sampling import Candidates
from ..schedulers.base import select_top
from .base import register_verifier
from .common import Verifier, positive_int, require_exact_cache


def stepwise_order(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Columns in the order the one-token-per-step decode would commit them if ``scores`` did not change.

    The order of :func:`~dlm.schedulers.base.select_top`: allowed columns first, highest score first, leftmost
    on ties (an allowed ``-inf`` still precedes every disallowed column), so ``order[:, :k]`` is the set
    ``select_top(scores, allowed, k)`` picks.

    scores: (B, n) float; allowed: (B, n) bool. Returns (B, n) long.
    """
    s = scores.masked_fill(~allowed, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    first = torch.sort((~allowed.gather(1, order)).to(torch.uint8), dim=1, stable=True).indices
    return order.gather(1, first)


@register_verifier("stepwise")
class StepwiseVerifier(Verifier):
    """Nested drafts of the one-token-per-step greedy decode, verified by the model itself (see module doc)."""

    @dataclass(frozen=True)
    class Params:
        drafts: int = 6
        adaptive: bool = False
        max_drafts: int = 16

        def __post_init__(self):
            positive_int("drafts", self.drafts)
            positive_int("max_drafts", self.max_drafts)
            if not isinstance(self.adaptive, bool):
                raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")

    # ----------------------------------------------------------------- the reference
    @staticmethod
    def reference_config(config: GenerationConfig) -> GenerationConfig:
        """The decode whose output this verifier reproduces token for token."""
        return config.replace(verify=None, verify_kwargs={}, scheduler="low_confidence", scheduler_kwargs={},
                              steps=config.gen_length, temperature=0.0)

    def check(self, config: GenerationConfig) -> None:
        if config.temperature != 0:
            raise ConfigError(f"verify='stepwise' reproduces the greedy one-token-per-step decode; temperature must "
                              f"be 0, got {config.temperature}")
        if config.scheduler != "low_confidence" or dict(config.scheduler_kwargs):
            raise ConfigError(f"verify='stepwise' drafts with the reference's own ranking (low_confidence, one token "
                              f"per step); scheduler must be 'low_confidence' without kwargs, got "
                              f"{config.scheduler!r} {dict(config.scheduler_kwargs)}")
        if config.eotp:
            raise ConfigError("verify='stepwise' does not support eotp=True (it drops positions from the canvas "
                              "between steps); use stop_at_eos, which it reproduces exactly")
        require_exact_cache(config, "stepwise")

    # ----------------------------------------------------------------- decoding
    @torch.no_grad()
    def run(self, lm, prompts: Sequence[Sequence[int]], config: GenerationConfig, stream=None) -> GenerationOutput:
        from ..engine_legacy import Generation

        t0 = time.perf_counter()
        self.check(config)
        ref = self.reference_config(config)
        prm = self.params
        g = Generation(lm, prompts, ref)
        # exact policies recompute everything every step, so the forwards run without storage (same logits)
        policy = cache_mod.create("none")
        arch = lm.arch
        policy.setup(CacheContext(rows=g.B * g.copies, copies=g.copies, canvas_length=g.L,
                                  num_layers=arch.num_layers, num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim,
                                  dtype=lm.dtype, device=g.device, answer_start=g.P, logits_shift=g.shift))
        mode = sched_mod.get("low_confidence").sampling if ref.sampling == "auto" else ref.sampling
        full_km = g.key_mask()  # constant without eotp; the reference passes it to every forward
        base_km = None if full_km is None else full_km[: g.B]
        B, P, dev = g.B, g.P, g.device
        bl, nb = ref.effective_block_length, ref.num_blocks
        mask_id = g.mask_id
        ar_B = torch.arange(B, device=dev)
        tok = torch.zeros(B, bl, dtype=torch.long, device=dev)  # greedy tokens of the current canvas, active block
        conf = torch.zeros(B, bl, dtype=torch.float32, device=dev)  # and their confidences
        have = torch.zeros(B, dtype=torch.bool, device=dev)  # tok/conf are valid for the row's current canvas
        K = torch.full((B,), prm.drafts, dtype=torch.long, device=dev)
        rounds = row_rounds = accepted_total = drafted_total = draft_rows = 0
        t_prep = time.perf_counter()

        def evaluate(src: torch.Tensor, x: torch.Tensor, bs: int, be: int, re: int) -> Candidates:
            """Candidates (R, re - bs) of the canvases ``x`` (R, L), copies of rows ``src``: ONE forward."""
            nonlocal draft_rows
            view = g.rows(src, x)
            masked = x == mask_id
            info = StepInfo(step=0, global_step=g.steps, block_start=bs, block_end=be, region_start=bs,
                            region_end=re, masked=masked, committed_last=torch.zeros_like(masked), length=g.length)
            plan = policy.plan(info)
            km = None if base_km is None else base_km[src].repeat(g.copies, 1)
            logits = view.forward(policy, plan, km)
            if bool(torch.isnan(logits.amax(-1)).any()):
                raise GenerationError(f"the model produced NaN logits at forward {g.steps}; check the weights and "
                                      "the dtype (float16 overflows are a common cause)")
            g.steps += 1
            draft_rows += int(src.numel()) * g.copies
            return view.candidates(logits, mode, set())

        stopped = False
        for b in range(nb):
            if stopped or bool(g.done.all()):
                break
            bs = P + b * bl
            be = bs + bl
            next_end = be + bl if b + 1 < nb else None
            active = ~g.done & (g.x[:, bs:be] == mask_id).any(1)
            need = active & ~have
            if bool(need.any()):  # the reference's first forward of the block (only the first block needs it)
                rows = need.nonzero().squeeze(1)
                c = evaluate(rows, g.x[rows].clone(), bs, be, be)
                tok[rows], conf[rows] = c.tokens, c.confidence.float()
                have[rows] = True
                g.nfe[rows] += g.copies
            block_rounds = 0
            while bool(active.any()):
                # ---- drafts: the top-k of the current ranking, k = 1..K_r, one model row each
                masked = g.x[:, bs:be] == mask_id  # (B, bl)
                order = stepwise_order(conf, masked)
                rank = torch.empty_like(order).scatter_(1, order, torch.arange(bl, device=dev).expand(B, bl))
                Kr = torch.where(active, torch.minimum(K, masked.sum(1)), 0)  # (B,)
                src = torch.repeat_interleave(ar_B, Kr)  # (R,) row of each draft
                starts = Kr.cumsum(0) - Kr
                k = torch.arange(src.numel(), device=dev) - starts[src] + 1  # (R,) 1-based draft index
                commit = masked[src] & (rank[src] < k.unsqueeze(1))  # (R, bl)
                x = g.x[src].clone()
                x[:, bs:be] = torch.where(commit, tok[src], x[:, bs:be])
                view = g.rows(src, x)
                view.apply_stops(None, (bs, be))  # the reference's stopping rules after each step (fills x)
                terminal = view.done
                big = torch.full((B,), int(Kr.max()) + 1, dtype=torch.long, device=dev)
                first_terminal = big.scatter_reduce(0, src, torch.where(terminal, k, big[src]), reduce="amin")
                keep = k <= first_terminal[src]
                run_idx = (keep & ~terminal).nonzero().squeeze(1)
                completes = ~(x[:, bs:be] == mask_id).any(1)
                re = next_end if next_end is not None and bool(completes[run_idx].any()) else be
                # ---- ONE forward for every non-terminal draft of every row
                ok = torch.zeros(src.numel(), dtype=torch.bool, device=dev)
                c = None
                if run_idx.numel():
                    c = evaluate(src[run_idx], x[run_idx], bs, be, re)
                    took_part = torch.zeros(B, dtype=torch.bool, device=dev)
                    took_part[src[run_idx]] = True
                    g.nfe += took_part.long() * g.copies
                    # ---- verification: does the reference, from draft k, commit the (k+1)-th drafted position?
                    sr, kr = src[run_idx], k[run_idx]
                    allowed = x[run_idx, bs:be] == mask_id
                    ones = torch.ones(run_idx.numel(), dtype=torch.long, device=dev)
                    pick = select_top(c.confidence[:, :bl], allowed, ones)
                    pos = pick.to(torch.uint8).argmax(1)
                    has_next = kr < Kr[sr]
                    want = order[sr, kr.clamp(max=bl - 1)]
                    ok[run_idx] = (pick.any(1) & has_next & (pos == want)
                                   & (c.tokens[:, :bl].gather(1, pos.unsqueeze(1)).squeeze(1) == tok[sr, want]))
                okmat = torch.zeros(B, int(Kr.max()), dtype=torch.long, device=dev)
                okmat[src, k - 1] = ok.long()
                a = torch.where(active, 1 + okmat.cumprod(1).sum(1), 0)  # (B,) accepted drafts per row
                # ---- move every active row to its longest accepted draft and keep that draft's logits
                act = active.nonzero().squeeze(1)
                ai = starts[act] + a[act] - 1
                g.x[act] = x[ai]
                g.done[act] = view.done[ai]
                cs = g.commit_step[act, bs - P : be - P]
                g.commit_step[act, bs - P : be - P] = torch.where(commit[ai], torch.full_like(cs, rounds), cs)
                have[act] = False
                if c is not None:
                    slot = torch.full((src.numel(),), -1, dtype=torch.long, device=dev)
                    slot[run_idx] = torch.arange(run_idx.numel(), device=dev)
                    si = slot[ai]
                    got = si >= 0
                    rows_got, si = act[got], si[got]
                    nxt = completes[ai][got] & (re > be)  # the accepted draft completed the block: next block's
                    cols = torch.arange(bl, device=dev).unsqueeze(0) + torch.where(nxt, bl, 0).unsqueeze(1)
                    tok[rows_got] = c.tokens[si].gather(1, cols)
                    conf[rows_got] = c.confidence[si].float().gather(1, cols)
                    have[rows_got] = True
                if prm.adaptive:
                    full = a == Kr
                    grown = torch.where(Kr == K, torch.clamp(2 * K, max=prm.max_drafts), K)
                    K = torch.where(active, torch.where(full, grown, torch.clamp(a + 1, min=2)), K)
                rounds += 1
                block_rounds += 1
                row_rounds += int(act.numel())
                accepted_total += int(a.sum())
                drafted_total += int(Kr.sum())
                if stream is not None:
                    committed = torch.zeros(B, g.G, dtype=torch.bool, device=dev)
                    committed[act, bs - P : be - P] = commit[ai]
                    event = StepEvent(step=rounds, block=b, committed=committed, tokens=g.x[:, P:].clone(),
                                      done=g.done.clone())
                    stream(event)
                    if getattr(event, "stop_requested", False):
                        stopped = True
                        break
                active = ~g.done & (g.x[:, bs:be] == mask_id).any(1)
            g.block_steps.append(block_rounds)
        stats = {
            "rounds": float(rounds),
            "row_rounds": float(row_rounds),
            "accepted_tokens": float(accepted_total),
            "drafted_tokens": float(drafted_total),
            "block_efficiency": accepted_total / max(1, row_rounds),
            "forwards": float(g.steps),
            "draft_rows": float(draft_rows),
            "nfe_reference": float(accepted_total * g.copies),
        }
        return g.output(t0, t_prep, stats)
