"""The engine loop with the engine in a thread (ThreadBackend): progress reaches asyncio, cancellation frees
rows, a step that raises ends its requests without stopping the loop, stop() ends the thread."""

from __future__ import annotations

import asyncio

import pytest

import dlm
from dlm.errors import GenerationError
from dlm.serve.loop import EngineLoop, ThreadBackend

CFG = dlm.GenerationConfig(gen_length=32, steps=8)
LONG = dlm.GenerationConfig(gen_length=256, logits_eos_inf=True)
PROMPT = "def add(a, b):"


@pytest.fixture
def engine(model):
    return dlm.Engine(model, max_rows=4, max_tokens=4 * 300)


def with_loop(engine, work):
    """Run the coroutine function ``work(loop)`` with a started EngineLoop, stopped afterwards; its result."""

    async def main():
        loop = EngineLoop(ThreadBackend(engine))
        loop.start(asyncio.get_running_loop())
        try:
            return await work(loop)
        finally:
            await asyncio.to_thread(loop.stop)

    return asyncio.run(main())


def submit(loop: EngineLoop, ids, config, wants_steps: bool = True):
    queue: asyncio.Queue = asyncio.Queue()
    return loop.submit(ids, config, wants_steps=wants_steps, events=queue), queue


async def drain(queue: asyncio.Queue, job) -> list:
    """Events of ``job`` until its end marker."""
    events = []
    while True:
        j, event = await queue.get()
        assert j is job
        if event is None:
            return events
        events.append(event)


def test_events_reach_asyncio_and_the_answer_is_generates(engine, model):
    async def work(loop):
        job, q = submit(loop, model.encode(PROMPT)[0], CFG)
        await job.accepted
        return job, await drain(q, job), loop

    job, events, loop = with_loop(engine, work)
    assert [e.step for e in events] == list(range(1, len(events) + 1)) and events[-1].done
    reference = model.generate(PROMPT, CFG).sequences[0].tolist()
    assert job.outcome.status == "done" and job.outcome.sequence == reference == events[-1].tokens
    assert loop.in_flight == 0 and not loop.alive


def test_cancel_frees_the_rows(engine, model):
    async def work(loop):
        job, q = submit(loop, model.encode(PROMPT)[0], LONG)
        await job.accepted
        for _ in range(2):
            await q.get()
        assert engine.stats()["rows_in_use"] == 1
        loop.cancel(job)
        await drain(q, job)
        return job

    job = with_loop(engine, work)
    assert job.outcome.status == "cancelled" and engine.stats()["rows_in_use"] == 0


def test_a_step_that_raises_ends_its_requests_and_the_loop_goes_on(engine, model):
    step, calls = engine.step, {"n": 0}

    def broken():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("kaput")
        return step()

    engine.step = broken

    async def work(loop):
        jobs = []
        for config in (LONG, CFG):  # the first is running when the step raises, the second comes after
            job, q = submit(loop, model.encode(PROMPT)[0], config, wants_steps=False)
            await job.accepted
            await drain(q, job)
            jobs.append(job)
        return jobs

    first, second = with_loop(engine, work)
    assert isinstance(first.outcome.error, GenerationError) and "kaput" in str(first.outcome.error)
    assert second.outcome.error is None
    assert second.outcome.sequence == model.generate(PROMPT, CFG).sequences[0].tolist()
    assert engine.stats()["rows_in_use"] == 0


def test_a_refused_request_comes_back_as_its_error(engine):
    async def work(loop):
        job, _ = submit(loop, list(range(5, 400)), dlm.GenerationConfig(gen_length=320), wants_steps=False)
        with pytest.raises(dlm.ConfigError, match="slot of this engine holds 300"):
            await job.accepted
        return loop

    assert with_loop(engine, work).in_flight == 0


def test_stop_cancels_what_still_runs(engine, model):
    async def work(loop):
        job, q = submit(loop, model.encode(PROMPT)[0], LONG)
        await job.accepted
        await q.get()
        await asyncio.to_thread(loop.stop)
        await drain(q, job)
        return job, loop

    job, loop = with_loop(engine, work)
    assert job.outcome.status == "cancelled" and not loop.alive and engine.stats()["rows_in_use"] == 0


def test_every_nth_step_and_the_last(engine, model):
    async def work(loop):
        queue: asyncio.Queue = asyncio.Queue()
        job = loop.submit(model.encode(PROMPT)[0], CFG, wants_steps=True, events=queue, every=3)
        await job.accepted
        return await drain(queue, job)

    events = with_loop(engine, work)
    assert [e.step for e in events] == [3, 6, 8] and events[-1].done  # CFG: 8 steps


def test_every_must_be_a_positive_integer(engine):
    async def work(loop):
        with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
            loop.submit([1, 2], CFG, wants_steps=True, events=asyncio.Queue(), every=0)

    with_loop(engine, work)


class SilentBackend:
    """A backend whose engine never reports anything (as one killed at the stop timeout)."""

    info = {"max_rows": 2, "slot_len": 64, "batch_invariant": True, "stats": {"queued": 0, "running": 0,
            "rows_in_use": 0, "max_rows": 2}, "model": "-"}
    alive = True
    where = "nowhere"

    def start(self, deliver, died):
        pass

    def submit(self, *args):
        pass

    def cancel(self, key):
        pass

    def stop(self, timeout=30.0):
        pass


def test_jobs_the_engine_never_ended_end_at_stop():
    async def main():
        loop = EngineLoop(SilentBackend())
        loop.start(asyncio.get_running_loop())
        job, q = submit(loop, [5, 6], CFG)
        await asyncio.to_thread(loop.stop)
        return job, await drain(q, job), loop

    job, events, loop = asyncio.run(main())
    assert events == [] and job.outcome.status == "cancelled" and loop.in_flight == 0
