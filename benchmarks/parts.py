"""The part loop of the one-command GPU scripts (engine_gpu.py, fp8_gpu.py): each part runs in turn, a failing
part is recorded with its trace instead of stopping the others, and the results are saved after every part (a
run killed at its time limit keeps what it measured)."""

from __future__ import annotations

import time
import traceback
from typing import Callable


def run_parts(names, jobs: dict[str, Callable[[], dict]], results: dict, save: Callable[[], None]) -> None:
    """``results[name] = jobs[name]()`` for each of ``names``, timed into ``results["seconds"]``; ``save()`` after
    each."""
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = jobs[name]()
        except Exception as exc:  # noqa: BLE001 - record and go on with the other parts
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            print(f"{name} failed: {exc}", flush=True)
        results.setdefault("seconds", {})[name] = time.perf_counter() - t0
        save()
