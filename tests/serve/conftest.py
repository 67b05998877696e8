"""Servers for the tests: real ``dlm serve`` processes (uvicorn) on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'dlm[serve]')")
httpx = pytest.importorskip("httpx")

import dlm  # noqa: E402
from dlm.testing import write_tiny_checkpoint  # noqa: E402

START_TIMEOUT_S = 120
# no cache, one token per step over ~1000 positions: minutes on a CPU, so it is still running when we look
ENDLESS = {"prompt": "def add(a, b):", "max_tokens": 992, "logits_eos_inf": True}


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A ``dlm serve`` process; ``url`` is its base URL, ``log`` its captured output."""

    def __init__(self, args: list[str], log: Path, launcher: str | None = None, script: str | None = None):
        """``launcher``: ``python -c`` code to run instead of ``python -m dlm.serve``; ``script``: a file."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        head = [sys.executable, "-m", "dlm.serve"]
        if launcher is not None:
            head = [sys.executable, "-c", launcher]
        elif script is not None:
            head = [sys.executable, script]
        cmd = head + ["--port", str(self.port), "--threads", "1", "--log-level", "warning", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dlm serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dlm serve did not start within {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def metric(self, name: str, headers: dict | None = None) -> float:
        """The sum of a metric's samples (over its labels) from /metrics."""
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=10).text
        total, found = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        assert found, f"{name} not in /metrics"
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def model():
    """The bundled dlm-tiny, in this process: the reference answers."""
    return dlm.load(device="cpu")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """dlm serve with the bundled model (32 rows)."""
    yield from running(["--max-rows", "32", "--max-queue", "512"], tmp_path_factory.mktemp("serve") / "server.log")


@pytest.fixture(scope="session")
def chat_path(tmp_path_factory):
    """A tiny random LLaDA checkpoint whose tokenizer has a (Llama-3 style) chat template."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("chat"), "llada", seed=1)


@pytest.fixture(scope="session")
def chat_server(chat_path, tmp_path_factory):
    yield from running(["--model", str(chat_path), "--max-rows", "4"], tmp_path_factory.mktemp("chat") / "server.log")


def openai_client(server: ServerProcess):
    """The official client of ``server``'s API (no retries: every refusal is seen)."""
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def running(args: list[str], log: Path):
    """A ``dlm serve`` process for a fixture: yields it, stops it afterwards."""
    s = ServerProcess(args, log)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai_client(server)


# a scheduler plugin that breaks: "explode" raises at its first step. The server's launcher imports it (so the
# engine's process must register it too, by its module name).
EXPLODING_PLUGIN = """
import dlm
from dlm.schedulers.low_confidence import LowConfidence

@dlm.register_scheduler("explode")
class Explode(LowConfidence):
    def step(self, cand, view, state):
        raise RuntimeError("boom")
"""
LAUNCHER = """
import sys
import {module}
from dlm.serve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def plugin_launcher(folder: Path, source: str = EXPLODING_PLUGIN, module: str = "explode_plugin") -> str:
    """``python -c`` code that imports ``source`` as ``module`` from ``folder`` and runs dlm serve."""
    (folder / f"{module}.py").write_text(source)
    return f"import sys; sys.path.insert(0, {str(folder)!r})\n" + LAUNCHER.format(module=module)


KEY = "s3cret-key"


@pytest.fixture(scope="session")
def small_server(tmp_path_factory):
    """2 rows, a queue of 1, an API key, a 6 s request timeout, and the exploding scheduler."""
    folder = tmp_path_factory.mktemp("small")
    s = ServerProcess(["--max-rows", "2", "--max-queue", "1", "--api-key", KEY, "--request-timeout", "6"],
                      folder / "server.log", launcher=plugin_launcher(folder))
    yield s
    s.stop()
