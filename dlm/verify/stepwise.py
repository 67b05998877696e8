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

In the engine, a verified request is *driven* (:mod:`dlm.engine.drivers`): each engine step, its drafts are extra
rows of the step's ragged forward (full canvases, no cache), next to whatever else the engine runs, and the
verification above happens after that forward. A request's first step only computes the logits of its canvas
(the reference's first forward): it commits nothing.

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

Statistics (``GenerationOutput.stats``, summed over requests): ``row_rounds`` (rounds that committed),
``accepted_tokens``, ``drafted_tokens``, ``block_efficiency`` (tokens committed per round), ``draft_rows`` (model
rows evaluated, i.e. the compute, CFG copies included), ``nfe_reference`` (the reference's NFE: one forward per
committed token). The trace's ``commit_step`` is the step in which a position was committed and ``block_steps``
the steps per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import GenerationConfig
from ..engine.drivers import Driver
from ..engine.pack import RowPlan
from ..engine.stops import Answers, stop_rules
from ..errors import ConfigError
from ..sampling import compute_candidates
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

    def driver(self, lm) -> "StepwiseDriver":
        return StepwiseDriver(self.params)


@dataclass
class _Round:
    """One request's drafts of this step."""

    x: torch.Tensor  # (K, L) draft canvases after the reference's stopping rules
    commit: torch.Tensor  # (K, bl) block columns each draft commits
    order: torch.Tensor  # (bl,) the reference's ranking of the block's columns
    terminal: torch.Tensor  # (K,) bool: the draft is a finished answer
    run: list[int]  # drafts fed to the model this step (the others are terminal or after a terminal one)
    region_end: int  # canvas end of the logits each run draft gets (the block, or the next block too)


class StepwiseDriver(Driver):
    """Runs stepwise-verified requests (state per request in ``request.driver_state``)."""

    def __init__(self, params: StepwiseVerifier.Params):
        self.params = params

    def plan(self, core, reqs) -> list[list[RowPlan]]:
        return [self._plan(core, r) for r in reqs]

    def process(self, core, reqs, logits) -> list[tuple[bool, Any]]:
        return [self._process(core, r, rows) for r, rows in zip(reqs, logits)]

    # ----------------------------------------------------------------- one request
    def _state(self, r) -> dict:
        if r.driver_state is None:
            r.driver_state = {"have": False, "K": self.params.drafts, "stats": dict.fromkeys(
                ("row_rounds", "accepted_tokens", "drafted_tokens", "draft_rows", "nfe_reference"), 0.0)}
        return r.driver_state

    def _plan(self, core, r) -> list[RowPlan]:
        st = self._state(r)
        shift = core.lm.logits_shift
        canvas = core.buf.tokens[r.slots[0], : r.layout.length]
        bs, be = r.block_span()
        if not st["have"]:  # the reference's first forward: the logits of the canvas as it is
            st["round"] = None
            return [RowPlan.draft(r, canvas.clone(), bs - shift, be - shift)]
        rnd = self._drafts(core, r, canvas, st)
        st["round"] = rnd
        return [RowPlan.draft(r, rnd.x[k], bs - shift, rnd.region_end - shift) for k in rnd.run]

    def _drafts(self, core, r, canvas, st) -> _Round:
        """Draft k commits the k first columns of the reference's ranking with their greedy tokens."""
        bs, be = r.block_span()
        bl = be - bs
        masked = canvas[bs:be] == core.mask_id
        order = stepwise_order(st["conf"].unsqueeze(0), masked.unsqueeze(0))[0]
        K = min(st["K"], int(masked.sum()))
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(bl, device=order.device))
        k = torch.arange(1, K + 1, device=order.device).unsqueeze(1)
        commit = masked.unsqueeze(0) & (rank.unsqueeze(0) < k)  # (K, bl)
        x = canvas.unsqueeze(0).repeat(K, 1)
        x[:, bs:be] = torch.where(commit, st["tok"].unsqueeze(0), x[:, bs:be])
        x, terminal = self._stop(core, r, x)
        term = terminal.tolist()
        first_terminal = term.index(True) if True in term else K
        run = list(range(min(first_terminal, K)))
        completes = ~(x[:, bs:be] == core.mask_id).any(1)
        nxt = r.block + 1 < len(r.layout.blocks)
        region_end = r.layout.blocks[r.block + 1][1] if nxt and run and bool(completes[run].any()) else be
        return _Round(x, commit, order, terminal, run, region_end)

    @staticmethod
    def _stop(core, r, x: torch.Tensor):
        """The reference's stopping rules (stop-at-EOS) on draft canvases x (K, L): (x, terminal (K,))."""
        P, G, K = r.layout.prompt_len, r.layout.gen_length, x.shape[0]
        dev = x.device
        ans = Answers(x[:, P : P + G], torch.full((K,), G, device=dev),
                      torch.tensor([list(r.stop_ids)] * K, device=dev),
                      torch.full((K,), r.config.stop_at_eos, device=dev), torch.zeros(K, dtype=torch.bool, device=dev),
                      torch.full((K,), float("inf"), device=dev))
        tokens, _, _, done, _ = stop_rules(ans, core.mask_id, core.eos_id)
        x = x.clone()
        x[:, P : P + G] = tokens
        return x, done

    def _candidates(self, core, r, logits):
        c = r.config
        return compute_candidates(logits.unsqueeze(0), mode="gumbel", ban_ids=(core.eos_id,) if c.logits_eos_inf else (),
                                  low_confidence_ids=r.stop_ids if c.confidence_eos_eot_inf else (),
                                  never_ids=(core.mask_id,))

    def _process(self, core, r, rows: list[torch.Tensor]) -> tuple[bool, Any]:
        st = r.driver_state
        if rows and bool(torch.isnan(torch.stack([t.amax() for t in rows])).any()):
            from ..errors import GenerationError

            return True, GenerationError(f"the model produced NaN logits for request {r.id}; check the weights "
                                         "and the dtype (float16 overflows are a common cause)")
        st["stats"]["draft_rows"] += len(rows) * r.copies
        rnd = st["round"]
        if rnd is None:  # the seed forward: keep the logits, commit nothing
            c = self._candidates(core, r, rows[0])
            st["tok"], st["conf"], st["have"] = c.tokens[0], c.confidence[0].float(), True
            return False, None
        bs, be = r.block_span()
        bl = be - bs
        cands = [self._candidates(core, r, t) for t in rows]
        a = 1
        for k, c in zip(rnd.run, cands):  # does the reference, from draft k+1, commit the drafted column k+2?
            if k + 1 >= rnd.x.shape[0]:
                break
            allowed = (rnd.x[k, bs:be] == core.mask_id).unsqueeze(0)
            pick = select_top(c.confidence[:, :bl], allowed, torch.ones(1, dtype=torch.long, device=allowed.device))
            want = int(rnd.order[k + 1])
            if not (bool(pick[0, want]) and int(c.tokens[0, want]) == int(st["tok"][want])):
                break
            a += 1
        return self._accept(core, r, st, rnd, cands, a)

    def _accept(self, core, r, st, rnd: _Round, cands, a: int) -> tuple[bool, Any]:
        """Move the request to its longest accepted draft and keep that draft's logits."""
        bs, be = r.block_span()
        bl = be - bs
        slot, L = r.slots[0], r.layout.length
        core.buf.tokens[slot, :L] = rnd.x[a - 1]
        cs = core.buf.commit_step[slot, bs:be]
        core.buf.commit_step[slot, bs:be] = torch.where(rnd.commit[a - 1], torch.full_like(cs, r.steps), cs)
        stats = st["stats"]
        stats["row_rounds"] += 1
        stats["accepted_tokens"] += a
        stats["drafted_tokens"] += rnd.x.shape[0]
        stats["nfe_reference"] += a * r.copies
        if self.params.adaptive:
            K = rnd.x.shape[0]
            st["K"] = min(2 * st["K"], self.params.max_drafts) if a == K and K == st["K"] else max(2, a + 1)
        if bool(rnd.terminal[a - 1]):
            r.block_steps.append(r.block_step + 1)
            return True, None
        c = cands[rnd.run.index(a - 1)]
        if bool((rnd.x[a - 1, bs:be] == core.mask_id).any()):
            st["tok"], st["conf"] = c.tokens[0, :bl], c.confidence[0, :bl].float()
            return False, None
        # the block is complete: the same forward gave the next block's logits
        r.block_steps.append(r.block_step + 1)
        r.block, r.block_step = r.block + 1, -1  # the engine counts this step after the driver
        nbl = r.block_span()[1] - r.block_span()[0]
        st["tok"], st["conf"] = c.tokens[0, bl : bl + nbl], c.confidence[0, bl : bl + nbl].float()
        return False, None

    def stats(self, r) -> dict[str, float]:
        s = dict(self._state(r)["stats"])
        s["block_efficiency"] = s["accepted_tokens"] / max(1.0, s["row_rounds"])
        return s
