"""One HTTP request's answers: its engine jobs, their final text as it grows, and the OpenAI response.

    c = Completion(server, specs, chat=False, stream=False, endpoint="completions", return_ids=False, canvas=False)
    await c.start()                        # 429 when the server is full; 400 when the engine refuses a config
    async for update in c.updates(): ...   # (choice index, new text, new ids, the Progress) as answers grow
    c.response()                           # the whole OpenAI response once every answer is complete
    c.cancel()                             # whatever still runs is cancelled (its rows freed at the next step)

An answer that completes before its request ends (``max_tokens`` reached, a stop string found) has its request
cancelled at once: the rest of its canvas would never be returned.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..errors import ConfigError, DlmError
from .answer import AnswerText
from .errors import APIError, bad_request
from .params import AnswerSpec
from .schemas import CONFIG_FIELDS


@dataclass
class Update:
    """What one step did for one choice: ``text`` and ``ids`` that became final, ``event`` (the step's
    :class:`~dlm.serve.progress.Progress`, or None when the answer completed from the request's outcome)."""

    index: int
    text: str
    ids: list[int]
    event: Any


def guess_param(message: str) -> str | None:
    """The body field an engine refusal is about: the first dlm field its message names."""
    found = [(message.find(name), name) for name in CONFIG_FIELDS + ("prompt", "seed", "temperature")
             if name in message]
    return min(found)[1] if found else None


def engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, ConfigError):
        return bad_request(str(exc), guess_param(str(exc)), "invalid_value")
    kind = type(exc).__name__
    message = str(exc) if isinstance(exc, DlmError) else f"{kind}: {exc}"
    # an error that came from the engine's process as a GenerationError keeps its original class as the code
    return APIError(500, f"generation failed: {message}", type="server_error", code=getattr(exc, "original", kind))


