"""``dlm bench serve``: a bounded load generator against ``dlm serve`` on loopback, sweeping concurrency, with
static batching of the same requests as the baseline.

    dlm bench serve                                  dlm-tiny on this machine: starts a server, sweeps 1/8/32/64
    dlm bench serve --url http://127.0.0.1:8000      a server that is already running (--model: the same model,
                                                     for the static baseline; or --no-static)
    dlm bench serve --random-weights llada-8b --device cuda --max-tokens 128 --set cache=dual

For each concurrency c, after one untimed round of c requests (a warm-up at that concurrency), ``--requests``
requests (default max(16, 2c)) go out through c clients at a time (each sends its next request when its last
one has finished), streamed, so the time to first text is the client's.
Reported: requests/s, output tokens/s (answer tokens up to the first stop), TTFT and latency p50/p99, errors.
After each level the same requests run through ``model.generate`` in this process (its own copy of the model),
in consecutive static batches of c after one untimed batch, while the server idles: the ratio served / static is the price (or the gain)
of serving, measured minutes apart. The default workload fixes the work per request (``logits_eos_inf``: every answer
is ``max_tokens`` long; ``steps = max_tokens / 4``: 4 tokens per step), so both sides decode the same tokens.
Writes results.json, results.md and serve.png to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..cli import add_speed_options, speed_flags
from ..errors import ConfigError, DlmError
from ..kvargs import parse_kv
from .answer import AnswerText
from .loadgen import level_json, percentile, run_level

HELP = "load-test dlm serve over loopback (concurrency sweep) against static batching of the same requests"


@dataclass(frozen=True)
class Workload:
    """The requests of a run: ``prompts`` (strings or id lists), ``max_tokens`` and dlm's extra ``fields``."""

    prompts: list
    max_tokens: int
    fields: dict[str, Any]
    prompt_kind: str

    def body(self, i: int, model: str) -> dict[str, Any]:
        return {"model": model, "prompt": self.prompts[i % len(self.prompts)], "max_tokens": self.max_tokens,
                **self.fields}


