"""Streaming (``stream: true``): OpenAI's server-sent-event chunks, sent whenever an answer's final prefix grows.

Chunks are those of OpenAI's API (``text_completion`` / ``chat.completion.chunk``), ending with
``data: [DONE]``; their texts concatenate to the final text. The last chunk of a choice carries its
``finish_reason``; with ``stream_options.include_usage`` a last chunk with no choices carries the usage.

dlm's extension (``stream_options: {"dlm_canvas": true}``): every chunk gets a ``dlm`` object. The first one of
a choice describes its canvas ``{"index", "gen_length", "block_length", "steps", "max_tokens",
"prompt_tokens", "mask_id"}``; then one chunk per engine step carries ``{"index", "step", "block", "nfe",
"committed": [[position, token id, token text], ...]}``: the positions (0-based in the answer) that step
committed, in any order, final or not yet readable left to right.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from .completion import Completion, Update
from .errors import APIError


def _chunk(c: Completion, choices: list[dict], usage: bool) -> dict[str, Any]:
    out = {"id": c.id, "object": "chat.completion.chunk" if c.chat else "text_completion", "created": c.created,
           "model": c.server.model_name, "choices": choices}
    if usage:
        out["usage"] = None
    return out


def _choice(c: Completion, index: int, text: str, finish: str | None, role: bool = False) -> dict[str, Any]:
    if c.chat:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def canvas_info(c: Completion, index: int) -> dict[str, Any]:
    spec = c.specs[index]
    cfg = spec.config
    return {"index": index, "gen_length": cfg.gen_length, "block_length": cfg.effective_block_length,
            "steps": cfg.effective_steps, "max_tokens": spec.max_tokens, "prompt_tokens": len(spec.prompt_ids),
            "mask_id": c.server.lm.ids.mask_id}


def step_info(c: Completion, u: Update) -> dict[str, Any]:
    ev = u.event
    pairs = ev.committed
    tok = c.server.lm.tokenizer
    pieces = [tok.decode([t]) for _, t in pairs] if tok is not None else [""] * len(pairs)
    return {"index": u.index, "step": ev.step, "block": ev.block, "nfe": c.nfe[u.index],
            "committed": [[p, t, s] for (p, t), s in zip(pairs, pieces)]}


def first_chunks(c: Completion, usage: bool, canvas: bool) -> list[dict[str, Any]]:
    """Per choice, the chunk that opens it: the assistant role (chat) and the canvas (dlm_canvas)."""
    out = []
    for i in range(len(c.specs)):
        if not (c.chat or canvas):
            continue
        chunk = _chunk(c, [_choice(c, i, "", None, role=c.chat)], usage)
        if canvas:
            chunk["dlm"] = canvas_info(c, i)
        out.append(chunk)
    return out


def update_chunk(c: Completion, u: Update, usage: bool, canvas: bool) -> dict[str, Any] | None:
    """The chunk of one update, or None when it says nothing (no new text, no end, no canvas)."""
    finish = c.answers[u.index].finish_reason
    show_canvas = canvas and u.event is not None
    if not (u.text or u.ids or finish or show_canvas):
        return None
    choice = _choice(c, u.index, u.text, finish)
    if c.return_ids:
        choice["token_ids"] = u.ids
    chunk = _chunk(c, [choice], usage)
    if show_canvas:
        chunk["dlm"] = step_info(c, u)
    return chunk


async def sse_events(c: Completion, include_usage: bool, canvas: bool) -> AsyncIterator[str]:
    """The ``data:`` payloads of one streamed request. Whatever ends it (the last answer, an error, the client
    going away, a shutdown), its requests still running are cancelled and the outcome is recorded."""
    outcome = "cancelled"
    try:
        for chunk in first_chunks(c, include_usage, canvas):
            yield json.dumps(chunk)
        async for u in c.updates(every_step=canvas):
            chunk = update_chunk(c, u, include_usage, canvas)
            if chunk is not None:
                yield json.dumps(chunk)
        if include_usage:
            yield json.dumps({**_chunk(c, [], False), "usage": c.usage()})
        outcome = "ok"
    except APIError as exc:  # the status line is sent already: the error travels as an event
        outcome = "timeout" if exc.status == 504 else "error"
        yield json.dumps(exc.body())
    finally:
        c.cancel()
        c.finished(outcome)
    yield "[DONE]"
