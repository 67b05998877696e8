"""Where ``dlm generate`` puts its answers, written as each batch finishes so an interrupt loses nothing done.

With ``--output FILE`` the records go to ``FILE.partial`` (appended and flushed batch by batch), which is renamed
onto ``FILE`` when the run ends, finished or interrupted: a complete-looking ``FILE`` never holds half a line, and a
``FILE.partial`` left behind means the process was killed outright. Without ``--output`` they are printed as they
finish (one JSON record a line with ``--json``, else the texts). The path is checked when the writer opens,
before any model is loaded. Nothing here runs the model: the caller feeds finished records, from
``model.generate`` batch by batch or from an engine that completes requests one at a time.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Sequence

import torch

from .errors import ConfigError

# the fields dlm writes; an input line's other fields (e.g. "id") are kept in front of them
ANSWER_FIELDS = ("prompt", "prompt_ids", "text", "tokens", "nfe", "commit_step")


def answer_records(extras: Sequence[dict[str, Any]], prompts: Sequence[str | list[int]], out) -> list[dict[str, Any]]:
    """One JSON-ready record per row of ``out`` (a GenerationOutput of ``prompts``): the input line's own
    fields first (``extras``, one dict per prompt), then dlm's (ANSWER_FIELDS replace same-named input fields)."""
    records = []
    for i, prompt in enumerate(prompts):
        rec = {k: v for k, v in extras[i].items() if k not in ANSWER_FIELDS}
        rec.update(prompt=prompt if isinstance(prompt, str) else None, prompt_ids=list(out.prompt_ids[i]),
                   text=out.texts[i] if out.texts is not None else None, tokens=out.sequences[i].tolist(),
                   nfe=int(out.nfe[i]))
        if out.trace is not None:
            rec["commit_step"] = out.trace.commit_step[i].tolist()
        records.append(rec)
    return records


class AnswerWriter:
    """Writes finished answer records (see the module doc); ``write`` per batch, ``close`` once at the end."""

    def __init__(self, path: Path | None, *, as_json: bool = False, quiet: bool = False):
        self.path, self.as_json, self.quiet = path, as_json, quiet
        self.written = 0
        self.partial = None if path is None else path.with_name(path.name + ".partial")
        self._fh: IO[str] | None = None if path is None else _open_partial(path, self.partial)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Append ``records`` and flush, so they survive whatever happens next."""
        if self._fh is not None:
            lines = [json.dumps(r) for r in records]
            fh = self._fh
        else:
            lines = [json.dumps(r) if self.as_json else (r["text"] if r["text"] is not None else str(r["tokens"]))
                     for r in records]
            fh = sys.stdout
        if lines and not self.quiet:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
        self.written += len(records)

    def close(self) -> None:
        """Move the answers into place: ``FILE.partial`` onto ``FILE``; an empty partial file is removed and
        an existing ``FILE`` left as it was."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        if self.written:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "standard output"


def _open_partial(path: Path, partial: Path) -> IO[str]:
    """Check ``path`` can receive the answers (not a folder, its folder creatable and writable) by opening its
    partial file now; ConfigError naming the path otherwise."""
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name (e.g. {path / 'answers.jsonl'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(partial, "w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write --output {path}: {exc.strerror or exc}") from exc


def summary(writer: AnswerWriter, total: int, outs: list) -> str:
    """One line for stderr: answers written, time, forward passes per answer."""
    seconds = sum(o.timings.get("total", 0.0) for o in outs)
    nfe = torch.cat([o.nfe for o in outs]).float().mean().item() if outs else 0.0
    return (f"wrote {writer.written} of {total} answers to {writer.where} ({seconds:.2f} s, {nfe:.1f} forward "
            "passes per answer)")
