"""``dlm serve``: the OpenAI-compatible server (needs the ``dlm[serve]`` extra).

    dlm serve                                        the bundled dlm-tiny on http://127.0.0.1:8000
    dlm serve --model PATH --max-rows 32 --max-queue 256 --api-key KEY
    dlm serve --random-weights llada-8b --max-context 512     random LLaDA-8B geometry on the GPU (benchmarks)

See docs/serving.md.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

from ..cli import add_speed_options, speed_kwargs
from ..errors import ConfigError, DlmError

HELP = "serve a model over an OpenAI-compatible HTTP API (continuous batching, streaming, playground)"
RANDOM_ARCHS = ("llada-8b", "dream-7b", "llada-tiny", "dream-tiny")


def configure(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    m.add_argument("--random-weights", choices=RANDOM_ARCHS, default=None,
                   help="serve this geometry with random weights built on the device (no tokenizer: prompts are "
                        "token ids); for benchmarks")
    m.add_argument("--served-model-name", default=None, help="the model id of /v1/models (default: the folder name)")
    m.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    m.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16")
    add_speed_options(m)
    m.add_argument("--quantize", choices=("fp8",), default=None, help="store every linear layer as float8 with per-channel scales (docs/gpu.md#fp8-weights)")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    m.add_argument("--data-parallel", metavar="N", default=None,
                   help="one engine per GPU on N GPUs ('auto': all visible) behind one HTTP front, requests to the "
                        "least loaded; with --device cpu, N engines on the CPU")
    e = p.add_argument_group("engine")
    e.add_argument("--max-rows", type=int, default=32, help="requests decoding at once per engine (default 32)")
    e.add_argument("--max-context", type=int, default=None,
                   help="positions per request (prompt + answer canvas); default: the model's context")
    e.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=None,
                   help="batch-invariant numerics (answers bitwise independent of traffic on a GPU too, slower); "
                        "default: the engine's (on for CPU, off for CUDA)")
    e.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait beyond the running ones; more get 429 (default 256)")
    e.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run each engine in a process of its own, so that the HTTP side never slows its steps "
                        "(default); --no-engine-process runs it in a thread of the server's process")
    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    h.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    h.add_argument("--api-key", default=os.environ.get("DLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $DLM_API_KEY; none)")
    h.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds before a request is cancelled (0: never; default 600)")
    h.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on shutdown (default 30)")
    h.add_argument("--stream-interval", type=int, default=1, metavar="N",
                   help="send a streamed answer's progress every N engine steps, and at its end (default 1: every "
                        "step; the dlm_canvas extension always gets every step): the same text in fewer, larger "
                        "pieces (see docs/serving.md)")
    h.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    p.set_defaults(func=cmd_serve)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Called by :mod:`dlm.cli` to add ``dlm serve``."""
    p = subparsers.add_parser("serve", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("max_rows", 1), ("max_queue", 0), ("port", 0), ("stream_interval", 1)):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.max_context is not None and args.max_context < 2:
        raise ConfigError(f"--max-context must be >= 2, got {args.max_context}")
    if args.request_timeout < 0 or args.shutdown_grace < 0:
        raise ConfigError("--request-timeout and --shutdown-grace must be >= 0")
    if args.model is not None and args.random_weights is not None:
        raise ConfigError("give --model or --random-weights, not both")


def _devices(args: argparse.Namespace) -> list:
    import torch

    if args.data_parallel is not None:
        from ..parallel.data import replica_devices

        return replica_devices(args.data_parallel, args.device)
    if args.device is not None:
        return [torch.device(args.device)]
    return [torch.device("cuda" if torch.cuda.is_available() else "cpu")]


