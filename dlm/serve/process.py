"""The engine in a process of its own (``dlm serve``'s default, as vLLM and SGLang run theirs).

    backend = ProcessBackend(build, name="0")   # spawns the process; build() runs there and returns the Engine
    backend.wait_ready()                        # its model loaded and graphs captured (or its error raised here)
    loop = EngineLoop(backend, metrics)         # dlm.serve.loop: the asyncio side, the same for both backends

Why a process: Python runs one thread at a time per process. In a thread beside the HTTP side, the engine's
steps (mostly Python for a small model) wait whenever the server streams answers; a step that takes 13-16 ms
alone took 31-33 ms served (BENCHMARKS.md, Serving). In its own process the engine steps at its own pace.

The child loads the model (``build``), runs an :class:`~dlm.serve.driver.EngineDriver` in its main thread and
reads commands (submit, cancel, stop) in a second one. Each engine iteration goes back as ONE message: the
driver's list of items, whose step progress is plain data (:mod:`dlm.serve.progress`) and whose errors are
dlm's own (or a GenerationError naming the original). Messages are pickled by :mod:`multiprocessing` between
this server's own processes; nothing a client sends is unpickled.

Components registered in the server's process at run time (``@dlm.register_scheduler`` in a launcher script
or a module it imports) are registered in the engine's process too, by their ``module:Class``; entry-point
plugins load themselves there as anywhere. A class the engine's process cannot import (defined in
``python -c`` code or under a ``__main__`` guard) makes the start fail with a message that says so.

A child that dies ends its running jobs with a GenerationError and turns ``/health`` to 503; a server that
dies closes the pipe, which ends the child. The child ignores SIGINT and SIGTERM (Ctrl-C, or a signal sent to the
whole process group, as a service manager does): the server, which gets them too, drains its requests and then
stops the child.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from typing import Any, Callable

from ..config import GenerationConfig
from ..errors import DlmError, GenerationError, RegistryError, portable
from .driver import EngineDriver
from .loop import engine_info
from .progress import Outcome

log = logging.getLogger("dlm.serve")
CTX = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
POLL_S = 0.5


class ProcessBackend:
    """One engine in a spawned process (see the module doc). ``build``: a picklable callable (a module-level
    function or a partial of one) that returns the :class:`dlm.Engine`, run in the child."""

    where = "process"  # where the engine runs, as /v1/models reports it

    def __init__(self, build: Callable[[], Any], name: str = "0"):
        self.name = name
        self.info: dict[str, Any] | None = None
        self._stopping = False
        self._send_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=child_main, args=(child, build, runtime_entries()),
                                name=f"dlm-engine-{name}")
        self.proc.start()
        child.close()
        atexit.register(self.stop, 5.0)  # before multiprocessing's own exit handler joins the child

    def wait_ready(self) -> dict[str, Any]:
        """Wait until the child's engine is built; its info (rows, slot length, ...). Raises the child's error,
        or a DlmError when it exits without one."""
        while not self._conn.poll(POLL_S):
            if not self.proc.is_alive():
                break
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.proc.join(10)
            raise DlmError(f"the engine process {self.name} exited with code {self.proc.exitcode} before its "
                           "engine was ready (its output is above)") from None
        if kind == "failed":
            self.proc.join(10)
            raise payload
        self.info = payload
        return payload

    # ----------------------------------------------------------------- the backend interface of EngineLoop
    def start(self, deliver: Callable[[list], None], died: Callable[[str], None]) -> None:
        self._reader = threading.Thread(target=self._read, args=(deliver, died), name=f"dlm-engine-{self.name}-pipe",
                                        daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.proc.is_alive() and self._reader is not None and self._reader.is_alive()

    def submit(self, key: int, prompt_ids: list[int], config, wants_steps: bool, every: int) -> None:
        self._send(("submit", key, prompt_ids, config.to_dict(), wants_steps, every))

    def cancel(self, key: int) -> None:
        self._send(("cancel", key))

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to cancel what runs and exit; kill it if it has not within ``timeout`` s (it ignores
        SIGTERM, see the module doc)."""
        self._stopping = True
        self._send(("stop",))
        self.proc.join(timeout)
        if self.proc.is_alive():
            log.warning("dlm serve: engine process %s did not stop within %g s; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.join(5)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)

    # ----------------------------------------------------------------- internals
    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone (the reader reports it) or the pipe was closed
                pass

    def _read(self, deliver: Callable[[list], None], died: Callable[[str], None]) -> None:
        reason = None
        while True:
            try:
                items = self._conn.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # noqa: BLE001 - a message that cannot be read: the engine cannot go on
                log.exception("dlm serve: a message from engine process %s could not be read", self.name)
                reason = f"a message from the engine process {self.name} could not be read ({type(exc).__name__})"
                self.proc.kill()
                break
            deliver(items)
        self.proc.join(5)
        if not self._stopping:
            code = self.proc.exitcode
            died(reason or f"the engine process {self.name} exited unexpectedly (exit code {code}); its requests "
                           "failed")


# ------------------------------------------------------------------------------------- plugins across processes
def _registries() -> dict[str, Any]:
    from ..cache.base import CACHES
    from ..models.base import MODELS
    from ..schedulers.base import SCHEDULERS
    from ..verify.base import VERIFIERS

    return {"scheduler": SCHEDULERS, "cache": CACHES, "verifier": VERIFIERS, "model": MODELS}


def runtime_entries() -> list[tuple[str, str, str]]:
    """``(registry, name, "module:QualName")`` of every component registered in this process outside dlm and
    not through an entry point: what the engine's process must register too."""
    from ..registry import BUILTIN

    out = []
    for kind, registry in _registries().items():
        for e in registry.entries():
            if e.plugin or e.source == BUILTIN:
                continue
            target = e.target or f"{e.obj.__module__}:{e.obj.__qualname__}"
            out.append((kind, e.name, target))
    return out


def install_entries(entries: list[tuple[str, str, str]]) -> None:
    """Register ``entries`` (from :func:`runtime_entries`) here, each checked by importing it now. An entry that
    overrode a name (a built-in's, a plugin's) overrides it here too."""
    registries = _registries()
    for kind, name, target in entries:
        registry = registries[kind]
        try:
            if name not in registry:
                registry.register(name, target)
            elif _target_of(registry, name) != target:
                registry.register(name, target, override=True)
            registry.get(name)
        except Exception as exc:  # noqa: BLE001 - reported as one clear error at the server's start
            raise RegistryError(
                f"the {kind} {name!r} ({target}), registered in the server's process, cannot be imported by the "
                f"engine's process ({type(exc).__name__}: {exc}); define it in an importable module (not in "
                "'python -c' code or under an 'if __name__ == \"__main__\"' guard), or serve with "
                "--no-engine-process") from None


def _target_of(registry, name: str) -> str | None:
    """``module:QualName`` of what ``registry`` holds under ``name`` (its lazy target, or its class's)."""
    entry = next(e for e in registry.entries() if e.name == name)
    if entry.obj is not None:
        return f"{entry.obj.__module__}:{entry.obj.__qualname__}"
    return entry.target


# ------------------------------------------------------------------------------------- the child
def child_main(conn, build: Callable[[], Any], entries: list[tuple[str, str, str]]) -> None:
    """The engine process: build the engine, say ready (or why not), then step it for the server. The pipe is
    read from the start, so a server that dies (or stops) while the model loads ends this process too."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a signal to the whole group: the server stops this process
        signal.signal(sig, signal.SIG_IGN)
    commands = Commands(conn)
    commands.start()
    try:
        install_entries(entries)
        engine = build()
        info = engine_info(engine)
    except BaseException as exc:  # noqa: BLE001 - the server raises it at its start
        if not isinstance(exc, DlmError):
            traceback.print_exc()
        _send_quietly(conn, ("failed", portable(exc, with_traceback=False)))
        return
    if not _send_quietly(conn, ("ready", info)):
        return  # the server is gone
    driver = EngineDriver(engine)
    commands.serve(driver)
    driver.run(lambda items: _send_items(conn, items, driver))


class Commands(threading.Thread):
    """Reads the server's commands: before the engine exists, only the end of the pipe or a stop can come,
    and either ends the process at once; then submit, cancel and stop go to the driver."""

    def __init__(self, conn):
        super().__init__(name="dlm-engine-commands", daemon=True)
        self.conn = conn
        self._driver: EngineDriver | None = None
        self._ready = threading.Event()

    def serve(self, driver: EngineDriver) -> None:
        self._driver = driver
        self._ready.set()

    def run(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the server is gone
                message = ("stop",)
            if self._driver is None and message[0] == "stop":
                os._exit(0)  # still loading: nothing to drain, and the main thread may be deep in CUDA
            self._ready.wait()
            if not self._handle(message):
                return

    def _handle(self, message: tuple) -> bool:
        driver = self._driver
        kind = message[0]
        if kind == "submit":
            _, key, prompt_ids, fields, wants_steps, every = message
            try:
                config = GenerationConfig.from_dict(fields)
            except Exception as exc:  # noqa: BLE001 - validated by the server already; refused if not
                driver.refuse(key, exc)
                return True
            driver.submit(key, prompt_ids, config, wants_steps=wants_steps, every=every)
        elif kind == "cancel":
            driver.cancel(message[1])
        else:  # stop
            driver.stop()
            return False
        return True


def _send_quietly(conn, message: tuple) -> bool:
    try:
        conn.send(message)
    except (OSError, ValueError):
        return False
    return True


def _send_items(conn, items: list, driver: EngineDriver) -> None:
    try:
        conn.send([_portable_item(item) for item in items])
    except (OSError, ValueError):  # the server is gone: stop
        driver.stop()
    except Exception:  # noqa: BLE001 - an item that cannot be pickled must not end the engine
        log.exception("dlm serve: an engine message could not be sent; sending its items one by one")
        _send_quietly(conn, [x for x in (_sendable(_portable_item(item)) for item in items) if x is not None])


def _sendable(item: tuple) -> tuple | None:
    """``item`` if it pickles; else, for an acceptance or an end, the same with a GenerationError (a request
    must still end), and for anything else None (not delivered)."""
    try:
        pickle.dumps(item)
        return item
    except Exception as exc:  # noqa: BLE001
        error = GenerationError(f"the engine's report could not be sent ({type(exc).__name__}: {exc})")
    kind, key, _ = item
    if kind == "accept":
        return kind, key, error
    if kind == "end":
        return kind, key, Outcome("failed", error, 0, None)
    return None


def _portable_item(item: tuple) -> tuple:
    """``item`` with its error (a refusal's, an outcome's) made able to cross to the server."""
    kind, key, payload = item
    if kind == "accept" and payload is not None:
        return kind, key, portable(payload, with_traceback=False)
    if kind == "end" and isinstance(payload, Outcome) and payload.error is not None:
        return kind, key, dataclasses.replace(payload, error=portable(payload.error, with_traceback=False))
    return item
