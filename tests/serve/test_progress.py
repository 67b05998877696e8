"""The served step's progress records: :func:`step_progress` (all of a step's events converted at once) gives what
:func:`progress_of` gives event by event, on random steps and on real engine steps."""

from __future__ import annotations

import random

import torch

import dlm
from dlm.outputs import StepEvent
from dlm.serve.progress import progress_of, step_progress


class _Request:
    def __init__(self, nfe: int, error):
        self.nfe, self.error = nfe, error


def _random_step(rng: random.Random) -> list[StepEvent]:
    events = []
    for i in range(rng.randint(1, 12)):
        n = rng.choice([1, 4, 8, 32, 33, 256])
        tokens = torch.tensor([rng.randrange(1000) for _ in range(n)])
        committed = torch.tensor([rng.random() < rng.choice([0.0, 0.1, 0.5, 1.0]) for _ in range(n)])
        done = rng.random() < 0.3
        events.append(StepEvent(request_id=i, step=rng.randint(1, 99), block=rng.randint(0, 7), committed=committed,
                                tokens=tokens, done=done,
                                request=_Request(rng.randint(1, 99), ValueError("x") if rng.random() < 0.3 else None)))
    return events


def test_step_progress_is_progress_of_on_random_steps():
    rng = random.Random(0)
    for _ in range(300):
        events = _random_step(rng)
        wanted = [rng.random() < 0.6 for _ in events]
        committed, progress = step_progress(events, wanted)
        assert committed == sum(int(ev.committed.sum()) for ev in events)
        assert progress == [progress_of(ev) if w else None for ev, w in zip(events, wanted)]


def test_step_progress_of_no_events():
    assert step_progress([], []) == (0, [])


def test_step_progress_on_engine_steps(llada):
    lm = llada
    engine = dlm.Engine(lm, max_rows=4, max_tokens=4 * 96)
    configs = [dlm.GenerationConfig(gen_length=g, block_length=8, steps=g // 2) for g in (8, 16, 24, 16)]
    for i, cfg in enumerate(configs):
        engine.submit([5 + i, 6, 7 + 2 * i], cfg)
    while engine.pending:
        events = engine.step()
        committed, progress = step_progress(events, [True] * len(events))
        assert committed == sum(int(ev.committed.sum()) for ev in events) > 0
        assert progress == [progress_of(ev) for ev in events]
