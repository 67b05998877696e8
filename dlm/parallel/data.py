"""Data parallelism: one model replica per device, each in its own process, prompts split between them.

    with ReplicaPool.from_path("path/to/model", ["cuda:0", "cuda:1"]) as pool:   # loads once per device
        out = pool.generate(prompts, dlm.GenerationConfig(gen_length=256), batch_size=32)

    out = generate_data_parallel("path/to/model", prompts, config, ["cuda:0", "cuda:1"])    # one-shot

Workers are started with torch.multiprocessing's ``spawn`` (the start method CUDA needs), so a plain ``python``
process or the ``dlm`` command runs them with no launcher. Each worker loads its replica once and then answers
requests; the prompts of a request are cut into contiguous shares (sizes differ by at most one), share r goes to
replica r, and the answers come back merged in input order. A row's answer does not depend on the rows beside it
(the engine's promise), so the merged output equals one process generating everything.

On the CPU the same code runs N processes on the CPU (each gets an equal part of the cores): the tests use that.
A worker that raises sends its error back (re-raised here with its class and message); a worker that dies ends
the pool with a GenerationError naming it; nothing waits forever on a dead worker.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import time
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError, GenerationError, portable

Loader = Callable[[torch.device], Any]  # device -> DiffusionLM (picklable: a module-level function or a partial)
POLL_S = 0.5


def replica_devices(n: int | str, device: str | None = None) -> list[torch.device]:
    """The devices of ``n`` replicas: ``cuda:0`` .. ``cuda:n-1`` (``"auto"``: every visible GPU), or ``n`` times
    the CPU when ``device`` is ``"cpu"`` or no GPU is visible (``"auto"``: one)."""
    gpus = torch.cuda.device_count()
    on_cpu = (device is not None and torch.device(device).type == "cpu") or gpus == 0
    if n == "auto":
        n = 1 if on_cpu else gpus
    if isinstance(n, str) and n.isdigit():
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"data parallel needs a positive number of replicas or 'auto', got {n!r}")
    if on_cpu:
        return [torch.device("cpu")] * n
    if device is not None and torch.device(device).type != "cuda":
        raise ConfigError(f"data parallel runs on 'cuda' or 'cpu' devices, got {device!r}")
    if n > gpus:
        raise ConfigError(f"data parallel over {n} GPUs, but {gpus} are visible (CUDA_VISIBLE_DEVICES)")
    return [torch.device("cuda", i) for i in range(n)]


def load_replica(path: str | None, load_kwargs: dict[str, Any], device: torch.device):
    """The default loader: ``dlm.load(path, device=device, **load_kwargs)``."""
    from ..api import load

    return load(path, device=device, **load_kwargs)


def _worker(rank: int, device: torch.device, loader: Loader, threads: int, inbox, outbox) -> None:
    """A replica's process: load, say ready, answer pickled (task id, prompts, config dict, batch size) until
    ``None``. Answers go back pickled here, so a value that cannot travel becomes an error message instead of
    being dropped by the queue's feeder thread (which would leave the parent waiting)."""
    try:
        torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        lm = loader(device)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        outbox.put(("error", rank, None, portable(exc)))
        return
    outbox.put(("ready", rank, None, None))
    while True:
        task = inbox.get()
        if task is None:
            return
        task_id, prompts, config, batch_size = pickle.loads(task)
        try:
            from ..config import GenerationConfig

            out = lm.generate(prompts, GenerationConfig.from_dict(config), batch_size=batch_size, progress=False)
            outbox.put(("done", rank, task_id, pickle.dumps(out)))
        except BaseException as exc:  # noqa: BLE001
            outbox.put(("error", rank, task_id, portable(exc)))