class Completion:
    """The answers of one HTTP request (see the module doc)."""

    def __init__(self, server, specs: list[AnswerSpec], *, chat: bool, stream: bool, endpoint: str,
                 return_ids: bool = False, canvas: bool = False):
        self.server, self.specs, self.chat, self.stream = server, specs, chat, stream
        # streams take the server's interval, but the canvas extension reports every step's commits; requests
        # that are not streamed see every step (a stop string found ends them at once)
        self.every = server.settings.stream_interval if stream and not canvas else 1
        self.endpoint, self.return_ids = endpoint, return_ids
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.t0 = time.perf_counter()
        self.first_text_at: float | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs: list = []
        lm = server.lm
        self.answers = [AnswerText(lm.tokenizer, lm.ids.mask_id, s.config.stop_token_ids or lm.ids.stop_ids,
                                   s.max_tokens, s.stop) for s in specs]
        self.nfe = [0] * len(specs)
        self._timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------------- running
    async def start(self) -> None:
        """Submit one job per choice and wait until the engine has accepted them all."""
        self.server.admit(len(self.specs), self.endpoint)
        timeout = self.server.request_timeout
        if timeout is not None:  # one timer per request: a (None, None) item in its queue says time is up
            left = max(0.0, timeout - (time.perf_counter() - self.t0))
            self._timer = asyncio.get_running_loop().call_later(left, self.queue.put_nowait, (None, None))
        for spec in self.specs:
            loop = self.server.route()
            job = loop.submit(spec.prompt_ids, spec.config, wants_steps=self.stream or bool(spec.stop),
                              events=self.queue, every=self.every)
            job.index = spec.index
            self.jobs.append(job)
        try:
            await asyncio.gather(*(job.accepted for job in self.jobs))
        except BaseException as exc:
            self.cancel()
            if isinstance(exc, (APIError, asyncio.CancelledError)):
                raise
            raise engine_error(exc) from None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for job in self.jobs:
            if not job.finished:
                job.owner.cancel(job)

    @property
    def complete(self) -> bool:
        return all(a.complete for a in self.answers)

    async def updates(self, every_step: bool = False) -> AsyncIterator[Update]:
        """Updates until every answer is complete; raises the APIError of a request that failed or timed out.
        ``every_step``: one update per engine event (the canvas extension needs each step's commits); else the
        events that queued up while the consumer was busy collapse into each answer's latest (its final prefix
        only grows), so a slow consumer does less work instead of falling further behind."""
        while not self.complete:
            for job, event in await self._pending(every_step):
                answer = self.answers[job.index]
                if answer.complete:
                    continue
                if event is None:
                    update = self._ended(job)
                elif event.failed:
                    continue  # the end marker that follows reports the error
                else:
                    self.nfe[job.index] = event.nfe
                    text, ids = answer.update(event.tokens)
                    update = Update(job.index, text, ids, event)
                if answer.complete and event is not None and not event.done:
                    job.owner.cancel(job)  # complete before its canvas: nothing after this point is returned
                if update.text or update.ids:
                    self.first_text_at = self.first_text_at or time.perf_counter()
                yield update

    async def _pending(self, every_step: bool) -> list[tuple[Any, Any]]:
        """What the engine delivered since the last call (waiting for at least one item)."""
        items = [await self.queue.get()]
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        if any(job is None for job, _ in items):
            timeout = self.server.request_timeout
            raise APIError(504, f"the request took longer than the server's --request-timeout of {timeout:g} s; "
                           "its generation was cancelled", type="timeout_error", code="timeout")
        if every_step:
            return items
        last = {id(job): k for k, (job, event) in enumerate(items) if event is not None}
        return [(job, event) for k, (job, event) in enumerate(items) if event is None or last[id(job)] == k]

    def _ended(self, job) -> Update:
        """The job's request ended without its answer completing from step progress."""
        out = job.outcome
        if out.error is not None:
            raise engine_error(out.error)
        if out.status != "done" or out.sequence is None:
            raise APIError(503, "the request was cancelled: the server is shutting down", type="server_error",
                           code="cancelled")
        self.nfe[job.index] = out.nfe
        text, ids = self.answers[job.index].update(out.sequence)
        if not self.answers[job.index].complete:  # cannot happen for a finished request: every position is set
            raise APIError(500, "the finished answer still has masked positions", type="server_error")
        return Update(job.index, text, ids, None)

    async def collect(self) -> None:
        async for _ in self.updates():
            pass

    # ----------------------------------------------------------------- responses
    def usage(self) -> dict[str, int]:
        prompt = sum(len(ids) for ids in {s.prompt_index: s.prompt_ids for s in self.specs}.values())
        completion = sum(len(a.ids) for a in self.answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "nfe": sum(self.nfe)}

    def choice(self, i: int) -> dict[str, Any]:
        a = self.answers[i]
        c: dict[str, Any] = {"index": i}
        if self.chat:
            c["message"] = {"role": "assistant", "content": a.text}
        else:
            c["text"] = a.text
        c.update(logprobs=None, finish_reason=a.finish_reason)
        if self.return_ids:
            c.update(token_ids=list(a.ids), prompt_token_ids=list(self.specs[i].prompt_ids))
        return c

    def head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.server.model_name}

    def response(self) -> dict[str, Any]:
        return {**self.head(), "choices": [self.choice(i) for i in range(len(self.specs))], "usage": self.usage(),
                "system_fingerprint": None}

    def finished(self, outcome: str) -> None:
        """Record the request in the metrics (once it is over, whatever the outcome)."""
        m = self.server.metrics
        usage = self.usage() if outcome == "ok" else {"completion_tokens": 0, "nfe": 0}
        m.answered(self.endpoint, outcome, time.perf_counter() - self.t0, usage["completion_tokens"], usage["nfe"])
        if self.stream and self.first_text_at is not None and outcome == "ok":
            m.ttft.observe(self.first_text_at - self.t0)
        self.server.note_latency(time.perf_counter() - self.t0)
