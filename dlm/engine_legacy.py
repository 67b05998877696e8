"""The denoising loop: canvas, blocks, steps, stopping, batching and the stream callback.

One generation (one batch of prompts) goes like this:

1. The canvas is ``prompt + gen_length`` masks per row; prompts of different lengths are left-padded, padding
   is excluded from attention by a key mask, and position ids count only real tokens (cumsum(mask) - 1), so a
   row's tokens do not depend on what else is in its batch.
2. Blocks of ``block_length`` answer positions are decoded left to right. Each step the cache policy says
   which positions the model recomputes; the model returns logits for the candidate region (the block, or the
   rest of the answer for schedulers that need it); :mod:`dlm.sampling` turns them into candidates; the
   scheduler selects positions to commit; the engine commits them, checks the scheduler's invariants, applies
   the stopping rules, informs the cache, records the trace and calls the stream callback.
3. A row stops when its answer is complete: no masks left, or (``stop_at_eos``) a stop token committed with
   every position before it committed, or a scheduler's ``finish``.

The loop synchronises with the device once per step (to learn whether rows are still active and whether an
invariant broke); everything else stays on the device.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import cache as cache_mod
from . import schedulers as sched_mod
from .cache.base import CacheContext, Plan, StepInfo
from .config import GenerationConfig
from .errors import ConfigError, GenerationError, SchedulerError
from .outputs import GenerationOutput, StepEvent, StepTrace
from .sampling import Candidates, compute_candidates
from .schedulers.base import BlockInfo, Decision, StepView, block_only, slice_candidates, slice_view

StreamCallback = Callable[[StepEvent], None]


@dataclass
class Canvas:
    """A left-padded batch of prompts followed by gen_length masks.

    Attributes:
        x: (B, L) token ids; pad id on the left, mask id in the answer.
        valid: (B, L) bool, False on padding.
        position_ids: (B, L) long, cumsum(valid) - 1 (0 on padding).
        answer_start: P, the first answer position (the longest prompt's length).
    """

    x: torch.Tensor
    valid: torch.Tensor
    position_ids: torch.Tensor
    answer_start: int

    @property
    def length(self) -> int:
        return self.x.shape[1]


def build_canvas(prompts: Sequence[Sequence[int]], gen_length: int, mask_id: int, pad_id: int, device) -> Canvas:
    P = max(len(p) for p in prompts)
    B, L = len(prompts), P + gen_length
    x = torch.full((B, L), pad_id, dtype=torch.long)
    valid = torch.zeros((B, L), dtype=torch.bool)
    for r, p in enumerate(prompts):
        if len(p):
            x[r, P - len(p) : P] = torch.tensor(list(p), dtype=torch.long)
        valid[r, P - len(p) :] = True
    x[:, P:] = mask_id
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    return Canvas(x.to(device), valid.to(device), pos.to(device), P)


def check_prompts(prompts: Sequence[Sequence[int]], lm, gen_length: int) -> None:
    if len(prompts) == 0:
        raise ConfigError("the batch of prompts is empty; pass at least one prompt")
    vocab = lm.arch.valid_vocab or lm.arch.vocab_size
    for r, p in enumerate(prompts):
        if lm.logits_shift and len(p) == 0:
            raise ConfigError(
                f"prompt {r} is empty; {lm.model_type} predicts token i from position i-1, so a prompt needs at "
                "least one token (e.g. BOS)"
            )
        bad = [t for t in p if not isinstance(t, int) or t < 0 or t >= vocab]
        if bad:
            raise ConfigError(f"prompt {r} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
        if lm.ids.mask_id in p:
            raise ConfigError(f"prompt {r} contains the mask token id {lm.ids.mask_id}; infilling is not supported")
        if len(p) + gen_length > lm.max_length:
            raise ConfigError(
                f"prompt {r} has {len(p)} tokens; with gen_length={gen_length} the canvas needs "
                f"{len(p) + gen_length} positions but the model's context is {lm.max_length}"
            )


class Generation:
    """The state of one batched generation. :func:`generate` drives it; verifiers reuse its pieces."""

    def __init__(self, lm, prompts: Sequence[Sequence[int]], config: GenerationConfig):
        check_prompts(prompts, lm, config.gen_length)
        self.lm = lm
        self.config = config
        self.device = lm.device
        self.canvas = build_canvas(prompts, config.gen_length, lm.ids.mask_id, lm.ids.pad_id, self.device)
        self.prompts = [list(p) for p in prompts]
        self.B = len(prompts)
        self.P = self.canvas.answer_start
        self.L = self.canvas.length
        self.G = config.gen_length
        self.shift = lm.logits_shift
        self.mask_id = lm.ids.mask_id
        self.eos_id = lm.ids.eos_id
        self.stop_ids = tuple(config.stop_token_ids) if config.stop_token_ids is not None else lm.ids.stop_ids
        self.stop_tensor = torch.tensor(self.stop_ids, device=self.device)
        self.x = self.canvas.x
        self.copies = 2 if config.cfg_scale > 0 else 1
        self.row_end = torch.full((self.B,), self.L, dtype=torch.long, device=self.device)
        self.length = self.L
        self.done = torch.zeros(self.B, dtype=torch.bool, device=self.device)
        self.nfe = torch.zeros(self.B, dtype=torch.long, device=self.device)
        self.steps = 0
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.commit_step = torch.full((self.B, self.G), -1, dtype=torch.int32, device=self.device)
        self.block_steps: list[int] = []
        self.arange_L = torch.arange(self.L, device=self.device)
        self._x_in: torch.Tensor | None = None
        self._pos_in: torch.Tensor | None = None
        self.graphs = None
        if getattr(lm, "cuda_graphs", False) and self.device.type == "cuda":
            from .models.graphs import GraphRunner

            self.graphs = GraphRunner()
        elif getattr(lm, "graph_runner_factory", None) is not None:  # tests: a CPU stand-in for CUDA graphs
            self.graphs = lm.graph_runner_factory()

    # ----------------------------------------------------------------- model calls
    def key_mask(self) -> torch.Tensor | None:
        km = self.canvas.valid & (self.arange_L.unsqueeze(0) < self.row_end.unsqueeze(1))
        if bool(km[:, : self.length].all()):
            return None
        return km.repeat(self.copies, 1)

    def model_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input canvas and positions, (rows, L) tensors that keep their storage for the whole
        generation (so a captured CUDA graph can read them). Under classifier-free guidance the second half is
        the unconditional copy: the prompt replaced by masks."""
        if self.copies == 1:
            return self.x, self.canvas.position_ids
        if self._x_in is None:
            uncond = self.x.clone()
            uncond[:, : self.P][self.canvas.valid[:, : self.P]] = self.mask_id
            self._x_in = torch.cat([self.x, uncond])
            self._pos_in = torch.cat([self.canvas.position_ids, self.canvas.position_ids])
        self._x_in[: self.B].copy_(self.x)
        self._x_in[self.B :, self.P :].copy_(self.x[:, self.P :])
        return self._x_in, self._pos_in

    def forward(self, policy, plan: Plan, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, n, V) for ``plan`` (classifier-free guidance applied)."""
        x, pos = self.model_inputs()
        if self.graphs is not None:
            logits = self.graphs.forward(self.lm.model, policy, plan, x, pos, key_mask, self.length, self.copies)
        else:
            fed, index = plan.fed, plan.logits_index
            if isinstance(fed, slice):
                ids, fpos = x[:, fed], pos[:, fed]
            else:
                fed = fed.repeat(self.copies, 1)
                ids, fpos = x.gather(1, fed), pos.gather(1, fed)
            if not isinstance(index, slice):
                index = index.repeat(self.copies, 1)
            policy.begin_forward(fed, self.length, key_mask)
            logits = self.lm.model(ids, fpos, key_mask=policy.key_mask(), cache=policy, logits_index=index)
        if self.copies == 2:
            cond, uncond = logits.chunk(2)
            w = self.config.cfg_scale
            mixed = uncond + (w + 1) * (cond - uncond)
            # ids outside the vocabulary are -inf in both; keep them -inf instead of inf - inf = nan
            logits = torch.where(torch.isneginf(cond) & torch.isneginf(uncond), cond, mixed)
        return logits

    def candidates(self, logits: torch.Tensor, mode: str, measures) -> Candidates:
        c = self.config
        return compute_candidates(
            logits, mode=mode, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, generator=self.generator,
            measures=measures, ban_ids=(self.eos_id,) if c.logits_eos_inf else (),
            low_confidence_ids=self.stop_ids if c.confidence_eos_eot_inf else (), never_ids=(self.mask_id,),
        )

    def is_stop(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.isin(tokens, self.stop_tensor)

    # ----------------------------------------------------------------- row views (verifiers)
    def rows(self, index: torch.Tensor, x: torch.Tensor | None = None) -> "Generation":
        """A view of this generation over the canvas rows ``index`` (R,) long (a row may appear several times),
        holding the tokens ``x`` (R, L) (default: a copy of those rows).

        The view shares the model, config, generator and the rows' padding and positions; its per-row state
        (done, NFE, row ends, commit steps) is a copy, and its ``x`` is ``x`` itself (not copied), so
        :meth:`forward`, :meth:`candidates` and :meth:`apply_stops` on the view act on ``x`` only. Lossless
        verifiers evaluate several drafts of a row in one batched forward this way (``dlm.verify``).
        """
        view = copy.copy(self)
        x = self.x[index].clone() if x is None else x
        view.canvas = Canvas(x, self.canvas.valid[index], self.canvas.position_ids[index], self.P)
        view.x = x
        view.prompts = [self.prompts[i] for i in index.tolist()]
        view.B = int(index.numel())
        view.row_end = self.row_end[index].clone()
        view.done = self.done[index].clone()
        view.nfe = self.nfe[index].clone()
        view.commit_step = self.commit_step[index].clone()
        view.block_steps = list(self.block_steps)
        view._x_in = view._pos_in = None  # input buffers are sized for this generation's rows
        view.graphs = None  # captured graphs are too
        return view

    # ----------------------------------------------------------------- stopping rules
    def apply_stops(self, cand_region: Candidates | None, region: tuple[int, int]) -> None:
        """EoTP and stop-at-EOS after a step's commits (all on the device)."""
        c = self.config
        ans = self.x[:, self.P :]
        masked = ans == self.mask_id
        stop = self.is_stop(ans) & ~masked
        G = self.G
        cols = torch.arange(G, device=self.device)
        first_stop = torch.where(stop, cols, G).amin(1)  # (B,), G when none
        if c.eotp:
            p = first_stop
            if c.eotp_threshold is not None and cand_region is not None:
                p = torch.minimum(p, self._predicted_end(cand_region, region, masked))
            cut = (p < G) & ~self.done
            after = (cols.unsqueeze(0) > p.unsqueeze(1)) & cut.unsqueeze(1)
            at_p = (cols.unsqueeze(0) == p.unsqueeze(1)) & cut.unsqueeze(1) & masked
            fill = torch.where(at_p, self._predicted_tokens(cand_region, region), self.eos_id)
            ans[after | at_p] = fill[after | at_p]
            self.commit_step.masked_fill_(at_p, self.steps)  # a predicted end is decoded at this step
            self.row_end = torch.where(cut, torch.minimum(self.row_end, self.P + p + 1), self.row_end)
            masked = ans == self.mask_id
            stop = self.is_stop(ans) & ~masked
            first_stop = torch.where(stop, cols, G).amin(1)
        if c.stop_at_eos:
            masks_before = (masked & (cols.unsqueeze(0) < first_stop.unsqueeze(1))).any(1)
            stopped = (first_stop < G) & ~masks_before & ~self.done
            after = (cols.unsqueeze(0) > first_stop.unsqueeze(1)) & stopped.unsqueeze(1)
            ans[after] = self.eos_id
            self.done |= stopped
        self.done |= ~(ans == self.mask_id).any(1)

    def _predicted_tokens(self, cand: Candidates | None, region) -> torch.Tensor:
        out = torch.full((self.B, self.G), self.eos_id, dtype=torch.long, device=self.device)
        if cand is not None:
            rs, re = region
            out[:, rs - self.P : re - self.P] = cand.tokens
        return out

    def _predicted_end(self, cand: Candidates, region, masked: torch.Tensor) -> torch.Tensor:
        """Smallest masked answer position p such that every mask from p on is confidently predicted a stop token
        and no committed token after p is anything but a stop token (a prediction never erases committed text).
        Masks outside the candidate region count as unsure."""
        rs, re = region
        confident = self.is_stop(cand.tokens) & (cand.confidence >= self.config.eotp_threshold)
        sure = torch.zeros_like(masked)
        sure[:, rs - self.P : re - self.P] = confident
        ans = self.x[:, self.P :]
        bad = (masked & ~sure) | (~masked & ~self.is_stop(ans))
        cols = torch.arange(self.G, device=self.device)
        last_bad = torch.where(bad, cols, -1).amax(1)
        ok = masked & sure & (cols.unsqueeze(0) > last_bad.unsqueeze(1))
        return torch.where(ok, cols, self.G).amin(1)

    # ----------------------------------------------------------------- output
    def output(self, t0: float, t_prep: float, stats: dict) -> GenerationOutput:
        seqs = self.x[:, self.P :].clone()
        texts = None
        tok = self.lm.tokenizer
        if tok is not None:
            texts = []
            for row in seqs.tolist():
                cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
                texts.append(tok.decode([t for t in row[:cut] if t != self.mask_id], skip_special_tokens=True))
        trace = StepTrace(self.commit_step.cpu(), list(self.block_steps)) if self.config.return_trace else None
        t1 = time.perf_counter()
        return GenerationOutput(
            sequences=seqs.cpu(), prompt_ids=self.prompts, texts=texts, nfe=self.nfe.cpu(), steps=self.steps,
            timings={"total": t1 - t0, "prepare": t_prep - t0, "decode": t1 - t_prep}, trace=trace, stats=stats,
        )


def _widen(commit: torch.Tensor, cols: slice, width: int) -> torch.Tensor:
    out = torch.zeros(commit.shape[0], width, dtype=torch.bool, device=commit.device)
    out[:, cols] = commit
    return out


@torch.no_grad()
def generate(lm, prompts: Sequence[Sequence[int]], config: GenerationConfig,
             stream: StreamCallback | None = None) -> GenerationOutput:
    """Generate answers for a batch of token-id prompts with ``config``'s scheduler and cache."""
    t0 = time.perf_counter()
    if config.verify is not None:
        from . import verify as verify_mod

        return verify_mod.get(config.verify)(**dict(config.verify_kwargs)).run(lm, prompts, config, stream=stream)
    g = Generation(lm, prompts, config)
    scheduler = sched_mod.create(config.scheduler, dict(config.scheduler_kwargs))
    policy = cache_mod.create(config.cache, dict(config.cache_kwargs))
    mode = scheduler.sampling if config.sampling == "auto" else config.sampling
    measures = set(scheduler.measures)
    arch = lm.arch
    policy.setup(CacheContext(rows=g.B * g.copies, copies=g.copies, canvas_length=g.L, num_layers=arch.num_layers,
                              num_kv_heads=arch.num_kv_heads, head_dim=arch.head_dim, dtype=lm.dtype,
                              device=g.device, answer_start=g.P, logits_shift=g.shift))
    full_region = scheduler.full_region or (config.eotp and config.eotp_threshold is not None)
    t_prep = time.perf_counter()
    bl, spb = config.effective_block_length, config.steps_per_block
    committed_last = torch.zeros(g.B, g.L, dtype=torch.bool, device=g.device)
    stopped = False
    for b in range(config.num_blocks):
        if stopped or bool(g.done.all()):
            break
        g.length = int(g.row_end.max())
        bs = g.P + b * bl
        be = min(bs + bl, g.length)
        if bs >= g.length:
            break
        rs, re = bs, (min(g.P + g.G, g.length) if full_region else be)
        in_block = torch.zeros(re - rs, dtype=torch.bool, device=g.device)
        in_block[: be - bs] = True
        binfo = BlockInfo(index=b, num_blocks=config.num_blocks, start=bs, end=be, region_start=rs, region_end=re,
                          steps=spb, masks=(g.x[:, bs:be] == g.mask_id).sum(1), total_steps=config.effective_steps,
                          canvas_length=g.L, answer_start=g.P)
        narrow = None if (scheduler.full_region or re == be) else binfo.in_block
        sched_block = binfo if narrow is None else block_only(binfo)
        state = scheduler.init_state(sched_block)
        policy.begin_block(bs, be)
        key_mask = g.key_mask()
        cand: Candidates | None = None
        step = 0
        active = ~g.done & (g.x[:, bs:be] == g.mask_id).any(1)
        while bool(active.any()):
            if step > bl:  # each step commits >= 1 block position per active row, so this cannot happen
                raise SchedulerError(f"scheduler {scheduler.name!r} did not finish block {b} in {bl} steps")
            masked = g.x == g.mask_id
            info = StepInfo(step=step, global_step=g.steps, block_start=bs, block_end=be, region_start=rs,
                            region_end=re, masked=masked, committed_last=committed_last, length=g.length,
                            confidence=None if cand is None else cand.confidence)
            plan = policy.plan(info)
            logits = g.forward(policy, plan, key_mask)
            fresh = g.candidates(logits, mode, measures)
            if plan.targets is None:
                cand = fresh
            else:
                cand.scatter_(plan.targets, fresh)
            masked_region = masked[:, rs:re]
            view = StepView(masked=masked_region, in_block=in_block, active=active, step=step,
                            global_step=g.steps, block=binfo, generator=g.generator, row_steps=g.nfe // g.copies)
            if narrow is None:
                decision, state = scheduler.step(cand, view, state)
            else:  # the region is wider than the block only for the engine's EoTP prediction: show the block
                decision, state = scheduler.step(slice_candidates(cand, narrow), slice_view(view, narrow, sched_block),
                                                 state)
                decision = Decision(_widen(decision.commit, narrow, re - rs), decision.finish)
            commit = decision.commit & masked_region & active.unsqueeze(1)
            outside = (commit & ~in_block).any(1)
            if decision.finish is not None:
                finish = decision.finish & active
                if not scheduler.full_region and bool(finish.any()):
                    raise SchedulerError(f"scheduler {scheduler.name!r} set Decision.finish but is not full_region: "
                                         "finishing commits the rest of the answer, so its candidates must cover "
                                         "it; set full_region = True on the scheduler class")
                outside &= ~finish
                commit |= masked_region & finish.unsqueeze(1)
            else:
                finish = None
            empty = active & ~(commit & in_block).any(1) & (masked_region & in_block).any(1)
            if finish is not None:
                empty &= ~finish
            bad_logits = torch.isnan(logits.amax(-1)).any(1) & active
            # write the commits
            region_x = g.x[:, rs:re]
            g.x[:, rs:re] = torch.where(commit, cand.tokens, region_x)
            g.commit_step[:, rs - g.P : re - g.P].masked_fill_(commit, g.steps)
            g.nfe += active.long() * g.copies
            committed_last = torch.zeros_like(committed_last)
            committed_last[:, rs:re] = commit
            g.apply_stops(cand if full_region else None, (rs, re))
            if finish is not None:  # after the stopping rules, so a finished row gets the same EOS fill
                g.done |= finish
            policy.after_step(committed_last)
            if config.eotp:
                key_mask = g.key_mask()
            g.steps += 1
            step += 1
            active = ~g.done & (g.x[:, bs:be] == g.mask_id).any(1)
            flags = torch.stack([outside.any(), empty.any(), bad_logits.any()]).tolist()
            if flags[2]:
                rows = bad_logits.nonzero().squeeze(1).tolist()
                raise GenerationError(f"the model produced NaN logits in row(s) {rows} at step {g.steps}; check the "
                                      "weights and the dtype (float16 overflows are a common cause)")
            if flags[0]:
                rows = outside.nonzero().squeeze(1).tolist()
                raise SchedulerError(f"scheduler {scheduler.name!r} committed positions outside the active block "
                                     f"(rows {rows}, block {b}) without finishing the row")
            if flags[1]:
                rows = empty.nonzero().squeeze(1).tolist()
                raise SchedulerError(f"scheduler {scheduler.name!r} committed nothing in row(s) {rows} at step "
                                     f"{step - 1} of block {b} while masks remain; every step must commit at least "
                                     "one masked position of the active block")
            if stream is not None:
                event = StepEvent(step=g.steps, block=b, committed=committed_last[:, g.P :].clone(),
                                  tokens=g.x[:, g.P :].clone(), done=g.done.clone())
                stream(event)
                if event.stop_requested:
                    stopped = True
                    break
        g.block_steps.append(step)
    stats = {"fed_positions": float(policy.fed_positions), "forwards": float(policy.forwards)}
    return g.output(t0, t_prep, stats)
