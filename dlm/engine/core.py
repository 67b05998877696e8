"""The engine: requests that advance on their own, one ragged forward per step.

:meth:`EngineCore.step` is a list of named phases::

    admit     queued requests take free slots of the key/value pool (first come, first served)
    plan      each running request's cache policy says what its forward feeds
    forward   ONE ragged forward over every running request (rows of different blocks and lengths)
    sample    logits -> candidate tokens and confidences, each request from its own generator
    select    schedulers decide (one call per scheduler configuration) and the commits are written
    stop      end-of-text prediction, stop-at-EOS, answers complete
    emit      per request: advance its block, finish it or fail it, and report a StepEvent

The engine synchronises with the device once per step (to learn which requests finished); with its lookahead
(:mod:`dlm.engine.lookahead`, on by default on CUDA) it launches the next step's forward just before, when that
forward is certain, so that the host's work between steps runs while the GPU computes. A request's answer
depends only on the request: its own config, generator, scheduler state and cache schedule; the model's
numerics are the only thing it shares with the others, and they are made batch-invariant where the device
allows it (see :mod:`dlm.engine.numerics`).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Sequence

import torch

from ..cache.base import CacheContext
from ..cache.store import KVPool, PoolShape
from ..errors import ConfigError, DlmError, GenerationError, SchedulerError
from ..models.ragged import RaggedAttention, eager_forward
from ..models.rows import ranges, runs
from ..models.transfer import to_device
from ..outputs import GenerationOutput, StepEvent, StepTrace
from ..sampling import Draws, candidates_of_rows
from .buffers import SlotBuffers
from .lookahead import Ahead, Lookahead, block_mask_count
from .pack import SHAPE_STEP, PackCache, Packed, host_plan, step_info
from .request import Request, Status
from .select import BAD_EDIT, EMPTY, FINISH_WITHOUT_REGION, HELD_TOO_LONG, OUTSIDE, GroupCommit, decide, group_key
from .stops import apply_stops


class EngineCore(Lookahead):
    """Runs requests (see the module doc). Built by :class:`dlm.Engine`, which also prepares the requests.

    Args:
        lm: the :class:`~dlm.api.DiffusionLM`.
        max_rows: slots of the key/value pool (model rows that can run at once; a request with guidance uses 2).
        slot_len: positions of a slot (the longest canvas a request may have).
        attention: ragged attention backend, ``"loop"`` or ``"padded"``.
        pad_rows: pad the packed forward to a minimum number of rows (batch invariance of CPU matrix products).
        lookahead: launch the next step's forward before this step's results reach the host, when it is certain
            (:mod:`dlm.engine.lookahead`).
    """

    def __init__(self, lm, max_rows: int, slot_len: int, attention: str, pad_rows: bool, graphs=None,
                 lookahead: bool = False):
        self.lm = lm
        self.lookahead = lookahead
        self.ahead: Ahead | None = None  # the forward launched for the next step
        self.lookahead_used = self.lookahead_dropped = 0  # statistics: launched forwards used / dropped
        self.arrived = False  # a request was submitted since the last step (the lookahead waits for quiet)
        self.graphs = graphs  # a StepGraphs replaying repeated step layouts, or None
        self.batch_invariant = pad_rows  # set by build(); on a CPU the padding is what invariance needs
        self.tiled = False  # GPU batch invariance: tiled dense operations, per-request candidates and decisions
        self.device = lm.device
        self.attention = attention
        self.pad_rows = pad_rows
        model = lm.model
        devices = [next(layer.parameters()).device for layer in model.layers]
        shape = PoolShape(len(model.layers), max_rows, slot_len, model.kv_heads, lm.arch.head_dim)
        self.pool = KVPool(shape, lm.dtype, devices)
        self.built_for = (lm.dtype, lm.device)  # the pool's dtype and device: the model's, while it keeps them
        self.buf = SlotBuffers(max_rows, slot_len, self.device)
        self.queue: deque[Request] = deque()
        self.running: list[Request] = []
        self.packs = PackCache()
        self.steps = 0
        self.mask_id, self.eos_id = lm.ids.mask_id, lm.ids.eos_id

    @classmethod
    def build(cls, lm, max_rows: int, slot_len: int, attention: str = "auto",
              batch_invariant: bool | None = None, graphs=None, lookahead: bool | None = None) -> "EngineCore":
        """An engine with the device's defaults: batch-invariant numerics on a CPU (almost free there), the
        ``loop`` attention where invariance is asked for and ``padded`` otherwise, CUDA graphs when the model
        was loaded with ``cuda_graphs=True`` (``graphs``: a :class:`~dlm.engine.graphs.StepGraphs` to use
        instead), the lookahead on CUDA (where the host and the GPU run side by side)."""
        cpu = lm.device.type == "cpu"
        invariant = cpu if batch_invariant is None else bool(batch_invariant)
        if attention == "auto":
            attention = "loop" if invariant else "padded"
        if graphs is None and getattr(lm, "cuda_graphs", False) and lm.device.type == "cuda":
            from .graphs import StepGraphs

            graphs = StepGraphs()
        core = cls(lm, max_rows, slot_len, attention, pad_rows=cpu, graphs=None if invariant and not cpu else graphs,
                   lookahead=lm.device.type == "cuda" if lookahead is None else bool(lookahead))
        core.batch_invariant = invariant
        core.tiled = invariant and not cpu
        return core

    @property
    def shape_step(self) -> int:
        """Steps' data-dependent sizes are padded to multiples of this: repeated shapes for CUDA graphs."""
        return SHAPE_STEP if self.graphs is not None else 1

    @property
    def slot_len(self) -> int:
        return self.pool.shape.slot_len

    @property
    def max_rows(self) -> int:
        return self.pool.shape.num_slots

    # ----------------------------------------------------------------- requests in and out
    def submit(self, request: Request) -> None:
        if request.layout.length > self.slot_len:
            raise ConfigError(f"the request needs {request.layout.length} canvas positions (prompt + gen_length) "
                              f"but a slot of this engine holds {self.slot_len}; raise max_tokens / lower max_rows")
        if request.copies > self.max_rows:
            raise ConfigError(f"the request needs {request.copies} rows (classifier-free guidance) but the engine "
                              f"has max_rows={self.max_rows}")
        self.queue.append(request)
        self.arrived = True

    def cancel(self, request: Request) -> None:
        """Cancel a queued request now, a running one at the start of the next step (its slots are freed)."""
        if request.status == Status.QUEUED and request in self.queue:
            self.queue.remove(request)
            self._end(request, Status.CANCELLED)
        elif request.status == Status.RUNNING:
            request.cancel_requested = True

    def _cancel_requested(self) -> None:
        for r in [r for r in self.running if r.cancel_requested]:
            self._end(r, Status.CANCELLED)

    def _admit(self) -> None:
        self._cancel_requested()
        while self.queue and self.pool.free_slots >= self.queue[0].copies:
            r = self.queue.popleft()
            self._start(r, self.pool.allocate(r.copies))

    def _start(self, r: Request, slots: list[int]) -> None:
        r.slots = slots
        canvas = torch.tensor(r.prompt_ids + [self.mask_id] * (r.layout.length - r.layout.prompt_len),
                              dtype=torch.long)
        copies = [canvas]
        if r.copies == 2:  # the unconditional copy: the prompt replaced by masks
            copies.append(canvas.clone())
            copies[1][: r.layout.prompt_len] = self.mask_id
        for s, c in zip(slots, copies):
            c = to_device(c, self.device)  # pinned: the host does not wait for the running forward
            if r.borrowed:  # keep the owner's commit steps
                self.buf.tokens[s, : c.numel()] = c
            else:
                self.buf.reset(s, c)
        r.length = r.layout.length
        r.block_mask_count = block_mask_count(canvas, r, 0)
        r.answer_tokens = canvas[r.layout.prompt_len : r.layout.prompt_len + r.layout.gen_length]
        r.policy.setup(CacheContext(r.layout.length, r.layout.prompt_len, self.lm.logits_shift, self.shape_step))
        r.policy.begin_block(*r.block_span())
        r.status, r.t_start = Status.RUNNING, time.perf_counter()
        self.running.append(r)

    def start_borrowed(self, r: Request, slots: list[int]) -> None:
        """Run ``r`` in ``slots`` that another request holds (a verifier's multi-step draft), from the next step;
        it reports no events and leaves the slots to their owner when it ends."""
        r.borrowed = True
        self._start(r, list(slots))

    # ----------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self) -> list[StepEvent]:
        """Admit what fits, then ONE forward over every running request; returns their events."""
        if (self.lm.dtype, self.lm.device) != self.built_for:
            raise ConfigError(f"the model is now {self.lm.dtype} on {self.lm.device}, but this engine was built for "
                              f"{self.built_for[0]} on {self.built_for[1]} (its key/value storage); build a new "
                              "dlm.Engine after converting the model")
        launched = self._take_ahead()
        if launched is not None:
            packed, logits = launched
            plain, driven = list(self.running), {}
        else:
            self._admit()
            if not self.running:
                return []
            plain, driven, packed, logits = self._plan_and_forward()
        outcomes, flags = {}, None
        if plain:
            nan = self._sample(packed, logits)
            groups = self._select(plain)
            stop = apply_stops(plain, self.buf, self.mask_id, self.eos_id, self._deferred(plain, groups))
            flags = self._flags(plain, groups, stop, nan)
        for driver, reqs in driven.items():
            outcomes.update(zip(map(id, reqs), driver.process(self, reqs, _driver_logits(packed, logits, reqs))))
        self.steps += 1
        reqs = plain + [r for rs in driven.values() for r in rs]
        pending = self._queue_transfer(reqs, flags)
        places = self._may_look_ahead(plain, driven)
        if places is not None:
            self.ahead = self._launch_ahead(plain, places)
        self.arrived = False
        events, host_flags = self._read_transfer(reqs, pending)
        events = self._emit(reqs, [host_flags[i] if i < len(plain) else outcomes[id(r)] for i, r in enumerate(reqs)],
                            events)
        if self.ahead is not None and not self.ahead.live():  # every request it feeds has ended
            self.ahead = None
        return events

    def _plan_and_forward(self):
        """The step's plans (the plain requests' from their policies, the driven ones' from their drivers), packed
        into one forward, launched. Returns (plain requests, driven requests by driver, packed, logits)."""
        plain = [r for r in self.running if r.driver is None]
        driven: dict[Any, list[Request]] = {}
        for r in self.running:
            if r.driver is not None:
                driven.setdefault(r.driver, []).append(r)
        plans = []
        for r in plain:
            row, plan = self._plan(r)
            r.policy.count(plan)
            plans.append(row)
        for driver, reqs in driven.items():
            per_request = driver.plan(self, reqs)
            for r, rows in zip(reqs, per_request):
                r.fed_this_step = bool(rows)
            plans += [p for rows in per_request for p in rows]
        packed = self.packs.pack(plans, self.pad_rows, self.shape_step) if plans else None
        logits = self._forward(packed) if plans else None  # no rows: every driven request finishes from drafts
        return plain, driven, packed, logits

    def _plan(self, r: Request):
        """(RowPlan, the policy's Plan) of the request's step."""
        info = step_info(r, self.buf.tokens, self.buf.committed, self.buf.cand_confidence, self.mask_id)
        plan = r.policy.plan(info)
        return host_plan(r, plan, self.lm.logits_shift), plan

    def _forward(self, p: Packed) -> torch.Tensor:
        """(Nc, V) logits of every candidate position (guidance applied)."""
        dev = self.device
        slot, position = p.on("slot", dev), p.on("position", dev)
        ids = self.buf.tokens[slot, position].unsqueeze(0)
        if p.explicit_ids is not None:  # drafts feed their own canvases
            ids[0].index_copy_(0, p.on("explicit_index", dev), p.on("explicit_ids", dev))
        index = p.on("logits_index", dev).unsqueeze(0)
        if self.tiled:  # batch-invariant numerics on a GPU (see dlm.engine.numerics)
            from .numerics import invariant_forward

            with invariant_forward(self.lm.model):
                attention = RaggedAttention(p.rows, self.pool, self.attention)
                logits = self.lm.model(ids, position.unsqueeze(0), attention=attention, logits_index=index)[0]
        elif self.graphs is not None:
            logits = self.graphs.forward(self.lm.model, self.pool, self.attention, p.rows, ids,
                                         position.unsqueeze(0), index)
        else:
            logits = eager_forward(self.lm.model, self.pool, self.attention, p.rows, ids, position.unsqueeze(0), index)
        if not bool((p.cfg_scale > 0).any()):  # the conditional logits are the first ones, in order
            return logits[: p.cond.numel()]
        cond = logits[p.on("cond", dev)]
        uncond = logits[p.on("uncond", dev)]
        w = p.on("cfg_scale", dev).to(logits.dtype).unsqueeze(1)
        mixed = uncond + (w + 1) * (cond - uncond)
        # ids outside the vocabulary are -inf in both; keep them -inf instead of inf - inf = nan
        mixed = torch.where(torch.isneginf(cond) & torch.isneginf(uncond), cond, mixed)
        return torch.where(w > 0, mixed, cond)

    def _sample(self, p: Packed, logits: torch.Tensor) -> torch.Tensor:
        """Candidates of every request into the slot buffers; returns (R,) bool: the request's logits had NaN."""
        dev = self.device
        # (a launched-ahead forward may still feed requests that ended at the step before: skipped)
        segments = [(plan.request, a, n) for plan, a, n in p.segments
                    if plan.request.driver is None and plan.request.status == Status.RUNNING]
        groups: dict[tuple, list[tuple[Request, int, int]]] = {}
        for seg in segments:  # requests with the same sampling settings share the call (each its own, if tiled)
            groups.setdefault(_sampling_key(seg[0]) + ((seg[0].id,) if self.tiled else ()), []).append(seg)
        fused = self.lm.model.ops.fused  # the fused kernels include the temperature-0 candidates pass
        for segs in groups.values():
            r0 = segs[0][0]
            index, cand_slot, cand_col = _candidate_rows(p, segs, dev)
            c = r0.config
            cand = candidates_of_rows(
                logits, index, fused=fused, mode=r0.mode, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                generator=Draws([(r.generator, n) for r, _, n in segs]),
                measures=set().union(*(r.measures for r, _, _ in segs)),
                ban_ids=(self.eos_id,) if c.logits_eos_inf else (),
                low_confidence_ids=r0.stop_ids if c.confidence_eos_eot_inf else (), never_ids=(self.mask_id,))
            self.buf.store_candidates(cand_slot, cand_col, cand)
        index, _, _ = _candidate_rows(p, segments, dev)
        bad = torch.isnan(logits.amax(-1)[index]).long()  # (reducing first: no copy of the logits)
        seg_of = p.derived(("segment of", str(dev), _spans(segments)), lambda: to_device(
            runs(list(range(len(segments))), [n for _, _, n in segments]), dev))
        return torch.zeros(len(segments), dtype=torch.long, device=dev).index_add_(0, seg_of, bad) > 0

    def _select(self, reqs: list[Request]) -> list[GroupCommit]:
        groups: dict[tuple, list[Request]] = {}
        for r in reqs:  # one scheduler call per configuration and width (per request, if tiled)
            groups.setdefault(group_key(r) + ((r.id,) if self.tiled else ()), []).append(r)
        out = []
        for g in groups.values():
            try:
                out.append(decide(g, self.buf, self.mask_id))
            except Exception as exc:  # noqa: BLE001 - a broken scheduler fails its requests, not the engine
                out.append(self._broken(g, exc))
        return out

    def _broken(self, reqs: list[Request], exc: Exception) -> GroupCommit:
        """The requests of a scheduler call that raised: nothing committed, each failed with the error."""
        name = reqs[0].scheduler.name
        err = exc if isinstance(exc, DlmError) else SchedulerError(
            f"scheduler {name!r} raised {type(exc).__name__}: {exc}")
        if err is not exc:
            err.__cause__ = exc
        for r in reqs:
            r.pending_error = err
        B, dev = len(reqs), self.device
        zeros = torch.zeros(B, dtype=torch.long, device=dev)
        no = torch.zeros(B, dtype=torch.bool, device=dev)
        return GroupCommit(reqs, zeros, zeros, torch.zeros(B, 1, dtype=torch.bool, device=dev), no, zeros, no, no)

    def _deferred(self, reqs, groups: list[GroupCommit]) -> torch.Tensor | None:
        """(R,) bool: requests of editing schedulers whose block is still open (their stop-at-EOS waits)."""
        if not any(r.scheduler.edits for r in reqs):
            return None
        return self._gather(reqs, groups, "open", torch.bool) & to_device([r.scheduler.edits for r in reqs],
                                                                           self.device)

    def _gather(self, reqs, groups: list[GroupCommit], field: str, dtype) -> torch.Tensor:
        """A per-row field of the scheduler calls, in the order of ``reqs``."""
        if len(groups) == 1 and groups[0].requests == reqs:  # one call over every request, in order
            return getattr(groups[0], field).to(dtype)
        order = {id(r): i for i, r in enumerate(reqs)}
        out = torch.zeros(len(reqs), dtype=dtype, device=self.device)
        for g in groups:
            out[to_device([order[id(r)] for r in g.requests], self.device)] = getattr(g, field)
        return out

    def _flags(self, reqs, groups: list[GroupCommit], stop, nan) -> torch.Tensor:
        """(R, 6) long on the device: per request done, first mask column, length, error code, NaN, held."""
        error = self._gather(reqs, groups, "error", torch.long)
        done = stop.done | self._gather(reqs, groups, "finish", torch.bool)
        hold = self._gather(reqs, groups, "hold", torch.bool)
        return torch.stack([done.long(), stop.first_mask, stop.length, error, nan.long(), hold.long()], 1)

    def _queue_transfer(self, reqs: list[Request], flags: torch.Tensor | None):
        """The step's ONE transfer to the host, queued: every request's answer and what this step committed (for
        the events), with the plain requests' flags. Returns what :meth:`_read_transfer` waits for."""
        dev = self.device
        Gmax = max(r.layout.gen_length for r in reqs)
        meta = to_device([[r.slots[0], r.layout.prompt_len, r.steps] for r in reqs], dev, torch.long)
        pos = meta[:, 1:2] + torch.arange(Gmax, device=dev)
        rows = meta[:, :1]
        parts = [self.buf.tokens[rows, pos], (self.buf.commit_step[rows, pos] == meta[:, 2:3]).long()]
        if flags is not None:
            parts.append(torch.cat([flags, flags.new_zeros(len(reqs) - flags.shape[0], flags.shape[1])]))
        joined = torch.cat(parts, 1)
        if joined.device.type != "cuda":
            return joined.cpu(), None
        host = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=True)
        host.copy_(joined, non_blocking=True)  # (on the stream of the engine's device, not the thread's current one)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(joined.device))
        return host, done

    def _read_transfer(self, reqs: list[Request], pending):
        """Wait for the step's transfer (the step's one synchronisation); returns (events, flags as lists)."""
        host, done = pending
        if done is not None:
            done.synchronize()
            host = host.clone()  # events keep pageable memory; the pinned buffer goes back to be reused
        Gmax = max(r.layout.gen_length for r in reqs)
        tokens, committed = host[:, :Gmax].unbind(0), host[:, Gmax : 2 * Gmax].bool().unbind(0)  # rows: views
        events = []
        for i, r in enumerate(reqs):
            G = r.layout.gen_length
            t, c = (tokens[i], committed[i]) if G == Gmax else (tokens[i][:G], committed[i][:G])
            events.append(StepEvent(request_id=r.id, step=r.steps + 1, block=r.block, committed=c, tokens=t,
                                    done=False, tag=r.tag, request=r))
        return events, host[:, 2 * Gmax :].tolist()

    # ----------------------------------------------------------------- emit
    def _emit(self, reqs: list[Request], flags: list, events: list[StepEvent]) -> list[StepEvent]:
        now = time.perf_counter()
        for r, flag, ev in zip(reqs, flags, events):
            r.steps += 1
            r.forwards += 1 if r.driver is None or r.fed_this_step else 0
            r.block_step += 1
            r.t_first = r.t_first or now
            ev.step = r.steps
            if r.driver is not None:
                self._end_driven(r, *flag)
                ev.done = r.done
                continue
            done, first_mask, length, error, nan, hold = flag
            if nan:
                self._fail(r, GenerationError(f"the model produced NaN logits for request {r.id} at its step "
                                              f"{r.steps}; check the weights and the dtype (float16 overflows are "
                                              "a common cause)"))
            elif r.pending_error is not None:
                self._fail(r, r.pending_error)
            elif error:
                self._fail(r, _scheduler_error(r, error))
            elif done:
                r.block_steps.append(r.block_step)
                self._end(r, Status.DONE)
            else:
                r.length = length
                r.answer_tokens = ev.tokens
                self._advance(r, r.layout.prompt_len + first_mask, bool(hold))
                if r.block_step == 0:  # a block starts: its masks, from the answer just transferred
                    r.block_mask_count = block_mask_count(ev.tokens, r, r.layout.prompt_len)
            ev.done = r.done
        return [ev for ev, r in zip(events, reqs) if not r.borrowed]

    def _end_driven(self, r: Request, done: bool, error: BaseException | None) -> None:
        if r.pending_error is not None or error is not None:
            self._fail(r, r.pending_error or error)
        elif done:
            self._end(r, Status.DONE)

    def _advance(self, r: Request, first_mask_pos: int, hold: bool = False) -> None:
        """Move to the block of the first remaining mask once the active block has none (and is not held)."""
        if first_mask_pos < r.block_span()[1]:
            return
        if hold:
            r.held_steps += 1
            return
        r.held_steps = 0
        r.block_steps.append(r.block_step)
        r.block = r.layout.block_of(first_mask_pos)
        r.block_step = 0
        r.needs_init = True
        r.policy.begin_block(*r.block_span())

    # ----------------------------------------------------------------- endings
    def _fail(self, r: Request, error: BaseException) -> None:
        r.error = error
        self._end(r, Status.FAILED)

    def _end(self, r: Request, status: Status) -> None:
        r.status = status
        r.t_end = time.perf_counter()
        r.row_plan = None
        if r.slots:
            r.output = self._output(r)
            if not r.borrowed:
                self.pool.release(r.slots)
            r.slots = []
        if r in self.running:
            self.running.remove(r)

    def _output(self, r: Request) -> GenerationOutput:
        s, P, G = r.slots[0], r.layout.prompt_len, r.layout.gen_length
        # copies: on a CPU .cpu() would return views of the slot, which the next request overwrites
        seq = self.buf.tokens[s, P : P + G].unsqueeze(0).to("cpu", copy=True)
        texts = None
        tok = self.lm.tokenizer
        if tok is not None:
            row = seq[0].tolist()
            cut = next((i for i, t in enumerate(row) if t in r.stop_ids), len(row))
            texts = [tok.decode([t for t in row[:cut] if t != self.mask_id], skip_special_tokens=True)]
        trace = None
        if r.config.return_trace:
            trace = StepTrace(self.buf.commit_step[s, P : P + G].unsqueeze(0).to("cpu", copy=True),
                              [list(r.block_steps)])
        start = r.t_start or r.t_end
        timings = {"total": r.t_end - r.t_submit, "queued": start - r.t_submit, "decode": r.t_end - start}
        stats = {"fed_positions": float(r.policy.fed_positions), "forwards": float(r.policy.forwards)}
        if r.driver is not None:
            stats = {"forwards": float(r.forwards), **r.driver.stats(r)}
        return GenerationOutput(sequences=seq, prompt_ids=[list(r.prompt_ids)], texts=texts,
                                nfe=torch.tensor([r.nfe]), steps=r.steps, timings=timings, trace=trace, stats=stats)


