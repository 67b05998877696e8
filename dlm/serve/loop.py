"""The asyncio side of an engine: :class:`EngineLoop` hands jobs to an engine that runs elsewhere and turns what
comes back into futures and queue items.

    loop = EngineLoop(ProcessBackend(...), metrics)      # the engine in its own process (dlm.serve.process)
    loop = EngineLoop(ThreadBackend(engine), metrics)    # or in a thread of this process
    loop.start(asyncio.get_running_loop())
    job = loop.submit(prompt_ids, config, wants_steps=True, events=queue)   # from the asyncio thread
                                                                            # (every=N: every Nth step's event)
    await job.accepted                    # queued in the engine (or the ConfigError refusing it)
    job, progress = await queue.get()     # its steps as (job, Progress); (job, None) once it has ended
    job.outcome                           # then: how it ended (dlm.serve.progress.Outcome)
    loop.cancel(job)                      # its rows are freed at the next step

Either backend runs an :class:`~dlm.serve.driver.EngineDriver`, which delivers a list of items per engine
iteration; they reach the asyncio loop in ONE ``call_soon_threadsafe`` per iteration. Nothing on the asyncio
side touches the engine, so no HTTP handler ever waits on it. If the engine's process dies, every job still
running ends with a GenerationError and the loop reports itself dead (``/health`` answers 503).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any, Callable

from ..errors import GenerationError
from .driver import EngineDriver
from .progress import Outcome

log = logging.getLogger("dlm.serve")


class Job:
    """One engine request as the HTTP side sees it. ``wants_steps``: deliver step progress (streaming, stop
    strings), else only the last step; ``every``: with ``wants_steps``, deliver every ``every``-th step of the
    request (and its last); ``events``: the asyncio queue that receives ``(job, Progress)`` pairs and
    ``(job, None)`` at the end (several jobs of one HTTP request share one); ``outcome``: set at the end."""

    def __init__(self, owner: "EngineLoop", key: int, prompt_ids: list[int], config, wants_steps: bool,
                 events: asyncio.Queue, aio: asyncio.AbstractEventLoop, every: int = 1):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.owner, self.key = owner, key
        self.prompt_ids, self.config, self.wants_steps, self.every = prompt_ids, config, wants_steps, every
        self.accepted: asyncio.Future = aio.create_future()
        self.events = events
        self.outcome: Outcome | None = None
        self.finished = False  # the end was dispatched


class ThreadBackend:
    """An engine stepped by a thread of this process (``dlm serve --no-engine-process``)."""

    where = "thread"  # where the engine runs, as /v1/models reports it

    def __init__(self, engine, name: str = "0"):
        self.engine, self.name = engine, name
        self.driver = EngineDriver(engine)
        self.info = engine_info(engine)
        self._thread: threading.Thread | None = None

    def start(self, deliver: Callable[[list], None], died: Callable[[str], None]) -> None:
        self._thread = threading.Thread(target=self.driver.run, args=(deliver,), name=f"dlm-engine-{self.name}",
                                        daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, key: int, prompt_ids: list[int], config, wants_steps: bool, every: int) -> None:
        self.driver.submit(key, prompt_ids, config, wants_steps=wants_steps, every=every)

    def cancel(self, key: int) -> None:
        self.driver.cancel(key)

    def stop(self, timeout: float = 30.0) -> None:
        self.driver.stop()
        if self._thread is not None:
            self._thread.join(timeout)


def engine_info(engine) -> dict[str, Any]:
    """What the HTTP side needs to know about an engine: its rows, slot length, numerics and stats."""
    stats = engine.stats()
    return {"max_rows": int(stats["max_rows"]), "slot_len": int(stats["slot_len"]),
            "batch_invariant": bool(engine.batch_invariant), "stats": stats, "model": repr(engine.model)}


class EngineLoop:
    """The asyncio side of one engine (see the module doc). ``backend``: a :class:`ThreadBackend` or a
    :class:`dlm.serve.process.ProcessBackend`; ``metrics``: a :class:`dlm.serve.metrics.Metrics` or None;
    ``name`` labels the replica in metrics and logs."""

    def __init__(self, backend, metrics=None, name: str = "0"):
        self.backend, self.metrics, self.name = backend, metrics, name
        info = backend.info
        self.max_rows, self.slot_len = info["max_rows"], info["slot_len"]
        self.batch_invariant = info["batch_invariant"]
        self.where = backend.where
        self.in_flight = 0  # jobs submitted and not yet ended (least-loaded routing, queue limit)
        self._jobs: dict[int, Job] = {}
        self._keys = itertools.count()
        self._aio: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._dead: str | None = None  # why the engine is gone, when it died
        if metrics is not None:
            metrics.engine_state(name, info["stats"], 0)

    def start(self, aio: asyncio.AbstractEventLoop) -> None:
        self._aio = aio
        self.backend.start(self._deliver, self._died)

    @property
    def alive(self) -> bool:
        return self._dead is None and not self._stopping and self.backend.alive

    def submit(self, prompt_ids: list[int], config, *, wants_steps: bool, events: asyncio.Queue,
               every: int = 1) -> Job:
        job = Job(self, next(self._keys), prompt_ids, config, wants_steps, events, self._aio, every)
        if self._dead is not None:
            self._end(job, Outcome("failed", GenerationError(self._dead), 0, None))
            return job
        self._jobs[job.key] = job
        self.in_flight += 1
        self.backend.submit(job.key, prompt_ids, config, wants_steps, every)
        return job

    def cancel(self, job: Job) -> None:
        """End ``job`` (queued: now; running: at the next step, which frees its rows)."""
        if not job.finished and self._dead is None:
            self.backend.cancel(job.key)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel whatever is still queued or running, free it, and stop the engine. A job whose end the engine
        did not report (it was killed at the timeout) ends as cancelled."""
        self._stopping = True
        self.backend.stop(timeout)
        if self._aio is not None:
            try:
                self._aio.call_soon_threadsafe(self._end_leftovers)
            except RuntimeError:  # the asyncio loop has closed: nobody is waiting any more
                pass

    def _end_leftovers(self) -> None:
        for job in list(self._jobs.values()):
            self._end(job, Outcome("cancelled", None, 0, None))

    # ----------------------------------------------------------------- on the asyncio loop
    def _deliver(self, items: list) -> None:
        """From the engine's thread (or the thread reading its process): hand ``items`` to the asyncio loop."""
        if self._aio is None:
            return
        try:
            self._aio.call_soon_threadsafe(self._dispatch, items)
        except RuntimeError:  # the asyncio loop has closed (shutdown): nobody is waiting any more
            pass

    def _died(self, reason: str) -> None:
        if self._aio is None:
            return
        try:
            self._aio.call_soon_threadsafe(self._fail_all, reason)
        except RuntimeError:
            pass

    def _dispatch(self, items: list) -> None:
        for kind, key, payload in items:
            if kind == "step":
                if self.metrics is not None:
                    self.metrics.step(self.name, *payload)
                continue
            if kind == "state":
                if self.metrics is not None:
                    self.metrics.engine_state(self.name, *payload)
                continue
            job = self._jobs.get(key)
            if job is None:  # ended already (a failed step ends its jobs before their requests stop)
                continue
            if kind == "accept":
                if payload is None:
                    if not job.accepted.done():
                        job.accepted.set_result(None)
                else:
                    self._end(job, Outcome("failed", payload, 0, None), queue=False)
            elif kind == "event":
                job.events.put_nowait((job, payload))
            else:  # end
                self._end(job, payload)

    def _end(self, job: Job, outcome: Outcome, queue: bool = True) -> None:
        """``job`` is over: its outcome, its acceptance (failed if it never started) and its end marker."""
        if job.finished:
            return
        job.finished, job.outcome = True, outcome
        if self._jobs.pop(job.key, None) is not None:
            self.in_flight -= 1
        if not job.accepted.done():
            job.accepted.set_exception(outcome.error or GenerationError("the request ended before it started"))
        if queue:
            job.events.put_nowait((job, None))

    def _fail_all(self, reason: str) -> None:
        """The engine died: every job it held ends with a GenerationError saying so."""
        self._dead = reason
        log.error("dlm serve: engine %s: %s", self.name, reason)
        error = GenerationError(reason)
        for job in list(self._jobs.values()):
            self._end(job, Outcome("failed", error, 0, None))
