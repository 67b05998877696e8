"""The padded attention's SDPA call (``dlm.models.ragged._attend_folded``) on one GPU, per SDPA backend: the time
of a call at shapes the engine runs, and the cost of the FIRST call at a shape the process has not seen (cuDNN
builds an execution plan per new shape; a continuous batch meets a new shape whenever its rows or lengths change).

    python benchmarks/micro_attention.py --out results/micro_attention.json

Backends: ``cudnn``, ``flash`` (no mask only), ``efficient``, ``torch`` (torch's own choice, which on a Hopper
GPU with torch 2.11 is cuDNN), ``dlm`` (``dlm.models.attention.sdpa``'s: torch's choice without cuDNN) and
``split`` (``dlm.models.attention_kernel``, the fused kernels' attention of pooled rows: cached steps' shapes only). ``--avoid-recompile`` re-runs the first-call sweep in a subprocess with
``TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1`` (torch's opt-in that serves new sequence lengths from one cuDNN plan).
Steady figures are the mean of 20 back-to-back calls between two CUDA events, in microseconds; first-call
figures are host wall time of one synchronised call minus that shape's steady time, in milliseconds.
``--graphs`` adds each backend's time per call replayed from a CUDA graph of 32 calls (the kernels alone, as a
captured step runs them). ``--split-sweep`` times the split kernel's settings (keys per loop iteration, warps,
pipeline stages, target program count) the same way, at the cached steps' shapes, each against the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from micro_elementwise import timed_us
from torch.nn.attention import SDPBackend, sdpa_kernel

from dlm.models import attention, attention_kernel
from dlm.models.ragged import _attend_folded

BACKENDS = {"dlm": None, "split": None, "torch": None, "cudnn": [SDPBackend.CUDNN_ATTENTION], "flash": [SDPBackend.FLASH_ATTENTION],
            "efficient": [SDPBackend.EFFICIENT_ATTENTION]}
# (name, rows, queries, keys, heads, kv heads, masked): LLaDA-8B (32/32) and Dream-7B (28/4) at the engine's shapes
SHAPES = [
    ("in-block b32", 32, 32, 384, 32, 32, False),
    ("refresh b32", 32, 384, 384, 32, 32, False),
    ("mixed fresh 4 rows", 4, 384, 384, 32, 32, False),
    ("mixed pooled 28 rows, key mask", 28, 32, 384, 32, 32, True),
    ("b1 in-block gen 1024", 1, 32, 1152, 32, 32, False),
    ("b1 refresh gen 1024", 1, 1152, 1152, 32, 32, False),
    ("dream in-block b32", 32, 32, 384, 28, 4, False),
    ("dream refresh b32", 32, 384, 384, 28, 4, False),
]


def operands(rows, queries, keys, heads, kv_heads, masked, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(rows, queries, heads, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k = torch.randn(rows, keys, kv_heads, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    v = torch.randn(rows, keys, kv_heads, 128, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    mask = None
    if masked:  # rows of different lengths: each row's first keys valid
        lengths = torch.randint(keys // 2, keys + 1, (rows,), device="cuda", generator=g)
        mask = (torch.arange(keys, device="cuda")[None] < lengths[:, None])[:, None, None, :]
    return q, k, v, mask, kv_heads


def call(backend: str, args) -> torch.Tensor:
    if backend == "split":  # dlm's split-key Triton kernel (the padded attention's pooled rows, fused kernels)
        q, k, v, mask, _ = args
        return attention_kernel.attend(q, k, v, mask)
    attention.use_cudnn_attention(backend != "dlm")
    if BACKENDS[backend] is None:
        return _attend_folded(*args)
    with sdpa_kernel(BACKENDS[backend]):
        return _attend_folded(*args)


def steady_us(backend: str, args, calls: int = 20) -> float:
    return timed_us(lambda: call(backend, args), calls)


def graph_us(backend: str, args, calls: int = 32, replays: int = 20) -> float | str:
    """Microseconds per call of ``calls`` calls captured in one CUDA graph (a layer stack's worth, with no host
    time between them), over ``replays`` replays; or why the capture failed."""
    try:
        for _ in range(3):  # warm-up on a side stream (plans, workspaces), as a graph capture needs
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                call(backend, args)
            torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                call(backend, args)
    except RuntimeError as exc:
        return f"capture failed: {str(exc).splitlines()[0][:120]}"
    return timed_us(graph.replay, replays) / calls


def first_call_ms(backend: str, masked: bool, base: int, count: int = 12) -> list[float]:
    """First calls at ``count`` shapes this process has not seen (rows 1..count, keys base + 8 * rows; each sweep
    its own base), each minus the same shape's steady time."""
    out = []
    for rows in range(1, count + 1):
        args = operands(rows, 32, base + 8 * rows, 32, 32, masked, seed=rows)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call(backend, args)
        torch.cuda.synchronize()
        first = (time.perf_counter() - t0) * 1e3
        out.append(first - steady_us(backend, args) / 1e3)
    return out


