"""The files of ``dlm bench serve``: results.json, results.md (a table per run) and serve.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def markdown(results: dict[str, Any]) -> str:
    """The sweep as a Markdown table, served against static batching of the same requests."""
    w, env = results["workload"], results["environment"]
    lines = [f"# dlm bench serve: {results['model']['name']}", "",
             f"- command: `{env['command']}`", f"- {env['date']}; {env['device']}; torch {env['torch']}",
             f"- workload: {w['requests_per_level']} requests per level; prompts {w['prompt_kind']} "
             f"(mean {w['prompt_tokens_mean']:.1f} tokens); max_tokens {w['max_tokens']}; dlm fields "
             f"`{json.dumps(w['fields'])}`", f"- server: {results['server']}", "",
             "| concurrency | served req/s | served tokens/s | TTFT p50 / p99 ms | latency p50 / p99 ms | errors "
             "| static tokens/s | served / static |", "|---|---|---|---|---|---|---|---|"]
    static = {s["concurrency"]: s for s in results.get("static", [])}
    lines += [_row(s, static.get(s["concurrency"])) for s in results["served"]]
    lines += ["", "Static: the same requests through `model.generate` in consecutive batches of `concurrency` "
              "(each batch waits for its slowest answer), in the bench's own process right after the served level "
              "(the server idle meanwhile)."]
    return "\n".join(lines) + "\n"


def _row(s: dict[str, Any], st: dict[str, Any] | None) -> str:
    row = (f"| {s['concurrency']} | {s['requests_per_s']:.2f} | {s['output_tokens_per_s']:.1f} | "
           f"{_ms(s['ttft_p50_s'])} / {_ms(s['ttft_p99_s'])} | {_ms(s['latency_p50_s'])} / "
           f"{_ms(s['latency_p99_s'])} | {s['errors']} | ")
    if not st or not st["output_tokens_per_s"]:
        return row + "- | - |"
    return row + f"{st['output_tokens_per_s']:.1f} | {s['output_tokens_per_s'] / st['output_tokens_per_s']:.2f} |"


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = results["served"]
    static = results.get("static", [])
    c = [s["concurrency"] for s in served]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(c, [s["output_tokens_per_s"] for s in served], "o-", label="served (dlm serve)")
    if static:
        ax1.plot([s["concurrency"] for s in static], [s["output_tokens_per_s"] for s in static], "s--",
                 label="static batches (model.generate)")
    ax1.set(xscale="log", xlabel="concurrency", ylabel="output tokens / s", title="throughput")
    ax1.set_xticks(c, [str(x) for x in c])
    ax1.minorticks_off()
    ax1.legend()
    for key, style, label in (("latency_p50_s", "o-", "latency p50"), ("latency_p99_s", "o--", "latency p99"),
                              ("ttft_p50_s", "s-", "TTFT p50"), ("ttft_p99_s", "s--", "TTFT p99")):
        ax2.plot(c, [s[key] if s[key] is not None else float("nan") for s in served], style, label=label)
    ax2.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="seconds", title="served latency")
    ax2.set_xticks(c, [str(x) for x in c])
    ax2.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax2.legend()
    fig.suptitle(f"dlm bench serve: {results['model']['name']} on {results['environment']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, Any], out: Path, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "results.json", out / "results.md"]
    files[0].write_text(json.dumps(results, indent=1))
    files[1].write_text(markdown(results))
    if plots:
        files.append(plot(results, out / "serve.png"))
    return files
