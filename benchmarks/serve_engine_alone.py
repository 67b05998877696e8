"""Where a served step's time goes for a small model: the engine that ``dlm serve`` builds, stepped alone in this
process, against ``model.generate``'s static batch, and again beside a second Python thread that holds the
interpreter lock part of the time (what the server's HTTP side does while it streams 32 answers).

32 random prompts of 6-15 tokens, every answer ``--gen`` tokens at 4 per step (``logits_eos_inf``), no cache: the
work per request of ``dlm bench serve --max-tokens 256`` at concurrency 32 (its prompts are other texts of similar
length). Reported in milliseconds per engine step:

static      ``model.generate`` of the 32 prompts (its engine sized to them)
server      an Engine of 32 rows x the model's context with its CUDA graphs captured, as ``dlm serve`` builds it
server closed-loop     the same engine, 96 requests, 32 at a time: one submitted as soon as another finishes
server, no lookahead   "server" with an engine built with ``lookahead=False`` (and its closed loop)
+decode     the same, each step's events detokenized in the stepping thread (what the streams need)
+busy F     "server" (no detokenizing) beside a thread that runs Python (``json.dumps``) for F of every
            millisecond

    python benchmarks/serve_engine_alone.py --out results/serve_engine_alone.json          # dlm-tiny
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch

import dlm
from dlm import GenerationConfig


def prompts_of(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[int(x) for x in torch.randint(3, 250, (int(torch.randint(6, 16, (1,), generator=g)),), generator=g)]
            for _ in range(n)]


def ms_per_step_static(lm, prompts, cfg) -> float:
    t = time.perf_counter()
    out = lm.generate(prompts, cfg)
    return (time.perf_counter() - t) * 1e3 / out.steps


def ms_per_step_engine(engine, prompts, cfg, per_event=None) -> float:
    reqs = [engine.submit(p, cfg) for p in prompts]
    t, steps = time.perf_counter(), 0
    while not all(r.done for r in reqs):
        events = engine.step()
        steps += 1
        if per_event is not None:
            for ev in events:
                per_event(ev)
    return (time.perf_counter() - t) * 1e3 / steps


def ms_per_step_closed_loop(engine, prompts, cfg, total: int) -> float:
    """``total`` requests, ``len(prompts)`` at a time: a new one is submitted as soon as one finishes (what a
    server's clients do), so requests arrive between steps all along."""
    waiting = [prompts[i % len(prompts)] for i in range(total)]
    live = [engine.submit(waiting.pop(), cfg) for _ in range(len(prompts))]
    t, steps = time.perf_counter(), 0
    while live:
        engine.step()
        steps += 1
        done = [r for r in live if r.done]
        live = [r for r in live if not r.done] + [engine.submit(waiting.pop(), cfg) for _ in done if waiting]
    return (time.perf_counter() - t) * 1e3 / steps


class Busy(threading.Thread):
    """Python work holding the interpreter lock for about ``share`` of the time, in slices of about 1 ms."""

    def __init__(self, share: float):
        super().__init__(daemon=True)
        self.share, self.stop = share, False

    def run(self) -> None:
        payload = {"choices": [{"text": "x" * 40, "index": i} for i in range(4)]}
        while not self.stop:
            t = time.perf_counter()
            while time.perf_counter() - t < 1e-3 * self.share:
                json.dumps(payload)
            time.sleep(1e-3 * (1 - self.share))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--busy", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/serve_engine_alone.json"))
    args = ap.parse_args()
    lm = dlm.load(args.model, device=args.device) if args.model else dlm.load(device=args.device)
    prompts = prompts_of(args.rows)
    cfg = GenerationConfig(gen_length=args.gen, steps=args.gen // 4, logits_eos_inf=True, stop_at_eos=False)
    tok = lm.tokenizer

    def decode(ev) -> None:
        for _, t in ev.new_tokens():
            tok.decode([t])

    ms_per_step_static(lm, prompts, cfg)  # warm-up (compilation, first graphs)
    engine = dlm.Engine(lm, max_rows=args.rows, max_tokens=args.rows * lm.max_length)
    engine.capture_graphs()
    plain = dlm.Engine(lm, max_rows=args.rows, max_tokens=args.rows * lm.max_length, lookahead=False)
    plain.capture_graphs()
    rows: list[dict] = []
    for rnd in range(args.rounds):
        row = {"round": rnd, "static": ms_per_step_static(lm, prompts, cfg),
               "server": ms_per_step_engine(engine, prompts, cfg),
               "server closed-loop": ms_per_step_closed_loop(engine, prompts, cfg, 3 * args.rows),
               "server, no lookahead": ms_per_step_engine(plain, prompts, cfg),
               "server closed-loop, no lookahead": ms_per_step_closed_loop(plain, prompts, cfg, 3 * args.rows),
               "server+decode": ms_per_step_engine(engine, prompts, cfg, decode)}
        for share in args.busy:
            busy = Busy(share)
            busy.start()
            row[f"server+busy {share}"] = ms_per_step_engine(engine, prompts, cfg)
            busy.stop = True
            busy.join()
        print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
                                    "torch": torch.__version__, "gen": args.gen, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
