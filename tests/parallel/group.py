"""Run a function in N spawned processes forming a gloo process group, with a deadline (a hung collective or a
dead rank fails the test instead of blocking it), and return each rank's result."""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world: int, port: int, results, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
        results.put((rank, True, _plain(fn(rank, world, *args))))
    except BaseException:  # noqa: BLE001 - the parent fails the test with this text
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _plain(value):
    """Tensors as numpy arrays: a torch queue passes tensors through shared memory that the sender must keep
    alive until they are received, and a finished rank exits at once."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def run_group(fn, world: int, *args, timeout: float = 300.0) -> list:
    """``fn(rank, world, *args)`` in ``world`` processes (a gloo group is initialised first); results by rank.
    Raises AssertionError with the first failing rank's traceback, or on the deadline."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, results, args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    got: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(got) < world:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in got]
                if dead:
                    raise AssertionError(f"rank(s) {dead} died without a result") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"process group did not finish within {timeout} s") from None
                continue
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            got[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [got[r] for r in range(world)]


def outputs(lm, key: str, probe: torch.Tensor, prompts: list, configs: dict) -> dict:
    """What the tensor-parallel tests compare, under ``key``: the logits of ``probe`` and the tokens of each named
    generation config."""
    with torch.no_grad():
        out = {key + "/logits": lm.model(probe).float()}
    for name, cfg in configs.items():
        out[f"{key}/{name}"] = lm.generate(prompts, cfg).sequences
    return out


def one_process(paths: dict, probe: torch.Tensor, prompts: list, configs: dict, extra: dict) -> dict:
    """:func:`outputs` of each checkpoint of ``paths`` loaded in this process on the CPU, plus ``extra``
    (name -> function of the loaded model) under each key: the references of the tensor-parallel tests."""
    import dlm

    out = {}
    for key, path in paths.items():
        lm = dlm.load(path, device="cpu")
        out.update(outputs(lm, key, probe, prompts, configs), **{f"{key}/{k}": f(lm) for k, f in extra.items()})
    return out
