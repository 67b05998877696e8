"""The engine driver of ``verify="causal"`` (see :mod:`dlm.verify.causal` for the algorithm).

Per request it keeps the decided tokens (prompt + answer so far), how many of them the causal model has cached,
the draft length and, during a multi-step draft, the diffusion request drafting it. Every engine step, each
request that has a draft ready joins ONE batched causal forward (:mod:`dlm.verify.causal_kv`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.drivers import Driver
from ..engine.pack import RowPlan
from ..errors import ConfigError, GenerationError
from ..models.transfer import to_device
from .causal_kv import CausalKV
from .speculative import speculative_sample


@dataclass
class _State:
    known: list[int]  # prompt + the answer so far
    out: int = 0  # answer tokens decided
    D: int = 8  # draft length (adaptive)
    undraftable: bool = False  # the answer holds a token the drafter cannot read: plain causal steps
    n: int = 0  # tokens drafted this step
    draft: torch.Tensor | None = None
    q: torch.Tensor | None = None
    child: Any = None  # the diffusion request of a multi-step draft
    stats: dict = field(default_factory=lambda: dict.fromkeys(
        ("rounds", "causal_forwards", "diffusion_nfe", "drafted_tokens", "accepted_draft_tokens",
         "emitted_tokens"), 0.0))


class CausalDriver(Driver):
    """Runs ``verify="causal"`` requests (state per request in ``request.driver_state``)."""

    def __init__(self, verifier, model, tokenizer):
        self.verifier, self.params = verifier, verifier.params
        self.model, self.tok = model, tokenizer
        self.device = next(model.parameters()).device
        self.ctx_len = getattr(model.config, "max_position_embeddings", None)
        self.kv: CausalKV | None = None
        self._warpers: dict[tuple, list] = {}

    def check_prompt(self, prompt_ids: list[int], config, name: str = "the prompt") -> None:
        if len(prompt_ids) == 0:
            raise ConfigError(f"{name} is empty; the causal verifier needs at least one token (e.g. BOS)")
        if self.ctx_len is not None and len(prompt_ids) + config.gen_length > self.ctx_len:
            raise ConfigError(f"{name} has {len(prompt_ids)} tokens; with gen_length={config.gen_length} the "
                              f"causal verifier needs {len(prompt_ids) + config.gen_length} positions but its "
                              f"context is {self.ctx_len}")

    # ----------------------------------------------------------------- planning
    def _state(self, core, r) -> _State:
        if r.driver_state is None:
            if self.kv is None:
                margin = self.params.max_draft_length + 16
                self.kv = CausalKV(core.max_rows, core.slot_len + margin, self.device)
            self.kv.reset(r.slots[0])
            r.driver_state = _State(list(r.prompt_ids), D=self.params.draft_length)
            r.causal_stops = set(self.verifier.stop_ids(self.model, self.tok, r.config)) if r.config.stop_at_eos \
                else set()
        return r.driver_state

    def plan(self, core, reqs) -> list[list[RowPlan]]:
        return [self._plan(core, r) for r in reqs]

    def _plan(self, core, r) -> list[RowPlan]:
        st = self._state(core, r)
        if st.child is not None:  # a multi-step draft is running
            return []
        G = r.layout.gen_length
        st.n = 0 if st.undraftable else min(st.D, G - st.out - 1)  # the causal model's own token fills the last
        if st.n > 0 and self.params.draft_steps > 1:
            self._start_draft(core, r, st)
            return []
        if st.n <= 0:
            return []
        shift = core.lm.logits_shift
        ids = torch.tensor(st.known + [core.mask_id] * st.n)  # on the host: the packing moves all drafts at once
        return [RowPlan.draft(r, ids, len(st.known) - shift, len(st.known) + st.n - shift)]

    def _start_draft(self, core, r, st: _State) -> None:
        """A multi-step draft: a diffusion request of n positions after the decided tokens, in r's slots."""
        if not hasattr(self, "_builder"):
            from ..engine.build import RequestBuilder

            self._builder = RequestBuilder(core.lm)
        seed = int(torch.randint(0, 2**62, (1,), generator=r.generator, device=r.generator.device))
        cfg = r.config.replace(gen_length=st.n, block_length=st.n, steps=min(self.params.draft_steps, st.n),
                               stop_at_eos=False, eotp=False, eotp_threshold=None, return_trace=False, seed=seed)
        st.child = self._builder.build(st.known, cfg)
        core.start_borrowed(st.child, r.slots)

    # ----------------------------------------------------------------- processing
    def process(self, core, reqs, logits) -> list[tuple[bool, Any]]:
        """This step's drafts, then ONE causal forward for every request with a draft ready.

        Greedy requests are handled as a batch (one argmax and one transfer for all their drafts, one for all
        their verifications, one write of all their tokens); sampled ones one by one
        (:meth:`_draft`, :meth:`_accept_sampled`), the reference the batched path is tested against."""
        results, drafting, greedy = {}, [], []
        for r, rows in zip(reqs, logits):
            st = r.driver_state
            if st.child is not None:
                if not st.child.done:
                    continue  # still drafting
                if st.child.error is not None:
                    results[id(r)] = (True, st.child.error)
                    continue
                st.draft, st.q = st.child.output.sequences[0].tolist(), None
                st.stats["diffusion_nfe"] += st.child.nfe
                r.forwards += st.child.forwards
                st.child = None
            elif st.n > 0:
                (greedy if r.config.temperature == 0 else drafting).append((r, rows[0]))
                continue
            else:
                st.draft, st.q = [], None
            results[id(r)] = None  # ready
        for r, rows in drafting:
            results[id(r)] = self._nan_error(r) if bool(torch.isnan(rows.amax())) else None
            if results[id(r)] is None:
                st = r.driver_state
                draft, st.q = self._draft(core, r, rows)
                st.draft = draft.tolist()
        results.update(self._greedy_drafts(core, greedy))
        ready = [r for r in reqs if id(r) in results and results[id(r)] is None]
        writes = _Writes()
        if ready:
            results.update(self._verify(core, ready, writes))
        writes.flush(core.buf)
        return [results.get(id(r)) or (False, None) for r in reqs]

    @staticmethod
    def _nan_error(r) -> tuple[bool, Exception]:
        return True, GenerationError(f"the model produced NaN logits for request {r.id}; check the weights and the "
                                     "dtype")

    def _greedy_drafts(self, core, greedy: list) -> dict[int, Any]:
        """Temperature-0 drafts of every request in ``greedy`` ((request, (n, V) logits) pairs): one argmax over
        all their positions and one transfer (tokens and NaN flags)."""
        if not greedy:
            return {}
        rows = _joined([x for _, x in greedy])
        lengths = [x.shape[0] for _, x in greedy]
        eos = [r.config.logits_eos_inf for r, _ in greedy]
        eos_inf = None if not any(eos) else to_device(
            torch.tensor([e for e, n in zip(eos, lengths) for _ in range(n)]), rows.device)
        tokens = self.verifier.greedy_drafts(rows, core.lm, eos_inf)
        nan = torch.isnan(rows.amax(-1))
        host_tokens, host_nan = torch.stack([tokens, nan.long()]).tolist()
        out, at = {}, 0
        for (r, _), n in zip(greedy, lengths):
            st = r.driver_state
            if any(host_nan[at : at + n]):
                out[id(r)] = self._nan_error(r)
            else:
                st.draft, st.q, out[id(r)] = host_tokens[at : at + n], None, None
                st.stats["diffusion_nfe"] += r.copies
            at += n
        return out

    def _draft(self, core, r, logits: torch.Tensor):
        """A sampled draft (n,) and its proposal distributions (n, V) from the drafter's logits (n, V)."""
        q = self.verifier.draft_distribution(logits, core.lm, r.config, r.mode)
        tokens = torch.multinomial(q, 1, generator=r.generator).squeeze(1)
        r.driver_state.stats["diffusion_nfe"] += r.copies
        return tokens, q

    def _verify(self, core, reqs, writes: _Writes) -> dict[int, tuple[bool, Any]]:
        """ONE causal forward for every request in ``reqs``, then each request's acceptance (the greedy ones'
        targets from one argmax and one transfer)."""
        kv = self.kv
        feeds = []
        for r in reqs:
            st = r.driver_state
            feeds.append(st.known[kv.cached[r.slots[0]] :] + st.draft)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        with torch.no_grad():
            logits = kv.forward(self.model, [r.slots[0] for r in reqs], feeds, pad, exact_shapes=core.pad_rows)
        lo = min(r.slots[0] for r in reqs)
        targets = logits.argmax(-1).tolist() if any(r.config.temperature == 0 for r in reqs) else None
        out = {}
        for r, feed in zip(reqs, feeds):
            st = r.driver_state
            n, row = len(st.draft), r.slots[0] - lo
            st.stats["causal_forwards"] += 1
            if r.config.temperature == 0:
                emitted, k = _accept_greedy(st.draft, targets[row][len(feed) - n - 1 : len(feed)])
            else:
                emitted, k = self._accept_sampled(core, r, logits[row, len(feed) - n - 1 : len(feed)])
            slot = r.slots[0]
            kv.keep(slot, kv.cached[slot] + len(feed) - n + k)  # the fed decided tokens + the accepted drafts
            out[id(r)] = self._emit(core, r, emitted, k, writes)
        return out

    def _accept_sampled(self, core, r, logits: torch.Tensor) -> tuple[list[int], int]:
        """Speculative sampling over the target's (n + 1, V) logits: the emitted tokens and accepted drafts."""
        st = r.driver_state
        p = self._target_distribution(r, logits)
        V = max(p.shape[-1], st.q.shape[-1] if st.q is not None else 0)
        p = torch.nn.functional.pad(p, (0, V - p.shape[-1]))
        dev = core.device
        draft = torch.tensor(st.draft, dtype=torch.long, device=dev)
        if st.q is None:  # a multi-step draft: a point mass at each drafted token (see dlm.verify.causal)
            qv = torch.nn.functional.one_hot(draft, V).double()
        else:
            qv = torch.nn.functional.pad(st.q.to(dev), (0, V - st.q.shape[-1]))
        return speculative_sample(p.to(dev), qv.to(dev), draft, r.generator)

    def _target_distribution(self, r, logits: torch.Tensor) -> torch.Tensor:
        """The causal model's sampling distribution (as its ``generate`` would sample), (n + 1, V) float64."""
        c = r.config
        key = (c.top_k, c.top_p)
        if key not in self._warpers:
            from transformers.generation.logits_process import (
                TopKLogitsWarper,
                TopPLogitsWarper,
            )

            w = []
            if c.top_k is not None and c.top_k > 0:
                w.append(TopKLogitsWarper(c.top_k))
            if c.top_p is not None and c.top_p < 1:
                w.append(TopPLogitsWarper(c.top_p))
            self._warpers[key] = w
        p = logits.double() / c.temperature
        for w in self._warpers[key]:
            p = w(None, p)
        return torch.softmax(p, -1)

    def _emit(self, core, r, emitted: list[int], k: int, writes: _Writes) -> tuple[bool, Any]:
        """Append the round's tokens to the answer (canvas and commit steps, written by ``writes``); adapt the
        draft length."""
        st = r.driver_state
        G, P = r.layout.gen_length, r.layout.prompt_len
        cut = next((i for i, t in enumerate(emitted) if t in r.causal_stops), None)
        if cut is not None:
            emitted = emitted[: cut + 1]
        emitted = emitted[: G - st.out]
        slot = r.slots[0]
        writes.add(slot, P + st.out, emitted, r.steps)
        st.known += emitted
        st.out += len(emitted)
        vocab = core.lm.arch.valid_vocab or core.lm.arch.vocab_size
        if any(t == core.mask_id or t >= vocab for t in emitted):
            st.undraftable = True
        s = st.stats
        n = len(st.draft)
        s["rounds"] += 1
        s["drafted_tokens"] += n
        s["accepted_draft_tokens"] += k
        s["emitted_tokens"] += len(emitted)
        if self.params.adaptive:
            st.D = min(st.D + 2, self.params.max_draft_length) if k == n else max(1, st.D - 1)
        finished = cut is not None or st.out >= G
        # the undecided rest of the answer: masks (or EOS once finished), never committed
        writes.add(slot, P + st.out, [core.eos_id if finished else core.mask_id] * (G - st.out), -1)
        if finished:
            r.block_steps.append(r.block_step + 1)
        return finished, None

    def stats(self, r) -> dict[str, float]:
        s = dict(r.driver_state.stats) if r.driver_state is not None else {}
        if s:
            s["row_rounds"], s["accepted_tokens"] = s["rounds"], s["emitted_tokens"]
            s["block_efficiency"] = s["emitted_tokens"] / max(1.0, s["rounds"])
            s["acceptance_rate"] = s["accepted_draft_tokens"] / max(1.0, s["drafted_tokens"])
        return s


