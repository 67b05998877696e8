"""The engine thread, in-process: events reach asyncio, cancellation frees rows, a step that raises ends its
requests without stopping the loop, stop() ends the thread."""

from __future__ import annotations

import asyncio

import pytest

import dlm
from dlm.errors import GenerationError
from dlm.serve.loop import EngineLoop

CFG = dlm.GenerationConfig(gen_length=32, steps=8)
LONG = dlm.GenerationConfig(gen_length=256, logits_eos_inf=True)


@pytest.fixture
def engine(model):
    return dlm.Engine(model, max_rows=4, max_tokens=4 * 300)


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
    ids = model.encode("def add(a, b):")[0]

    async def main():
        loop = EngineLoop(engine)
        loop.start(asyncio.get_running_loop())
        q = asyncio.Queue()
        job = loop.submit(ids, CFG, wants_steps=True, events=q)
        request = await job.accepted
        events = await drain(q, job)
        loop.stop()
        return request, events, loop

    request, events, loop = asyncio.run(main())
    assert [e.step for e in events] == list(range(1, len(events) + 1)) and events[-1].done
    assert request.output.texts == model.generate("def add(a, b):", CFG).texts
    assert loop.in_flight == 0 and not loop.alive


def test_cancel_frees_the_rows(engine, model):
    ids = model.encode("def add(a, b):")[0]

    async def main():
        loop = EngineLoop(engine)
        loop.start(asyncio.get_running_loop())
        q = asyncio.Queue()
        job = loop.submit(ids, LONG, wants_steps=True, events=q)
        await job.accepted
        for _ in range(2):
            await q.get()
        assert engine.stats()["rows_in_use"] == 1
        loop.cancel(job)
        while (await q.get())[1] is not None:
            pass
        loop.stop()
        return job

    job = asyncio.run(main())
    assert job.request.status.value == "cancelled" and engine.stats()["rows_in_use"] == 0


def test_a_step_that_raises_ends_its_requests_and_the_loop_goes_on(engine, model):
    ids = model.encode("def add(a, b):")[0]
    step, calls = engine.step, {"n": 0}

    def broken():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("kaput")
        return step()

    engine.step = broken

    async def main():
        loop = EngineLoop(engine)
        loop.start(asyncio.get_running_loop())
        q = asyncio.Queue()
        first = loop.submit(ids, LONG, wants_steps=False, events=q)
        await first.accepted
        await drain(q, first)
        second = loop.submit(ids, CFG, wants_steps=False, events=q)
        await second.accepted
        await drain(q, second)
        loop.stop()
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first.error, GenerationError) and "kaput" in str(first.error)
    assert second.error is None and second.request.output.texts == model.generate("def add(a, b):", CFG).texts
    assert engine.stats()["rows_in_use"] == 0


def test_a_refused_request_comes_back_as_its_error(engine, model):
    async def main():
        loop = EngineLoop(engine)
        loop.start(asyncio.get_running_loop())
        job = loop.submit(list(range(5, 400)), dlm.GenerationConfig(gen_length=320), wants_steps=False,
                          events=asyncio.Queue())
        with pytest.raises(dlm.ConfigError, match="slot of this engine holds 300"):
            await job.accepted
        loop.stop()
        return loop

    assert asyncio.run(main()).in_flight == 0


def test_stop_cancels_what_still_runs(engine, model):
    ids = model.encode("def add(a, b):")[0]

    async def main():
        loop = EngineLoop(engine)
        loop.start(asyncio.get_running_loop())
        q = asyncio.Queue()
        job = loop.submit(ids, LONG, wants_steps=True, events=q)
        await job.accepted
        await q.get()
        await asyncio.to_thread(loop.stop)
        await drain(q, job)
        return job, loop

    job, loop = asyncio.run(main())
    assert job.request.status.value == "cancelled" and not loop.alive and engine.stats()["rows_in_use"] == 0