def _driver_logits(p: Packed, logits: torch.Tensor, reqs: list[Request]) -> list[list[torch.Tensor]]:
    """Per driven request, the (n, V) logits of each of its rows, in the order its driver planned them."""
    out = {id(r): [] for r in reqs}
    for plan, a, n in (p.segments if p is not None else []):
        if id(plan.request) in out:
            out[id(plan.request)].append(logits[a : a + n])
    return [out[id(r)] for r in reqs]


def _spans(segments) -> tuple:
    return tuple((a, n) for _, a, n in segments)


def _candidate_rows(p: Packed, segments, dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits rows of ``segments`` (request, first, count) and where their candidates go (slot, column)."""
    def build():
        index = to_device(ranges([a for _, a, _ in segments], [n for _, _, n in segments]), dev)
        return index, p.on("cand_slot", dev)[index], p.on("cand_col", dev)[index]

    return p.derived(("candidates", str(dev), _spans(segments)), build)


def _sampling_key(r: Request) -> tuple:
    c = r.config
    return (r.mode, c.temperature, c.top_k, c.top_p, c.logits_eos_inf, c.confidence_eos_eot_inf,
            r.stop_ids if c.confidence_eos_eot_inf else ())


def _scheduler_error(r: Request, code: int) -> SchedulerError:
    name = r.scheduler.name
    b = r.block
    if code == OUTSIDE:
        return SchedulerError(f"scheduler {name!r} committed positions outside the active block (request {r.id}, "
                              f"block {b}) without finishing the row")
    if code == EMPTY:
        return SchedulerError(f"scheduler {name!r} committed nothing in request {r.id} at step {r.block_step - 1} "
                              f"of block {b} while masks remain; every step must commit at least one masked "
                              "position of the active block")
    if code == BAD_EDIT:
        return SchedulerError(f"scheduler {name!r} edited a prompt position, a mask or a position outside the active "
                              f"block, or edits/holds without declaring edits = True (request {r.id}, block {b})")
    if code == HELD_TOO_LONG:
        return SchedulerError(f"scheduler {name!r} held block {b} of request {r.id} for more than its "
                              f"max_hold_steps={r.scheduler.max_hold_steps} steps after its last mask")
    assert code == FINISH_WITHOUT_REGION
    return SchedulerError(f"scheduler {name!r} set Decision.finish but is not full_region: finishing commits the "
                          "rest of the answer, so its candidates must cover it; set full_region = True on the "
                          "scheduler class")


def generate_requests(core: EngineCore, requests: Sequence[Request], stream=None) -> None:
    """Submit ``requests`` and step until every one is done; ``stream`` gets every StepEvent."""
    for r in requests:
        core.submit(r)
    while not all(r.done for r in requests):
        events = core.step()
        if stream is not None:
            for ev in events:
                stream(ev)
                if ev.stop_requested and not ev.request.done:
                    core.cancel(ev.request)
