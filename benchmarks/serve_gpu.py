"""GPU figures of ``dlm serve`` (issue 13): served throughput against static batching of the same requests, for
dlm-tiny and for the LLaDA-8B geometry with random bf16 weights (built on the GPU, never on the CPU).

    python benchmarks/serve_gpu.py --out results/serve-gpu.json                  # one H100/H200, ~4-5 minutes
    python benchmarks/serve_gpu.py --device cpu --tiny --out /tmp/serve-cpu.json  # smoke run of this script

Each model: ``dlm bench serve`` (dlm.serve.bench.run) starts a server on loopback and sweeps concurrency
1/8/32/64 with streamed requests (closed loop); after each level the same requests run through
``model.generate`` in static batches of that concurrency in this process (a second copy of the model on the same
GPU: 2 x 16 GB for the 8B geometry, plus the two key/value pools, fits an 80 GB card). Work per request is fixed (every answer is max_tokens
long, 4 tokens committed per step), so both sides decode the same tokens. Prints a table and the issue's target
(served tokens/s at concurrency 32 >= 85% of static batch 32); writes one JSON with every run, and each run's
results.md / serve.png / server.log beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dlm.serve.bench import configure, run

TARGET = 0.85
# (name, dlm bench serve arguments); the LLaDA-8B geometry uses the dual cache to keep each step short
RUNS = {
    "dlm-tiny": ["--max-tokens", "256", "--concurrency", "1", "8", "32", "64"],
    "llada-8b-random": ["--random-weights", "llada-8b", "--max-tokens", "128", "--prompt-tokens", "64",
                        "--max-context", "256", "--set", "cache=dual", "--concurrency", "1", "8", "32", "64"],
}
TINY_RUNS = {
    "dlm-tiny": ["--max-tokens", "32", "--concurrency", "1", "4", "--requests", "4"],
    "llada-tiny-random": ["--random-weights", "llada-tiny", "--max-tokens", "32", "--prompt-tokens", "16",
                          "--max-context", "64", "--set", "cache=dual", "--concurrency", "1", "4", "--requests", "4"],
}


def bench_args(argv: list[str], device: str | None, out: Path, threads: int | None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    extra = (["--device", device] if device else []) + (["--threads", str(threads)] if threads else [])
    return p.parse_args([*argv, *extra, "--out", str(out)])


def table(results: dict) -> str:
    lines = ["| model | concurrency | served tokens/s | static tokens/s | served / static | TTFT p50 ms | "
             "latency p50 / p99 ms | errors |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        static = {s["concurrency"]: s for s in r["static"]}
        for s in r["served"]:
            st = static[s["concurrency"]]["output_tokens_per_s"]
            lines.append(f"| {name} | {s['concurrency']} | {s['output_tokens_per_s']:.0f} | {st:.0f} | "
                         f"{s['output_tokens_per_s'] / st:.2f} | {1000 * (s['ttft_p50_s'] or 0):.0f} | "
                         f"{1000 * s['latency_p50_s']:.0f} / {1000 * s['latency_p99_s']:.0f} | {s['errors']} |")
    return "\n".join(lines)


def target_lines(results: dict, level: int = 32) -> list[str]:
    out = []
    for name, r in results.items():
        served = {s["concurrency"]: s for s in r["served"]}.get(level)
        static = {s["concurrency"]: s for s in r["static"]}.get(level)
        if served and static:
            ratio = served["output_tokens_per_s"] / static["output_tokens_per_s"]
            out.append(f"{name}: served / static at concurrency {level} = {ratio:.2f} (target >= {TARGET}: "
                       f"{'met' if ratio >= TARGET else 'NOT met'})")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON file of every run")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--tiny", action="store_true", help="small sizes (a CPU smoke run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--only", nargs="+", default=None, help="run only these models")
    args = p.parse_args()
    runs = TINY_RUNS if args.tiny else RUNS
    t0 = time.perf_counter()
    results = {}
    for name, argv in runs.items():
        if args.only and name not in args.only:
            continue
        print(f"serve_gpu: {name} ...", file=sys.stderr, flush=True)
        results[name] = run(bench_args(argv, args.device, args.out.with_suffix("") / name, args.threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results, "wall_s": time.perf_counter() - t0}, indent=1))
    print(table(results))
    level = 4 if args.tiny else 32
    print("\n".join(target_lines(results, level)))
    print(f"serve_gpu: {time.perf_counter() - t0:.0f} s; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
