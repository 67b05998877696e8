"""Agreement of every cache policy with the no-cache decode, and accuracy, on the held-out tasks.

For each scheduler and each cache (default settings), the answers are compared with those of the same scheduler
without a cache (``none``), on the test split of the synthetic tasks and on held-out standard-library function
completions, in the same run:

    python examples/cache_agreement.py                        # the bundled dlm-tiny
    python examples/cache_agreement.py --model PATH --n 50 --schedulers low_confidence threshold

Columns: exact-match rate of the answer tokens with the ``none`` answer, token agreement, task accuracy, forward
passes per answer, and the mean number of positions each forward fed to the model (the compute).
"""

from __future__ import annotations

import argparse
import time

import torch

import dlm
from dlm.data import FAMILIES, get_task, score, stdlib_code_completion


def answer_tokens(seq: list[int], stops: set[int]) -> list[int]:
    cut = next((i for i, t in enumerate(seq) if t in stops), len(seq) - 1)
    return seq[: cut + 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=40, help="test examples per task family")
    ap.add_argument("--code-n", type=int, default=40)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--code-gen-length", type=int, default=64)
    ap.add_argument("--schedulers", nargs="+", default=["low_confidence", "threshold"])
    ap.add_argument("--caches", nargs="+", default=dlm.cache.names())
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = dlm.load(args.model, device="cpu")
    examples = [e for f in FAMILIES for e in get_task(f).generate("test", args.n, seed=0)]
    code = stdlib_code_completion("heldout", n=args.code_n, seed=0)
    stops = set(lm.ids.stop_ids)
    print(f"model {lm}; {len(examples)} task examples, {len(code)} code prompts; {time.strftime('%Y-%m-%d')}")
    print("| scheduler | cache | exact match vs none | token agreement vs none | task accuracy | NFE / answer | "
          "fed positions / forward |")
    print("|---|---|---|---|---|---|---|")
    for scheduler in args.schedulers:
        base = None
        caches = ["none"] + [c for c in args.caches if c != "none"]
        for cache in caches:
            rows, fed, forwards, nfe = [], 0.0, 0.0, 0.0
            texts = []
            for prompts, gen in (([e.prompt for e in examples], args.gen_length),
                                 ([c.prompt for c in code], args.code_gen_length)):
                cfg = dlm.GenerationConfig(gen_length=gen, scheduler=scheduler, cache=cache)
                out = lm.generate(prompts, cfg, batch_size=64, progress=False)
                rows += [answer_tokens(s, stops) for s in out.sequences.tolist()]
                texts += out.texts
                fed += out.stats["fed_positions"]
                forwards += out.stats["forwards"]
                nfe += float(out.nfe.sum())
            per = score(examples, texts[: len(examples)])
            acc = sum(v["correct"] for v in per.values()) / sum(v["n"] for v in per.values())
            if base is None:
                base = rows
            exact = sum(a == b for a, b in zip(rows, base)) / len(rows)
            agree = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(rows, base))
            total = sum(max(len(a), len(b)) for a, b in zip(rows, base))
            print(f"| {scheduler} | {cache} | {exact:.3f} | {agree / total:.3f} | {acc:.3f} | "
                  f"{nfe / len(rows):.1f} | {fed / max(1.0, forwards):.0f} |", flush=True)


if __name__ == "__main__":
    main()