def make_workload(card: dict[str, Any], n: int, max_tokens: int, fields: dict[str, Any], prompt_tokens: int,
                  seed: int = 0) -> Workload:
    """``n`` prompts for the served model (its /v1/models card): the synthetic tasks' test prompts when it has a
    tokenizer, else random token ids of ``prompt_tokens`` tokens (never the mask id)."""
    info = card["dlm"]
    if info["tokenizer"]:
        from ..data.tasks import FAMILIES, get_task

        per = -(-n // len(FAMILIES))
        prompts = [e.prompt for f in FAMILIES for e in get_task(f).generate("test", per, seed)]
        rng = random.Random(seed)
        rng.shuffle(prompts)
        return Workload(prompts[:n], max_tokens, fields, "synthetic tasks (test split)")
    rng = random.Random(seed)
    vocab, mask = info["vocab_size"], info["mask_id"]
    prompts = [[t if t != mask else (t + 1) % vocab for t in (rng.randrange(vocab) for _ in range(prompt_tokens))]
               for _ in range(n)]
    return Workload(prompts, max_tokens, fields, "random token ids")


# ------------------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args: argparse.Namespace, port: int, max_rows: int) -> list[str]:
    cmd = [sys.executable, "-m", "dlm.serve", "--port", str(port), "--max-rows", str(max_rows), "--max-queue",
           "100000", "--log-level", "warning", "--request-timeout", "0"]
    for flag, value in (("--model", args.model), ("--random-weights", args.random_weights), ("--device", args.device),
                        ("--dtype", args.dtype), ("--threads", args.threads), ("--max-context", args.max_context),
                        ("--quantize", args.quantize), ("--stream-interval", args.stream_interval)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.engine_process is not None:
        cmd.append("--engine-process" if args.engine_process else "--no-engine-process")
    return cmd + speed_flags(args)


@contextmanager
def launched_server(args: argparse.Namespace, max_rows: int, log_path: Path, start_timeout: float = 900.0):
    """A ``dlm serve`` process on a free loopback port for the duration of the block; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(server_command(args, port, max_rows), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(url, proc, start_timeout, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DlmError(f"the server exited with code {proc.returncode}; its log: {log_path}\n"
                           f"{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DlmError(f"the server did not answer /health within {timeout:g} s; its log: {log_path}")


# ------------------------------------------------------------------------------------------------ the sweeps
def requests_for(args: argparse.Namespace, c: int) -> int:
    return args.requests or max(16, 2 * c)


def warm_up(url: str, workload: Workload, model: str, c: int, args: argparse.Namespace) -> None:
    """One untimed round of ``c`` requests at concurrency ``c``: a server's first round at a new concurrency
    can step slower than the next ones (26 against 16-19 ms for dlm-tiny at 32 on one H200 machine), which a
    level must not count."""
    asyncio.run(run_level(url, [workload.body(i, model) for i in range(c)], c, api_key=args.api_key))


def served_level(url: str, workload: Workload, model: str, c: int, args: argparse.Namespace) -> dict[str, Any]:
    bodies = [workload.body(i, model) for i in range(requests_for(args, c))]
    level = level_json(asyncio.run(run_level(url, bodies, c, api_key=args.api_key)))
    print(f"dlm bench serve: served c={c}: {level['output_tokens_per_s']:.1f} tokens/s, {level['errors']} errors",
          file=sys.stderr, flush=True)
    return level


class Static:
    """The static baseline: the workload's requests through ``lm.generate`` with the config the server builds
    for them (:func:`dlm.serve.params.answer_specs`), in consecutive batches."""

    def __init__(self, lm, workload: Workload):
        from .params import answer_specs
        from .schemas import CompletionRequest

        self.lm, self.workload = lm, workload
        body = CompletionRequest(**workload.body(0, "-"))
        prompt = lm.encode([workload.prompts[0]])
        self.config = answer_specs(body, lm, prompt, slot_len=10**9, prompt_param="prompt")[0].config
        self.stops = self.config.stop_token_ids or lm.ids.stop_ids

    def warm_up(self, c: int) -> None:
        self.lm.generate(self.workload.prompts[:c], self.config)

    def level(self, c: int, n: int) -> dict[str, Any]:
        prompts = [self.workload.body(i, "-")["prompt"] for i in range(n)]
        tokens, latencies = 0, []
        t0 = time.perf_counter()
        for start in range(0, n, c):
            t = time.perf_counter()
            res = self.lm.generate(prompts[start : start + c], self.config)
            latencies += [time.perf_counter() - t] * len(res.sequences)
            for row in res.sequences.tolist():
                tokens += len(answer_ids(row, self.lm.ids.mask_id, self.stops, self.workload.max_tokens))
        wall = time.perf_counter() - t0
        latencies.sort()
        print(f"dlm bench serve: static c={c}: {tokens / wall:.1f} tokens/s", file=sys.stderr, flush=True)
        return {"concurrency": c, "requests": n, "wall_s": wall, "requests_per_s": n / wall, "output_tokens": tokens,
                "output_tokens_per_s": tokens / wall, "batch_latency_p50_s": percentile(latencies, 50),
                "batch_latency_p99_s": percentile(latencies, 99)}


def answer_ids(row: list[int], mask_id: int, stops, max_tokens: int) -> list[int]:
    """The answer tokens the server would return for this canvas (cut at the first stop and max_tokens)."""
    a = AnswerText(None, mask_id, stops, max_tokens)
    a.update(row)
    return a.ids


# ------------------------------------------------------------------------------------------------ the command
def environment(device) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        name = (f"CPU ({os.cpu_count()} cores, load average {load:.1f} at start, "
                f"torch threads {torch.get_num_threads()})")
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "device": name, "torch": torch.__version__,
            "python": platform.python_version(), "command": shlex.join(["dlm", "bench", "serve", *sys.argv[3:]])
            if sys.argv[1:3] == ["bench", "serve"] else shlex.join(sys.argv)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep as the results dict of :mod:`dlm.serve.report`. Levels alternate: served, then static, at each
    concurrency, so a drift of the machine's load touches both sides of a ratio alike."""
    import torch

    fields = {"steps": max(1, args.max_tokens // 4), "logits_eos_inf": True, **parse_kv(args.set or [], "set")}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = None
    if not args.no_static:
        from .cli import load_model

        lm = load_model(args, device)
    if args.url is not None:
        return _sweep(args.url, args, fields, lm, device)
    with launched_server(args, max(args.concurrency), args.out / "server.log") as url:
        return _sweep(url, args, fields, lm, device)


def _sweep(url: str, args: argparse.Namespace, fields: dict[str, Any], lm, device) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    card = httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["data"][0]
    n = max(requests_for(args, c) for c in args.concurrency)
    workload = make_workload(card, n, args.max_tokens, fields, args.prompt_tokens, args.seed)
    static = Static(lm, workload) if lm is not None else None
    served, baseline = [], []
    for c in args.concurrency:
        warm_up(url, workload, card["id"], c, args)
        served.append(served_level(url, workload, card["id"], c, args))
        if static is not None:
            static.warm_up(c)
            baseline.append(static.level(c, requests_for(args, c)))
    info = card["dlm"]
    return {"environment": environment(device), "model": {"name": card["id"], **info},
            "server": f"{url}, {info['replicas']} engine(s) of {info['max_rows'] // info['replicas']} rows"
                      + (f", each in its own {info['engine']}" if "engine" in info else ""),
            "workload": {"requests_per_level": {c: requests_for(args, c) for c in args.concurrency},
                         "prompt_kind": workload.prompt_kind,
                         "prompt_tokens_mean": served[0]["prompt_tokens_mean"] if served else 0.0,
                         "max_tokens": workload.max_tokens, "fields": workload.fields},
            "served": served, "static": baseline}


def configure(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("target")
    t.add_argument("--url", default=None, help="a running server (default: start one for the run)")
    t.add_argument("--api-key", default=os.environ.get("DLM_API_KEY"), help="its API key (default: $DLM_API_KEY)")
    m = p.add_argument_group("model (of the server this command starts, and of the static baseline)")
    m.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    m.add_argument("--random-weights", default=None, help="a random geometry instead (llada-8b, dream-7b, ...)")
    m.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    m.add_argument("--dtype", default="auto")
    add_speed_options(m)
    m.add_argument("--quantize", choices=("fp8",), default=None,
                   help="FP8 linear weights, for the server and the static baseline (docs/gpu.md#fp8-weights)")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (server and static)")
    m.add_argument("--max-context", type=int, default=None, help="the server's --max-context")
    m.add_argument("--stream-interval", type=int, default=None, metavar="N",
                   help="the server's --stream-interval (default: the server's, 1)")
    m.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=None,
                   help="the server's --engine-process / --no-engine-process (default: the server's, a process)")
    w = p.add_argument_group("workload")
    w.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], help="levels (default 1 8 32 64)")
    w.add_argument("--requests", type=int, default=None, help="requests per level (default max(16, 2 x level))")
    w.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    w.add_argument("--prompt-tokens", type=int, default=64, help="prompt length for models without a tokenizer")
    w.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                   help="dlm body fields (default steps=max_tokens/4 logits_eos_inf=true), e.g. cache=dual")
    w.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--no-static", action="store_true", help="skip the static-batching baseline")
    o.add_argument("--out", type=Path, default=None, help="results folder (default results/serve-<date>-<time>)")
    o.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_bench_serve)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``dlm bench-serve`` (also spelled ``dlm bench serve``), added by :mod:`dlm.cli`."""
    p = subparsers.add_parser("bench-serve", help=HELP, description=__doc__, prog="dlm bench serve",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .report import markdown, write

    if any(c < 1 for c in args.concurrency) or args.max_tokens < 1 or (args.requests or 1) < 1:
        raise ConfigError("--concurrency, --max-tokens and --requests must be >= 1")
    if args.stream_interval is not None and args.stream_interval < 1:
        raise ConfigError(f"--stream-interval must be >= 1, got {args.stream_interval}")
    for name in ("stream_interval", "engine_process"):
        if getattr(args, name) is not None and args.url is not None:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is passed to the server this command starts; with --url, start that "
                              "server with it instead")
    if args.url is not None and not args.no_static and args.model is None and args.random_weights is None:
        print("dlm bench serve: --url without --model: the static baseline uses the bundled dlm-tiny; it must be "
              "the served model", file=sys.stderr)
    args.out = args.out or Path("results") / time.strftime("serve-%Y%m%d-%H%M%S")
    results = run(args)
    files = write(results, args.out, plots=not args.no_plots)
    print(markdown(results))
    print("dlm bench serve: wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import run_main

    return run_main("dlm bench serve", __doc__, configure, argv)