def _accept_greedy(draft: list[int], target: list[int]) -> tuple[list[int], int]:
    """Greedy acceptance: the longest prefix of ``draft`` equal to the causal model's argmaxes ``target``
    (len(draft) + 1 of them), then the causal model's own token after it. Returns (emitted, accepted)."""
    k = 0
    while k < len(draft) and draft[k] == target[k]:
        k += 1
    return draft[:k] + [target[k]], k


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)``, as one view when the parts lie one after another in memory (the rows of one logits
    tensor, as the engine hands a step's drafts over), without copying them."""
    first = parts[0]
    step = first.stride(0) if first.dim() > 1 else 1
    end = first.data_ptr()
    for x in parts:
        if x.data_ptr() != end or x.stride() != first.stride() or not x.is_contiguous():
            return torch.cat(parts)
        end += x.shape[0] * step * x.element_size()
    return first.as_strided((sum(x.shape[0] for x in parts), *first.shape[1:]), first.stride())


class _Writes:
    """The canvas writes of one step's rounds (tokens and commit steps at (slot, position)), made at once by
    :meth:`flush`: one transfer and two indexed writes instead of several small ones per request."""

    def __init__(self):
        self.slot, self.pos, self.token, self.step = [], [], [], []

    def add(self, slot: int, start: int, tokens: list[int], step: int) -> None:
        n = len(tokens)
        self.slot += [slot] * n
        self.pos += range(start, start + n)
        self.token += tokens
        self.step += [step] * n

    def flush(self, buf) -> None:
        if not self.slot:
            return
        host = torch.tensor([self.slot, self.pos, self.token, self.step], dtype=torch.long)
        slot, pos, token, step = to_device(host, buf.tokens.device).unbind(0)
        buf.tokens.index_put_((slot, pos), token)
        buf.commit_step.index_put_((slot, pos), step.to(buf.commit_step.dtype))
