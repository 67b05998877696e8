"""One choice's answer as it becomes final: token ids and text that can never change any more.

An answer position is final once it and every position before it are committed (a diffusion model commits
positions in any order inside a block; the left-to-right prefix is what a reader can be shown). The answer ends
at the first stop token, at ``max_tokens`` tokens, or before the earliest stop string. Text is emitted only
when it decodes cleanly: a trailing U+FFFD (a multi-byte character cut between tokens) is held back until the
next token completes it, and so is any tail that could still grow into a stop string.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

log = logging.getLogger("dlm.serve")
REPLACEMENT = "\ufffd"


class AnswerText:
    """The final prefix of one answer (see the module doc).

    Args:
        tokenizer: decodes ids (``None``: ids only, text stays empty).
        mask_id: the mask token (positions not committed yet).
        stop_ids: tokens that end the answer.
        max_tokens: answer tokens returned at most.
        stops: stop strings.
    """

    def __init__(self, tokenizer: Any, mask_id: int, stop_ids: Sequence[int], max_tokens: int,
                 stops: Sequence[str] = ()):
        self.tokenizer, self.mask_id = tokenizer, mask_id
        self.stop_ids, self.max_tokens, self.stops = frozenset(stop_ids), max_tokens, tuple(stops)
        self.ids: list[int] = []  # final answer ids (after the stop-string cut: those the text needs)
        self.text = ""  # text emitted so far
        self.finish_reason: str | None = None  # "stop" or "length" once the answer is complete
        self._prefix: list[int] = []  # final ids before any stop-string cut

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None

    def update(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        """Read the answer's canvas now ((gen_length,) ids, mask where not committed); returns the text and ids
        that became final since the last call."""
        if self.complete:
            return "", []
        prefix, reason = self._final_ids(list(tokens))
        if len(prefix) == len(self._prefix) and reason is None:
            return "", []
        self._prefix = prefix
        if self.tokenizer is None:
            new = prefix[len(self.ids):]
            self.ids, self.finish_reason = prefix, reason
            return "", new
        return self._text_delta(prefix, reason)

    def _final_ids(self, row: list[int]) -> tuple[list[int], str | None]:
        try:
            n = row.index(self.mask_id)
        except ValueError:
            n = len(row)
        start = len(self._prefix)  # an earlier stop token would already have ended the answer
        stop = next((i for i in range(start, n) if row[i] in self.stop_ids), None)
        if stop is not None and stop <= self.max_tokens:
            return row[:stop], "stop"
        if n >= self.max_tokens:  # also a stop token past max_tokens: n > stop > max_tokens
            return row[: self.max_tokens], "length"
        return row[:n], None

    def _text_delta(self, prefix: list[int], reason: str | None) -> tuple[str, list[int]]:
        text = self._decode(prefix)
        ids = prefix
        cut = self._stop_at(text)
        if cut is not None:
            text, reason = text[:cut], "stop"
            ids = prefix[: self._tokens_for(prefix, cut)]
        safe = text if reason is not None else text[: len(text) - self._hold_back(text)]
        if not safe.startswith(self.text):
            # decoding a longer prefix changed text already sent (no tokenizer dlm ships does this): send no more
            if reason is not None:
                log.warning("dlm serve: the final text does not extend the streamed text; the stream stops short")
            safe = self.text
        delta, new_ids = safe[len(self.text):], ids[len(self.ids):]
        self.text, self.ids, self.finish_reason = safe, ids, reason
        return delta, new_ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_at(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _hold_back(self, text: str) -> int:
        """Characters at the end of ``text`` that may still change meaning: an unfinished multi-byte character,
        or the beginning of a stop string."""
        hold = len(text) - len(text.rstrip(REPLACEMENT))
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def _tokens_for(self, ids: list[int], chars: int) -> int:
        """The fewest leading tokens of ``ids`` whose text covers ``chars`` characters (binary search: the text
        of a longer prefix is never shorter)."""
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._decode(ids[:mid])) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo
