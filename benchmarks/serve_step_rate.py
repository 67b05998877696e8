"""How fast a served engine steps: ``dlm serve`` started as ``dlm bench serve`` starts it, the same workload at
one concurrency sent ``--reps`` times in a row, and for each round the server's own counters read from
``/metrics`` before and after it: engine steps, milliseconds per engine iteration (wall time over steps), the
time inside the step (``dlm_engine_step_seconds``: the forward, sampling, commits and the step's progress
records), rows per step (committed answer positions per step over 4: the default workload commits 4 positions
of each request a step and ``max_tokens`` is its canvas), and the client's tokens/s. One line of JSON per round.

    python benchmarks/serve_step_rate.py --modes engine-process no-engine-process --reps 4     # dlm-tiny, c=32

The first round after the start is the server's first at this concurrency (its cold steps); later rounds are
its steady state. ``--modes``: ``engine-process`` / ``no-engine-process``, optionally ``:T`` for the server's
``--threads T``. ``--count-compiles``: each server gets empty Triton and Inductor cache folders, and each round
reports the files in them (kernels compiled so far). ``--py-spy DIR`` (needs py-spy): during the last round,
``py-spy record`` samples the server and its engine process (``--subprocesses``, ``--nonblocking``) into
``DIR/MODE.txt`` (py-spy's raw format: one line per distinct stack, then its sample count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from dlm.serve.bench import configure, launched_server, make_workload, run_level


def scrape(url: str) -> dict[str, float]:
    """Every metric of ``url``/metrics summed over its labels."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        key = name.split("{")[0]
        out[key] = out.get(key, 0.0) + float(value)
    return out


def compiled_files() -> int | None:
    """Files in the server's Triton and Inductor caches (``--count-compiles``), else None."""
    dirs = [os.environ.get(k) for k in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")]
    if not all(dirs):
        return None
    return sum(len(files) for d in dirs for _, _, files in os.walk(d))


def server_pid(url: str) -> int:
    """The pid of the ``dlm serve`` process listening at ``url`` (it was started with ``--port PORT``)."""
    import psutil

    port = url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "dlm.serve" in cmd and port in cmd:
            return proc.info["pid"]
    raise RuntimeError(f"no dlm serve process found for {url}")


def py_spy(url: str, out: Path, seconds: float) -> subprocess.Popen:
    """``py-spy record`` of the server at ``url`` and its engine process for ``seconds``, into ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "--pid", str(server_pid(url)), "--subprocesses", "--nonblocking",
                             "--rate", "250", "--duration", str(int(seconds)), "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def rounds(spec: str, concurrency: int, requests: int, max_tokens: int, reps: int, log: Path,
           spy: Path | None = None) -> list[dict]:
    mode, _, threads = spec.partition(":")
    p = argparse.ArgumentParser()
    configure(p)
    args = p.parse_args(["--max-tokens", str(max_tokens), f"--{mode}"] + (["--threads", threads] if threads else []))
    out = []
    with launched_server(args, concurrency, log) as url:
        card = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]
        work = make_workload(card, requests, max_tokens, {"steps": max_tokens // 4, "logits_eos_inf": True}, 64)
        bodies = [work.body(i, card["id"]) for i in range(requests)]
        asyncio.run(run_level(url, bodies[:8], 8))  # what dlm bench serve warmed with before 2026-11-29
        before = {"mode": spec, "compiled_files_before_the_rounds": compiled_files()}
        print(json.dumps(before), flush=True)
        out.append(before)
        for rep in range(reps):
            recorder = py_spy(url, spy / f"{spec.replace(':', '_')}.txt", 3) if spy and rep == reps - 1 else None
            a, t = scrape(url), time.perf_counter()
            level = asyncio.run(run_level(url, bodies, concurrency)).summary()
            wall, b = time.perf_counter() - t, scrape(url)
            steps = b["dlm_engine_steps_total"] - a["dlm_engine_steps_total"]
            inside = b["dlm_engine_step_seconds_sum"] - a["dlm_engine_step_seconds_sum"]
            committed = b["dlm_committed_tokens_total"] - a["dlm_committed_tokens_total"]
            row = {"mode": spec, "rep": rep, "wall_s": round(wall, 2), "tok_s": round(level["output_tokens_per_s"], 1),
                   "steps": steps, "ms_per_iteration": round(1000 * wall / steps, 2),
                   "ms_in_engine_step": round(1000 * inside / steps, 2),
                   "rows_per_step": round(committed / steps / 4, 1), "errors": level["errors"],
                   "compiled_files": compiled_files()}
            print(json.dumps(row), flush=True)
            out.append(row)
            if recorder is not None:
                recorder.wait(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["engine-process", "no-engine-process"])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("results/serve_step_rate.jsonl"))
    ap.add_argument("--count-compiles", action="store_true",
                    help="give each server fresh Triton and Inductor cache folders and report their files after "
                         "each round (kernels compiled while serving)")
    ap.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                    help="sample the server and its engine process with py-spy during the last round, into DIR")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.modes:
        if args.count_compiles:
            for key in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
                os.environ[key] = tempfile.mkdtemp(prefix=key.lower() + "-")
        rows += rounds(spec, args.concurrency, args.requests, args.max_tokens, args.reps,
                       args.out.with_name(f"server_{spec.replace(':', '_')}.log"), args.py_spy)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