def split_sweep(args) -> dict:
    """The split kernel's microseconds per call in a CUDA graph for each setting (keys per iteration x warps x
    stages, and two other target program counts), the module's own restored; with each its largest difference
    from the defaults' output."""
    names = ("BLOCK_N", "NUM_WARPS", "NUM_STAGES", "NUM_STAGES_SPLIT", "TARGET_PROGRAMS")
    saved = tuple(getattr(attention_kernel, n) for n in names)
    ref = call("split", args).float()
    out = {}
    settings = [(n, w, st, st, 264) for n in (32, 64, 128) for w in (4, 8) for st in (2, 3, 4)]
    settings += [(64, 4, 3, 3, 132), (64, 4, 3, 3, 528)]  # the split count (matters where the rows are few)
    try:
        for setting in settings:
            for n, v in zip(names, setting):
                setattr(attention_kernel, n, v)
            key = "n{} w{} s{} p{}".format(*setting[:3], setting[4])  # (stages: the same with splits or not)
            try:
                out[key] = graph_us("split", args)
                if isinstance(out[key], float):
                    out[key] = [out[key], (call("split", args).float() - ref).abs().max().item()]
            except Exception as exc:  # (a setting past the GPU's shared memory)
                out[key] = f"failed: {str(exc).splitlines()[0][:80]}"
    finally:
        for n, v in zip(names, saved):
            setattr(attention_kernel, n, v)
    return out


def supported(backend: str, masked: bool, args=None) -> bool:
    if backend == "split":
        return args is not None and attention_kernel.applies(*args[:4])
    return not (backend == "flash" and masked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/micro_attention.json"))
    ap.add_argument("--first-only", action="store_true", help="only the first-call sweep (for the subprocess)")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--avoid-recompile", action="store_true")
    ap.add_argument("--graphs", action="store_true",
                    help="also time each backend's call replayed from a CUDA graph (kernel time, no host time)")
    ap.add_argument("--no-first-call", action="store_true", help="skip the first-call sweep")
    ap.add_argument("--split-sweep", action="store_true", help="time the split kernel's settings at its shapes")
    a = ap.parse_args()
    res: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "first_call_ms": {}}
    if not a.first_only:
        res["steady_us"] = {}
        for name, *shape in SHAPES:
            args = operands(*shape)
            ref = call("efficient", args).float()
            row = {}
            for b in a.backends:
                if supported(b, shape[-1], args):
                    row[b] = steady_us(b, args)
                    row[b + "_max_abs_diff_vs_efficient"] = (call(b, args).float() - ref).abs().max().item()
            res["steady_us"][name] = row
            print(name, {k: round(v, 1) for k, v in row.items() if k in BACKENDS}, flush=True)
            if a.graphs:
                res.setdefault("graph_us", {})[name] = g = {b: graph_us(b, args) for b in a.backends
                                                            if supported(b, shape[-1], args)}
                print(name, "in a CUDA graph:", {k: round(v, 1) if isinstance(v, float) else v for k, v in g.items()},
                      flush=True)
            if a.split_sweep and supported("split", shape[-1], args):
                res.setdefault("split_sweep_us", {})[name] = sw = split_sweep(args)
                ok = {k: v[0] for k, v in sw.items() if isinstance(v, list)}
                best = sorted(ok, key=ok.get)[:3]
                print(name, "split sweep: defaults", round(graph_us("split", args), 1), "best",
                      [(k, round(ok[k], 1)) for k in best], flush=True)
    base = 400
    for b in a.backends:
        for masked in (False, True):
            if supported(b, masked) and not a.no_first_call:
                base += 8 * 16
                ms = first_call_ms(b, masked, base)
                res["first_call_ms"][f"{b}{' masked' if masked else ''}"] = ms
                print(f"first call {b} masked={masked}: mean {sum(ms) / len(ms):.1f} ms, max {max(ms):.1f}", flush=True)
    if a.avoid_recompile:
        env = dict(os.environ, TORCH_CUDNN_SDPA_AVOID_RECOMPILE="1")
        sub = a.out.with_suffix(".avoid_recompile.json")
        subprocess.run([sys.executable, __file__, "--first-only", "--backends", "cudnn", "--out", str(sub)],
                       env=env, check=False)
        if sub.exists():
            res["avoid_recompile_first_call_ms"] = json.loads(sub.read_text())["first_call_ms"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
