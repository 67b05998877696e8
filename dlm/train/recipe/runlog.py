"""The clock and log of a recipe run, and where its code came from."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path


class RunLog:
    """Prints progress lines to stderr and appends them to ``logs/recipe.log``; keeps the clock of the run."""

    def __init__(self, path: Path, deadline_minutes: float | None):
        self.path = path
        self.t0 = time.perf_counter()
        self.deadline = deadline_minutes * 60 if deadline_minutes else None
        path.parent.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - self.elapsed()

    def __call__(self, msg: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def git_commit() -> str | None:
    """The commit of the checkout dlm runs from (``None`` outside a git checkout or without git)."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
