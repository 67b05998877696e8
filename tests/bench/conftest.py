"""Fixtures of the benchmark tests: one torch thread, a handful of examples, and one miniature run on a tiny random
LLaDA checkpoint shared by the runner and report tests.

The model is random, so accuracies are meaningless; what is checked is that the pipeline runs, that every ratio
is taken against the reference row of the same run and group, and that configurations which cannot run are
reported as skipped. Nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import pytest
import torch

from dlm.bench.methods import Method
from dlm.bench.presets import NAMED, Suite
from dlm.bench.report import environment, model_info, write_report
from dlm.bench.runner import Bench

from .helpers import tiny_items


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """One torch thread: on a machine shared with other jobs, spinning OpenMP threads on busy cores make a tiny
    model's steps up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def run(llada, tmp_path_factory):
    """One miniature run: reference + fast-dllm + best measured; learn2pd, lossless-causal and a broken
    configuration skipped (learn2pd may run once its scheduler is registered)."""
    broken = Method("broken", {"scheduler": "no_such_scheduler"}, source="grid")
    methods = (NAMED["fast-dllm"], NAMED["best"], NAMED["learn2pd"], NAMED["lossless-causal"], broken)
    suite = Suite(tasks=("copy", "add", "code"), n=2, code_n=1, gen_length=(8,), code_gen_length=8,
                  block_length=(8,), batch_size=(2,), repeats=2, warmup=1, methods=methods)
    logs: list[str] = []
    bench = Bench(llada, suite, items=tiny_items(), verifier=None, log=logs.append)
    results = bench.run()
    results = {"environment": environment(llada.device, "dlm bench --test"), "model": model_info(llada), **results}
    out = tmp_path_factory.mktemp("bench")
    files = write_report(results, out)
    return results, out, files, logs
