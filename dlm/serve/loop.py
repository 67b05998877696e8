"""The engine loop: ONE background thread owns a :class:`dlm.Engine`; the asyncio side talks to it through jobs.

    loop = EngineLoop(engine, metrics)
    loop.start(asyncio.get_running_loop())
    job = loop.submit(prompt_ids, config, wants_steps=True, events=queue)   # from the asyncio thread
                                                                            # (every=N: every Nth step's event)
    request = await job.accepted          # prepared and queued between two steps (or the ConfigError refusing it)
    job, event = await queue.get()        # its StepEvents as (job, event); (job, None) once it has ended
    loop.cancel(job)                      # its rows are freed at the next step

The thread steps while any request is queued or running and otherwise sleeps on a condition. Between two steps
it takes new jobs (``Engine.prepare`` + ``enqueue``), applies cancellations, and hands everything that happened
to the asyncio loop in ONE ``call_soon_threadsafe`` per step. Nothing else touches the engine, so no HTTP
handler ever waits on the engine's lock. A request that fails fails alone (the engine sees to that); an
exception escaping a step (an engine bug) ends the requests of that step with a GenerationError and the loop
goes on serving the next ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ..errors import GenerationError

log = logging.getLogger("dlm.serve")


class Job:
    """One engine request as the HTTP side sees it. ``wants_steps``: deliver step events (streaming, stop
    strings), else only the last one; ``every``: with ``wants_steps``, deliver the event of every ``every``-th
    step of the request (and its last); ``events``: the asyncio queue that receives ``(job, event)`` pairs and
    ``(job, None)`` at the end (several jobs of one HTTP request share one)."""

    def __init__(self, owner: "EngineLoop", prompt_ids: list[int], config, wants_steps: bool,
                 events: asyncio.Queue, aio: asyncio.AbstractEventLoop, every: int = 1):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.owner = owner
        self.prompt_ids, self.config, self.wants_steps, self.every = prompt_ids, config, wants_steps, every
        self.accepted: asyncio.Future = aio.create_future()
        self.events = events
        self.request: Any = None  # set by the thread when accepted
        self.error: BaseException | None = None  # an engine failure that is not the request's own
        self.finished = False  # asyncio side: the end was dispatched
        self.t_submit = time.perf_counter()


class EngineLoop:
    """The thread that runs ``engine`` (see the module doc). ``metrics``: a :class:`dlm.serve.metrics.Metrics`
    or None; ``name`` labels the replica in metrics and logs."""

    def __init__(self, engine, metrics=None, name: str = "0"):
        self.engine, self.metrics, self.name = engine, metrics, name
        self._cond = threading.Condition()
        self._inbox: list[Job] = []
        self._cancels: list[Job] = []
        self._live: list[Job] = []  # thread-owned: accepted jobs whose end is not yet delivered
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0  # asyncio side: jobs submitted and not yet ended (least-loaded routing, queue limit)
        stats = engine.stats()
        self.max_rows, self.slot_len = int(stats["max_rows"]), int(stats["slot_len"])
        if metrics is not None:
            metrics.engine_state(name, stats, 0)

    # ----------------------------------------------------------------- asyncio side
    def start(self, aio: asyncio.AbstractEventLoop) -> None:
        self._aio = aio
        self._thread = threading.Thread(target=self._run, name=f"dlm-engine-{self.name}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, prompt_ids: list[int], config, *, wants_steps: bool, events: asyncio.Queue,
               every: int = 1) -> Job:
        job = Job(self, prompt_ids, config, wants_steps, events, self._aio, every)
        self.in_flight += 1
        with self._cond:
            self._inbox.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """End ``job`` (queued: now; running: at the next step, which frees its rows)."""
        if job.finished:
            return
        with self._cond:
            self._cancels.append(job)
            self._cond.notify()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel whatever is still queued or running, free it, and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _dispatch(self, out: list[tuple[str, Job, Any]]) -> None:
        """On the asyncio loop: resolve acceptances, queue events, mark ends."""
        for kind, job, payload in out:
            if kind == "accept":
                if isinstance(payload, BaseException):
                    job.finished = True
                    self.in_flight -= 1
                    if not job.accepted.done():
                        job.accepted.set_exception(payload)
                elif not job.accepted.done():
                    job.accepted.set_result(payload)
            elif kind == "event":
                job.events.put_nowait((job, payload))
            else:  # end
                if not job.finished:
                    job.finished = True
                    self.in_flight -= 1
                if not job.accepted.done():
                    job.accepted.set_exception(job.error or GenerationError("the request ended before it started"))
                job.events.put_nowait((job, None))

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._stopping or self.engine.pending):
                    self._cond.wait()
                new, cancels, stopping = self._inbox, self._cancels, self._stopping
                self._inbox, self._cancels = [], []
            out: list[tuple[str, Job, Any]] = []
            try:
                self._iteration(new, cancels, stopping, out)
            except Exception:  # noqa: BLE001 - the loop must outlive any bug; the requests involved were ended
                log.exception("dlm serve: engine loop iteration failed")
            self._deliver(out)
            if stopping:
                return

    def _iteration(self, new: list[Job], cancels: list[Job], stopping: bool, out: list) -> None:
        for job in new:
            self._accept(job, out)
        for job in (list(self._live) if stopping else cancels):
            if job.request is not None and not job.request.done:
                self.engine.cancel(job.request)
        if self.engine.pending:
            self._step(out)
        self._collect_ended(out)
        if self.metrics is not None:
            self.metrics.engine_state(self.name, self.engine.stats(), len(self._inbox))

    def _accept(self, job: Job, out: list) -> None:
        try:
            request = self.engine.prepare(job.prompt_ids, job.config, tag=job)
            self.engine.enqueue(request)
        except Exception as exc:  # noqa: BLE001 - a refused request (ConfigError) goes back to its handler
            out.append(("accept", job, exc))
            return
        job.request = request
        self._live.append(job)
        out.append(("accept", job, request))

    def _step(self, out: list) -> None:
        t0 = time.perf_counter()
        try:
            events = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - an engine bug: end this step's requests, keep serving
            log.exception("dlm serve: engine step failed")
            self._fail_running(GenerationError(f"the engine step failed: {type(exc).__name__}: {exc}"), out)
            return
        committed = 0
        for ev in events:
            job = ev.tag
            committed += int(ev.committed.sum())
            if ev.done or (job.wants_steps and ev.step % job.every == 0):  # ev.step: the request's steps so far
                out.append(("event", job, ev))
        if self.metrics is not None:
            self.metrics.step(self.name, time.perf_counter() - t0, committed, len(events))

    def _fail_running(self, error: GenerationError, out: list) -> None:
        for job in self._live:
            if job.request is not None and not job.request.done:
                job.error = error
                try:
                    self.engine.cancel(job.request)
                except Exception:  # noqa: BLE001
                    log.exception("dlm serve: cancel after a failed step failed")
        for job in [j for j in self._live if j.error is error]:
            self._live.remove(job)
            out.append(("end", job, None))
        time.sleep(0.05)  # a step that keeps failing must not spin the loop at full speed

    def _collect_ended(self, out: list) -> None:
        """Jobs whose request ended (finished, failed or cancelled) since the last step."""
        still = []
        for job in self._live:
            if job.request.done:
                out.append(("end", job, None))
            else:
                still.append(job)
        self._live = still

    def _deliver(self, out: list) -> None:
        if not out or self._aio is None:
            return
        try:
            self._aio.call_soon_threadsafe(self._dispatch, out)
        except RuntimeError:  # the asyncio loop has closed (shutdown): nobody is waiting any more
            pass
