"""The engine's side of serving: one :class:`EngineDriver` owns a :class:`dlm.Engine` and steps it in the thread
that calls :meth:`EngineDriver.run`, which is a thread of the server (``--no-engine-process``) or the main thread
of an engine process of its own (:mod:`dlm.serve.process`, the default).

    driver = EngineDriver(engine)
    driver.submit(key, prompt_ids, config, wants_steps=True, every=1)   # from any thread
    driver.cancel(key)                                                  # from any thread
    driver.run(sink)            # steps while work is queued or running; sink(items) once per iteration
    driver.stop()               # from any thread: cancel what runs, deliver its ends, return from run()

``sink`` receives a list of ``(kind, key, payload)`` items per iteration, in order:

* ``("accept", key, None)`` when a job's request is queued in the engine, ``("accept", key, error)`` when the
  engine refused it (a ConfigError);
* ``("event", key, Progress)`` for a delivered step (every ``every``-th step of a job that wants steps, and
  every job's last);
* ``("end", key, Outcome)`` once a job's request has ended (finished, failed or cancelled);
* ``("step", None, (seconds, committed positions, requests))`` after an engine step, and
  ``("state", None, (engine stats, jobs waiting to be taken))`` after every iteration: the server's metrics.

A request that fails fails alone (the engine sees to that); an exception escaping a step (an engine bug) ends
the requests of that step with a GenerationError and the driver goes on with the next ones.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ..errors import GenerationError
from .progress import outcome_of, step_progress

log = logging.getLogger("dlm.serve")
Sink = Callable[[list], None]


class Work:
    """One job as the driver holds it: what to run, and once accepted its engine request."""

    __slots__ = ("config", "error", "every", "key", "prompt_ids", "request", "wants_steps")

    def __init__(self, key: Any, prompt_ids: list[int], config, wants_steps: bool, every: int):
        self.key, self.prompt_ids, self.config = key, prompt_ids, config
        self.wants_steps, self.every = wants_steps, every
        self.request: Any = None
        self.error: BaseException | None = None  # an engine failure that ended it, not the request's own


class EngineDriver:
    """Steps ``engine`` for the jobs submitted to it (see the module doc)."""

    def __init__(self, engine):
        self.engine = engine
        self._cond = threading.Condition()
        self._inbox: list[Work] = []
        self._cancels: list[Any] = []
        self._stopping = False
        self._live: dict[Any, Work] = {}  # run()'s thread only: accepted jobs whose end is not yet delivered

    # ----------------------------------------------------------------- any thread
    def submit(self, key: Any, prompt_ids: list[int], config, *, wants_steps: bool, every: int = 1) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        with self._cond:
            self._inbox.append(Work(key, prompt_ids, config, wants_steps, every))
            self._cond.notify()

    def refuse(self, key: Any, error: BaseException) -> None:
        """Answer the job ``key`` with ``error`` (as the engine answers one it refuses) at the next iteration."""
        work = Work(key, [], None, False, 1)
        work.error = error
        with self._cond:
            self._inbox.append(work)
            self._cond.notify()

    def cancel(self, key: Any) -> None:
        """End the job ``key`` (queued: at once; running: at the next step, which frees its rows)."""
        with self._cond:
            self._cancels.append(key)
            self._cond.notify()

    def stop(self) -> None:
        """Make :meth:`run` cancel whatever is queued or running, deliver their ends and return."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    # ----------------------------------------------------------------- run()'s thread
    def run(self, sink: Sink) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self._stopping or self.engine.pending):
                    self._cond.wait()
                new, cancels, stopping = self._inbox, self._cancels, self._stopping
                self._inbox, self._cancels = [], []
            out: list = []
            try:
                self._iteration(new, cancels, stopping, out)
            except Exception:  # noqa: BLE001 - the driver must outlive any bug; the requests involved were ended
                log.exception("dlm serve: engine loop iteration failed")
            if out:
                sink(out)
            if stopping:
                return

    def _iteration(self, new: list[Work], cancels: list[Any], stopping: bool, out: list) -> None:
        for work in new:
            self._accept(work, out)
        for key in (list(self._live) if stopping else cancels):
            work = self._live.get(key)
            if work is not None and not work.request.done:
                self.engine.cancel(work.request)
        if self.engine.pending:
            self._step(out)
        self._collect_ended(out)
        with self._cond:
            waiting = len(self._inbox)
        out.append(("state", None, (self.engine.stats(), waiting)))

    def _accept(self, work: Work, out: list) -> None:
        if work.error is not None:  # refused before it reached the engine
            out.append(("accept", work.key, work.error))
            return
        try:
            request = self.engine.prepare(work.prompt_ids, work.config, tag=work)
            self.engine.enqueue(request)
        except Exception as exc:  # noqa: BLE001 - a refused request (ConfigError) goes back to its handler
            out.append(("accept", work.key, exc))
            return
        work.request = request
        self._live[work.key] = work
        out.append(("accept", work.key, None))

    def _step(self, out: list) -> None:
        t0 = time.perf_counter()
        try:
            events = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - an engine bug: end this step's requests, keep serving
            log.exception("dlm serve: engine step failed")
            self._fail_running(GenerationError(f"the engine step failed: {type(exc).__name__}: {exc}"), out)
            return
        # ev.step: the request's steps so far
        wanted = [ev.done or (ev.tag.wants_steps and ev.step % ev.tag.every == 0) for ev in events]
        committed, progress = step_progress(events, wanted)
        for ev, p in zip(events, progress):
            if p is not None:
                out.append(("event", ev.tag.key, p))
        out.append(("step", None, (time.perf_counter() - t0, committed, len(events))))

    def _fail_running(self, error: GenerationError, out: list) -> None:
        """End every running job with ``error`` now (their requests are cancelled; ending them does not wait
        for a step that may fail again)."""
        for key, work in list(self._live.items()):
            if work.request.done:
                continue
            work.error = error
            try:
                self.engine.cancel(work.request)
            except Exception:  # noqa: BLE001
                log.exception("dlm serve: cancel after a failed step failed")
            del self._live[key]
            out.append(("end", key, outcome_of(work.request, error)))
        time.sleep(0.05)  # a step that keeps failing must not spin the loop at full speed

    def _collect_ended(self, out: list) -> None:
        """Jobs whose request ended (finished, failed or cancelled) since the last step."""
        for key, work in list(self._live.items()):
            if work.request.done:
                del self._live[key]
                out.append(("end", key, outcome_of(work.request, work.error)))