def load_model(args: argparse.Namespace, device):
    """The model of one replica: a checkpoint, or random weights of a named geometry built on ``device``."""
    import torch

    if args.random_weights is not None:
        from ..bench.scale import random_lm

        dtypes = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
                  "bfloat16": torch.bfloat16, "float16": torch.float16}
        if args.dtype not in dtypes:
            raise ConfigError(f"unknown --dtype {args.dtype!r}; allowed: {', '.join(dtypes)}")
        lm = random_lm(args.random_weights, device=str(device), dtype=dtypes[args.dtype])
        if args.quantize is not None:
            from ..models.fp8 import quantize_model

            quantize_model(lm.model)
        from ..api.lm import fast_options, set_fast_path

        return set_fast_path(lm, *fast_options(args.fast, args.cuda_graphs, args.fused_kernels, device, False))
    from ..api import load

    return load(args.model, device=device, dtype=args.dtype, quantize=args.quantize, **speed_kwargs(args))


def build_server(args: argparse.Namespace):
    """One engine per replica (each in its own process unless ``--no-engine-process``) and the server around
    them; the server's own model handle reads prompts and writes answers."""
    from .loop import ThreadBackend
    from .process import ProcessBackend
    from .server import Server, ServerSettings

    check_args(args)
    devices = _devices(args)
    if args.engine_process:
        lm = model_handle(args)  # checks the checkpoint before any process starts
        backends = [ProcessBackend(functools.partial(build_engine, args, d), name=str(i))
                    for i, d in enumerate(devices)]
        for i, b in enumerate(backends):
            b.wait_ready()
            print(f"dlm serve: engine {i} runs in process {b.proc.pid}: {b.info['model']}", file=sys.stderr,
                  flush=True)
    else:
        engines = [build_engine(args, d) for d in devices]
        lm, backends = engines[0].model, [ThreadBackend(e, name=str(i)) for i, e in enumerate(engines)]
    name = args.served_model_name or args.random_weights or (Path(args.model).name if args.model else "dlm-tiny")
    settings = ServerSettings(model_name=name, max_queue=args.max_queue, api_key=args.api_key or None,
                              request_timeout=args.request_timeout or None, shutdown_grace=args.shutdown_grace,
                              stream_interval=args.stream_interval)
    return Server(backends, settings, lm)


def model_handle(args: argparse.Namespace):
    """The served model without its weights (tokenizer, special ids, geometry): the HTTP side's."""
    if args.random_weights is not None:
        from ..bench.scale import random_lm

        return random_lm(args.random_weights, device="meta")
    from ..api import load_meta

    return load_meta(args.model)


def build_engine(args: argparse.Namespace, device):
    """The engine of one replica on ``device``, its CUDA graphs captured (run in the engine's process)."""
    import torch

    from ..api import Engine

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and device.index is not None:  # a replica's GPU (--data-parallel)
        torch.cuda.set_device(device)
    lm = load_model(args, device)
    context = min(args.max_context or lm.max_length, lm.max_length)
    engine = Engine(lm, max_rows=args.max_rows, max_tokens=args.max_rows * context,
                    batch_invariant=args.batch_invariant)
    _capture_graphs(engine)
    return engine


def _capture_graphs(engine) -> None:
    """The piecewise CUDA graphs of every step size, before the first request (nothing without CUDA graphs)."""
    t0 = time.perf_counter()
    n = engine.capture_graphs()
    if n:
        print(f"dlm serve: captured the CUDA graphs of {n} step sizes in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    server = build_server(args)
    loop = server.loops[0]
    where = "process" if args.engine_process else "thread"
    print(f"dlm serve: {server.model_name}: {loop.backend.info['model']}; {len(server.loops)} engine(s) of "
          f"{loop.max_rows} rows x {loop.slot_len} positions, each in its own {where}; http://{args.host}:"
          f"{args.port} (playground at /)", file=sys.stderr, flush=True)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO))
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_grace + 1.0)
    return 0


def run_main(prog: str, doc: str | None, configure_parser, argv: list[str] | None) -> int:
    """Parse ``argv`` with the options ``configure_parser`` adds and run the command; a DlmError is one line."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DlmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run_main("python -m dlm.serve", __doc__, configure, argv)
