"""The engine in a process of its own (dlm serve's default) against the engine in a thread (--no-engine-process):
the same answers; a dead engine process fails its requests and turns /health to 503; a dead server ends its
engine process; plugins registered by the server's launcher reach the engine, and one the engine cannot import
stops the start with a message that says why."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from dlm.errors import RegistryError
from dlm.serve.process import install_entries, runtime_entries

from .conftest import ENDLESS, EXPLODING_PLUGIN, LAUNCHER, ServerProcess, wait_for

SCHEDULERS = [("low_confidence", {}), ("threshold", {"threshold": 0.8}), ("margin_threshold", {}),
              ("entropy", {}), ("random", {}), ("topk_margin", {})]
CACHES = ["none", "prefix", "dual", "delayed", "window"]


def engine_pid(server: ServerProcess) -> int:
    found = re.search(r"engine 0 runs in process (\d+)", server.log())
    assert found, server.log()
    return int(found.group(1))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie until its parent reaps it counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] == "Z"


def random_bodies(n: int, seed: int) -> list[dict]:
    """Requests over the schedulers, caches, block lengths, stop strings, greedy and seeded sampling."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scheduler, kwargs = rng.choice(SCHEDULERS)
        block = rng.choice([8, 16, 32])
        body = {"prompt": f"def f{i}(x):" + " " * rng.randint(0, 3) + rng.choice(["return", "y =", "#"]),
                "max_tokens": 32, "block_length": block, "steps": 32 // rng.choice([1, 2, 4]) if block == 32 else
                32 // block * rng.choice([2, 4, 8]), "scheduler": scheduler, "scheduler_kwargs": kwargs,
                "cache": rng.choice(CACHES), "seed": rng.randint(0, 99), "return_token_ids": True,
                "temperature": rng.choice([0.0, 0.0, 0.7]), "stream": rng.random() < 0.5}
        if body["cache"] == "delayed":
            body["cache_kwargs"] = {"refresh_every": 2}
        if rng.random() < 0.2:
            body["stop"] = ["\n"]
        out.append(body)
    return out


async def answers(url: str, bodies: list[dict]) -> list[list[int]]:
    """Each request's answer ids (streamed ones reassembled from their chunks), all sent at once."""

    async def one(http: httpx.AsyncClient, body: dict) -> list[int]:
        if not body["stream"]:
            r = await http.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["token_ids"]
        ids: list[int] = []
        async with http.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    ids += chunk["choices"][0].get("token_ids", [])
        return ids

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        return await asyncio.gather(*(one(http, b) for b in bodies))


@pytest.mark.slow
def test_the_engine_process_gives_the_engine_threads_answers(tmp_path):
    bodies = random_bodies(40, seed=3)
    got = {}
    for mode, where in (("--engine-process", "process"), ("--no-engine-process", "thread")):
        s = ServerProcess(["--max-rows", "6", mode], tmp_path / f"{mode}.log")
        try:
            assert httpx.get(s.url + "/v1/models").json()["data"][0]["dlm"]["engine"] == where
            got[mode] = asyncio.run(answers(s.url, bodies))
            assert s.metric("dlm_active_rows") == 0
        finally:
            s.stop()
    assert got["--engine-process"] == got["--no-engine-process"]
    assert sum(len(ids) for ids in got["--engine-process"]) > 20 * 8  # answers, not empty lists


@pytest.mark.slow
def test_a_dead_engine_process_fails_its_requests_and_health(tmp_path):
    s = ServerProcess(["--max-rows", "2"], tmp_path / "server.log")
    try:
        pid = engine_pid(s)
        with httpx.stream("POST", s.url + "/v1/completions", json={**ENDLESS, "stream": True}, timeout=120) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # it is decoding
            os.kill(pid, signal.SIGKILL)
            rest = list(lines)
        errors = [json.loads(line[6:])["error"] for line in rest if line.startswith("data: {") and "error" in line]
        assert errors and "engine process 0 exited unexpectedly" in errors[0]["message"], rest[-3:]
        assert [line for line in rest if line][-1] == "data: [DONE]"
        assert httpx.get(s.url + "/health").status_code == 503
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
        assert "exit code -9" in s.log()
    finally:
        # the server itself still shuts down cleanly (uvicorn re-raises the signal that stopped it)
        assert s.stop() in (0, -signal.SIGTERM)


@pytest.mark.slow
def test_a_killed_server_ends_its_engine_process(tmp_path):
    s = ServerProcess(["--max-rows", "2"], tmp_path / "server.log")
    pid = engine_pid(s)
    s.stop(signal.SIGKILL)
    wait_for(lambda: gone(pid), timeout=30)


def assert_explodes(s: ServerProcess) -> None:
    """The server runs the "explode" plugin (a 500 naming its error), then stops."""
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8, "scheduler": "explode"},
                       timeout=60)
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
    finally:
        s.stop()


