"""Compare every registered unmasking scheduler against the one-token-per-step reference decode.

For each scheduler, on a fixed set of prompts, report forward passes (NFE) per generated token and how far its
answers agree with ``low_confidence`` at one token per step (steps == gen_length), the decode the fast schedulers
approximate: the fraction of answer positions holding the same token, and the fraction of answers that are
identical up to their first stop token. Prints a Markdown table.

    python examples/scheduler_bench.py --model path/to/checkpoint
    python examples/scheduler_bench.py                      # a tiny random LLaDA checkpoint built on the fly
    python examples/scheduler_bench.py --schedulers threshold,factor --gen-length 128 --block-length 32

A quick look at every scheduler on arbitrary prompts; ``dlm bench`` measures configurations on tasks with exact
answers, with accuracy, speed and memory. On a random tiny model the numbers only show that everything runs and how
the rules trade steps for agreement, not the quality of any method.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import dlm

PROMPTS = [
    "def fibonacci(n):",
    "The capital of France is",
    "Question: what is 12 + 30? Answer:",
    "import os\nimport sys\n\ndef main():",
    "Once upon a time, there was a",
    "Sort the list [3, 1, 2]:",
    "class Stack:\n    def __init__(self):",
    "Translate to French: good morning ->",
]


def answer_length(row: list[int], stops: set[int]) -> int:
    """Generated tokens of one answer: up to and including its first stop token."""
    return next((i + 1 for i, t in enumerate(row) if t in stops), len(row))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_path", nargs="?", default=None, help="checkpoint folder (same as --model)")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random LLaDA checkpoint)")
    ap.add_argument("--tiny-type", default="llada", choices=["llada", "Dream"], help="format of the tiny default")
    ap.add_argument("--schedulers", default=None, help="comma-separated names (default: every registered one)")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the fixed prompts to use")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    path = args.model or args.model_path
    tmp = None
    if path is None:
        from dlm.testing import write_tiny_checkpoint

        tmp = tempfile.TemporaryDirectory()
        path = write_tiny_checkpoint(tmp.name, args.tiny_type, seed=args.seed, std=1.0)
    model = dlm.load(path, device=args.device)
    prompts: list = PROMPTS[: args.prompts]
    if model.tokenizer is None:  # token ids then: fixed random byte prompts
        g = torch.Generator().manual_seed(args.seed)
        prompts = [torch.randint(0, 256, (8 + i,), generator=g).tolist() for i in range(args.prompts)]
    names = args.schedulers.split(",") if args.schedulers else dlm.schedulers.names()
    base = dlm.GenerationConfig(gen_length=args.gen_length, block_length=args.block_length, seed=args.seed)
    stops = set(base.stop_token_ids or model.ids.stop_ids)

    ref = model.generate(prompts, base.replace(scheduler="low_confidence", steps=args.gen_length))
    ref_rows = ref.sequences.tolist()
    print(f"model: {model!r}; {len(prompts)} prompts, gen_length {args.gen_length}, block_length "
          f"{args.block_length}; reference: low_confidence, one token per step\n")
    print("| scheduler | parameters | sampling | NFE / answer | NFE / generated token | token agreement | "
          "exact match | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        scheduler = dlm.schedulers.create(name)
        t0 = time.perf_counter()
        out = model.generate(prompts, base.replace(scheduler=name))
        seconds = time.perf_counter() - t0
        rows = out.sequences.tolist()
        nfe = out.nfe.tolist()
        tokens = [answer_length(r, stops) for r in rows]
        same = sum(a == b for r, q in zip(rows, ref_rows) for a, b in zip(r, q))
        exact = sum(r[: answer_length(r, stops)] == q[: answer_length(q, stops)] for r, q in zip(rows, ref_rows))
        params = ", ".join(f"{k}={v}" for k, v in scheduler.config().items()) or "-"
        print(f"| {name} | {params} | {scheduler.sampling} | {sum(nfe) / len(nfe):.1f} | "
              f"{sum(nfe) / sum(tokens):.3f} | {same / (len(rows) * args.gen_length):.3f} | "
              f"{exact / len(rows):.2f} | {seconds:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