def shares(n: int, parts: int) -> list[range]:
    """Contiguous index ranges of ``n`` items over ``parts`` (sizes differ by at most one)."""
    return [range(r * n // parts, (r + 1) * n // parts) for r in range(parts)]


def as_prompt_list(prompts: Any) -> list:
    """The prompts as a list, one item per answer (what DiffusionLM.encode accepts, split into rows)."""
    if isinstance(prompts, torch.Tensor):
        return [row.tolist() for row in (prompts.unsqueeze(0) if prompts.dim() == 1 else prompts)]
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and isinstance(items[0], int):
        return [items]
    return items


class ReplicaPool:
    """One worker process per device, each holding a replica loaded by ``loader(device)`` (see the module doc).

    Args:
        loader: picklable ``device -> DiffusionLM`` (:meth:`from_path` builds one for a checkpoint folder).
        devices: one device per replica (several may be the CPU).
        start_timeout: seconds to wait for every replica to load (``None``: no limit).
        threads: torch threads per worker (default: the cores divided evenly between the workers).
    """

    def __init__(self, loader: Loader, devices: Sequence[str | torch.device], *,
                 start_timeout: float | None = 1800.0, threads: int | None = None):
        if not devices:
            raise ConfigError("a replica pool needs at least one device")
        ctx = torch.multiprocessing.get_context("spawn")
        self.devices = [torch.device(d) for d in devices]
        threads = threads or max(1, (os.cpu_count() or 1) // len(self.devices))
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in self.devices]
        self._procs = [ctx.Process(target=_worker, args=(r, d, loader, threads, self._inboxes[r], self._outbox),
                                   daemon=True, name=f"dlm-replica-{r}") for r, d in enumerate(self.devices)]
        self._next_task = 0
        self._closed = False
        for p in self._procs:
            p.start()
        try:
            self._collect({r: None for r in range(len(self._procs))}, start_timeout)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_path(cls, path: str | os.PathLike | None, devices: Sequence[str | torch.device], *,
                  start_timeout: float | None = 1800.0, **load_kwargs: Any) -> "ReplicaPool":
        """Replicas of ``dlm.load(path, **load_kwargs)``; the folder is checked here before any process starts."""
        from ..models.loading import read_config, weight_files

        bad = sorted(set(load_kwargs) & {"device", "device_map", "max_memory", "tensor_parallel"})
        if bad:
            raise ConfigError(f"data parallel places each replica on one device itself; drop {', '.join(bad)}")
        if path is not None:
            folder, _, _ = read_config(path)
            weight_files(folder)
        loader = functools.partial(load_replica, None if path is None else str(path), dict(load_kwargs))
        return cls(loader, devices, start_timeout=start_timeout)

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._procs)

    def generate(self, prompts: Any, config=None, *, batch_size: int | None = None,
                 replicas: Sequence[int] | None = None, timeout: float | None = None, **overrides: Any):
        """Generate for ``prompts`` over the replicas (all, or the ranks in ``replicas``), like
        :meth:`DiffusionLM.generate`. ``timings["total"]`` is the wall time of the call; the other timings and
        the statistics are summed over the replicas."""
        from ..api.lm import merge_outputs
        from ..config import GenerationConfig

        if self._closed:
            raise GenerationError("this replica pool is closed")
        config = config or GenerationConfig()
        if overrides:
            config = config.replace(**overrides)
        items = as_prompt_list(prompts)
        if not items:
            raise ConfigError("the batch of prompts is empty; pass at least one prompt")
        ranks = list(range(len(self))) if replicas is None else list(replicas)
        if not ranks or any(not 0 <= r < len(self) for r in ranks) or len(set(ranks)) != len(ranks):
            raise ConfigError(f"replicas must be distinct ranks in [0, {len(self)}), got {replicas!r}")
        t0 = time.perf_counter()
        pending = {}
        for rank, part in zip(ranks, shares(len(items), len(ranks))):
            if len(part):
                pending[rank] = self._next_task
                task = (self._next_task, [items[i] for i in part], config.to_dict(), batch_size)
                self._inboxes[rank].put(pickle.dumps(task))
                self._next_task += 1
        results = self._collect(pending, timeout)
        out = merge_outputs([results[r] for r in ranks if r in results])
        out.timings["total"] = time.perf_counter() - t0
        return out

    def _collect(self, pending: dict[int, int | None], timeout: float | None) -> dict[int, Any]:
        """Wait for the message of each rank in ``pending`` (rank -> task id, ``None`` for "ready")."""
        deadline = None if timeout is None else time.monotonic() + timeout
        got: dict[int, Any] = {}
        while len(got) < len(pending):
            try:
                kind, rank, task, payload = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                self._check_alive()
                if deadline is not None and time.monotonic() > deadline:
                    self.close()
                    raise GenerationError(f"replicas {sorted(set(pending) - set(got))} gave no answer within "
                                          f"{timeout} s; the pool is closed") from None
                continue
            if rank not in pending or task != pending[rank]:
                continue  # the late answer of a request that already failed on another replica
            if kind == "error":
                raise payload
            got[rank] = None if payload is None else pickle.loads(payload)  # sent by our own worker
        return got

    def _check_alive(self) -> None:
        for rank, p in enumerate(self._procs):
            if not p.is_alive():
                self.close()
                raise GenerationError(f"replica {rank} on {self.devices[rank]} exited (code {p.exitcode}); "
                                      "the pool is closed")

    def close(self) -> None:
        """Stop the workers (each finishes its current request first, or is terminated after 30 s)."""
        if self._closed:
            return
        self._closed = True
        for inbox, p in zip(self._inboxes, self._procs):
            if p.is_alive():
                inbox.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def generate_data_parallel(path: str | os.PathLike | None, prompts: Any, config=None,
                           devices: Sequence[str | torch.device] | None = None, *, batch_size: int | None = None,
                           timeout: float | None = None, **load_kwargs: Any):
    """Load one replica of ``path`` per device (default: every visible GPU), generate
    ``prompts`` split between them, return the merged output in input order (see :class:`ReplicaPool`)."""
    devices = replica_devices("auto") if devices is None else devices
    with ReplicaPool.from_path(path, devices, **load_kwargs) as pool:
        return pool.generate(prompts, config, batch_size=batch_size, timeout=timeout)