@pytest.mark.slow
def test_a_plugin_the_engine_process_cannot_import_stops_the_start(tmp_path):
    code = EXPLODING_PLUGIN + LAUNCHER.format(module="os")  # the plugin lives in the -c code's __main__
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match="exited with 2") as info:
        ServerProcess([], log, launcher=code)
    assert "the scheduler 'explode' (__main__:Explode)" in str(info.value)
    assert "--no-engine-process" in str(info.value)
    s = ServerProcess(["--no-engine-process"], tmp_path / "thread.log", launcher=code)  # the thread sees it
    assert_explodes(s)


def test_runtime_entries_name_what_this_process_registered(tmp_path, monkeypatch):
    from dlm.schedulers.base import SCHEDULERS

    assert all(target.split(":")[0] != "dlm" and not target.startswith("dlm.")
               for _, _, target in runtime_entries())
    (tmp_path / "my_plugin_mod.py").write_text(EXPLODING_PLUGIN.replace('"explode"', '"explode_entries"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_plugin_mod  # noqa: F401

    try:
        assert ("scheduler", "explode_entries", "my_plugin_mod:Explode") in runtime_entries()
        SCHEDULERS.unregister("explode_entries")
        install_entries([("scheduler", "explode_entries", "my_plugin_mod:Explode")])
        assert SCHEDULERS.get("explode_entries").__name__ == "Explode"
        with pytest.raises(RegistryError, match="'gone_one' .*cannot be imported by the engine's process"):
            install_entries([("scheduler", "gone_one", "no_such_module_here:Nope")])
    finally:
        SCHEDULERS.unregister("explode_entries")
        SCHEDULERS.unregister("gone_one")


def test_a_launcher_script_with_a_main_guard_still_serves(tmp_path):
    """A launcher file whose plugin is defined at its top level: the engine's process imports the file again
    (as multiprocessing does) and finds the plugin."""
    script = tmp_path / "launch.py"
    script.write_text(EXPLODING_PLUGIN + "\nif __name__ == '__main__':\n    import sys\n"
                      "    from dlm.serve.cli import main\n    sys.exit(main(sys.argv[1:]))\n")
    s = ServerProcess([], tmp_path / "server.log", script=str(script))
    assert_explodes(s)


def test_an_override_of_a_built_in_name_reaches_the_engine_process(tmp_path, monkeypatch):
    from dlm.schedulers.base import SCHEDULERS

    (tmp_path / "override_mod.py").write_text(EXPLODING_PLUGIN.replace('@dlm.register_scheduler("explode")\n', ""))
    monkeypatch.syspath_prepend(str(tmp_path))
    original = SCHEDULERS.get("low_confidence")
    try:
        install_entries([("scheduler", "low_confidence", "override_mod:Explode")])
        assert SCHEDULERS.get("low_confidence").__module__ == "override_mod"
    finally:
        SCHEDULERS.register("low_confidence", original, override=True)
    assert SCHEDULERS.get("low_confidence") is original


SLOW_TO_LOAD = """
import multiprocessing, time
if multiprocessing.current_process().name.startswith("dlm-engine"):
    time.sleep(120)  # the engine's process "loads" for two minutes
"""


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.slow
def test_a_server_killed_while_its_engine_loads_ends_the_engine_process(tmp_path):
    from .conftest import free_port, plugin_launcher

    code = plugin_launcher(tmp_path, EXPLODING_PLUGIN + SLOW_TO_LOAD, module="slow_plugin")
    cmd = [sys.executable, "-c", code, "--port", str(free_port()), "--threads", "1"]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: children(proc.pid), timeout=60)  # the engine's process is loading
            engine = children(proc.pid)[-1]
            time.sleep(1)
            proc.kill()
            proc.wait()
            wait_for(lambda: gone(engine), timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_report_that_cannot_be_pickled_still_ends_its_request():
    import threading

    from dlm.serve.process import _sendable
    from dlm.serve.progress import Outcome

    lock = threading.Lock()  # cannot be pickled
    ended = _sendable(("end", 7, Outcome("done", None, 3, [lock])))
    assert ended[0] == "end" and ended[1] == 7 and ended[2].status == "failed"
    assert "could not be sent" in str(ended[2].error)
    assert _sendable(("accept", 8, lock))[2].__class__.__name__ == "GenerationError"
    assert _sendable(("event", 9, lock)) is None
    assert _sendable(("event", 9, 1)) == ("event", 9, 1)


def test_an_error_from_the_engine_process_reads_as_it_would_from_a_thread():
    import pickle

    from dlm.errors import portable
    from dlm.serve.completion import engine_error

    original = RuntimeError("CUDA out of memory")
    crossed = pickle.loads(pickle.dumps(portable(original, with_traceback=False)))
    assert engine_error(crossed).body() == engine_error(original).body()
    assert engine_error(crossed).body()["error"]["code"] == "RuntimeError"
