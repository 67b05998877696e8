"""Measure the lossless modes against the decodes they reproduce, in the same run, on the same prompts.

    python examples/verify_bench.py                       # tiny random models (CPU, about a minute)
    python examples/verify_bench.py --model path/to/LLaDA --verifier path/to/causal-lm --device cuda

Stepwise: the one-token-per-step greedy decode (``low_confidence``, steps = gen_length) vs ``verify="stepwise"``.
Causal: the causal model's plain greedy decode (``generate(do_sample=False)``, one forward per token) vs
``verify="causal"`` (diffusion drafts, one causal forward per draft). Both print a Markdown table and whether the
outputs were identical (the script exits with status 1 if they were not).

Without ``--model`` the diffusion model is a tiny random LLaDA checkpoint; without ``--verifier`` the causal model
is a tiny random Llama sharing its tokenizer. Random models agree on almost nothing, so both are given the shared
token preference of :mod:`dlm.verify.testing` (``--prefer 0`` turns it off): the causal figures on them say how
the machinery behaves at a given acceptance rate, not what a trained pair achieves.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import dlm
from dlm import GenerationConfig


def prompts_for(lm, n: int, seed: int, max_len: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, max_len + 1, (1,), generator=g))
        out.append(torch.randint(0, 256, (length,), generator=g).tolist())
    return out


def answer_tokens(seqs: torch.Tensor, stops: set[int]) -> int:
    """Answer tokens up to and including the first stop token of each row."""
    total = 0
    for row in seqs.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
        total += cut + 1
    return total


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return result, best


def bench_stepwise(lm, prompts, args) -> tuple[list[str], bool]:
    cfg = GenerationConfig(gen_length=args.gen_length, block_length=args.block_length)
    rows, same = [], True
    batches = [prompts[i : i + args.batch] for i in range(0, len(prompts), args.batch)]

    def run(c):
        return [lm.generate(b, c) for b in batches]

    run(cfg)  # warm-up
    ref, t_ref = timed(lambda: run(cfg), args.repeats)
    stops = set(lm.ids.stop_ids)
    tokens = sum(answer_tokens(o.sequences, stops) for o in ref)
    ref_nfe = sum(int(o.nfe.sum()) for o in ref)
    rows.append(f"| one token per step (reference) | - | {tokens} | {ref_nfe / tokens:.3f} | {ref_nfe / tokens:.3f} "
                f"| 1.00 | {tokens / t_ref:.0f} | 1.00x | - |")
    for kwargs in args.stepwise:
        vcfg = cfg.replace(verify="stepwise", verify_kwargs=kwargs)
        run(vcfg)
        out, t = timed(lambda: run(vcfg), args.repeats)
        ok = all(torch.equal(a.sequences, b.sequences) and a.texts == b.texts for a, b in zip(out, ref))
        same &= ok
        nfe = sum(int(o.nfe.sum()) for o in out)
        draft_rows = sum(o.stats["draft_rows"] for o in out)
        acc = sum(o.stats["accepted_tokens"] for o in out) / sum(o.stats["row_rounds"] for o in out)
        rows.append(f"| stepwise | `{kwargs}` | {tokens} | {nfe / tokens:.3f} | {draft_rows / tokens:.3f} | {acc:.2f} "
                    f"| {tokens / t:.0f} | {t_ref / t:.2f}x | {'yes' if ok else 'NO'} |")
    head = ["| decode | verify_kwargs | answer tokens | NFE / token | model rows / token | tokens / round "
            "| tokens/s | speed-up | identical |", "|---|---|---|---|---|---|---|---|---|"]
    return head + rows, same


def bench_causal(lm, causal, causal_tok, prompts, args) -> tuple[list[str], bool]:
    from dlm.verify import CausalVerifier

    eos = causal.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos])

    def plain():
        outs = []
        for p in prompts:
            ids = torch.tensor([p], device=lm.device)
            with torch.no_grad():
                o = causal.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=args.gen_length, pad_token_id=eos)
            outs.append(o[0, len(p):].tolist())
        return outs

    plain()
    ref, t_ref = timed(plain, args.repeats)
    tokens = sum(len(r) for r in ref)
    rows = [f"| causal greedy (reference) | - | {tokens} | 0 | {(tokens + len(prompts)) / tokens:.3f} | 1.00 "
            f"| {tokens / t_ref:.0f} | 1.00x | - |"]
    same = True
    cfg = GenerationConfig(gen_length=args.gen_length)
    for kwargs in args.causal:
        ver = CausalVerifier(verifier=causal, tokenizer=causal_tok, **kwargs)
        ver.run(lm, prompts[:2], cfg)
        out, t = timed(lambda: ver.run(lm, prompts, cfg), args.repeats)
        ok = all(out.sequences[r, : len(x)].tolist() == x for r, x in enumerate(ref))
        same &= ok
        s = out.stats
        rows.append(f"| causal verify | `{kwargs}` | {tokens} | {s['diffusion_nfe'] / tokens:.3f} "
                    f"| {s['causal_forwards'] / tokens:.3f} | {s['block_efficiency']:.2f} | {tokens / t:.0f} "
                    f"| {t_ref / t:.2f}x | {'yes' if ok else 'NO'} |")
    head = ["| decode | verify_kwargs | answer tokens | diffusion NFE / token | causal forwards / token "
            "| tokens / round | tokens/s | speed-up | identical |", "|---|---|---|---|---|---|---|---|---|"]
    return head + rows, same


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="diffusion checkpoint folder (default: a tiny random LLaDA)")
    ap.add_argument("--verifier", help="causal LM folder sharing the tokenizer (default: a tiny random Llama)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1, help="prompts per generate call (stepwise)")
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed repetitions (the best is reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prefer", type=float, default=1.0, help="scale of the shared token preference given to the "
                    "default random models (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.stepwise = [{"drafts": 2}, {"drafts": 4}, {"drafts": 8}, {"drafts": 4, "adaptive": True}]
    args.causal = [{"draft_length": 4}, {"draft_length": 8}, {"draft_length": 4, "adaptive": True},
                   {"draft_length": 8, "draft_steps": 2}]
    torch.set_num_threads(args.threads)
    from dlm.testing import write_tiny_checkpoint
    from dlm.verify.testing import prefer_token, write_tiny_causal

    tmp = tempfile.mkdtemp(prefix="dlm-verify-bench-")
    model_path = args.model or write_tiny_checkpoint(f"{tmp}/llada", "llada", seed=1)
    lm = dlm.load(model_path, device=args.device)
    prompts = prompts_for(lm, args.prompts, args.seed, max_len=12)
    label = "tiny random LLaDA" if args.model is None else str(model_path)
    print(f"## stepwise verification: {label}, {args.prompts} prompts, batch {args.batch}, gen_length "
          f"{args.gen_length}, block {args.block_length}, {args.device}, {args.threads} thread(s)\n")
    table, same_s = bench_stepwise(lm, prompts, args)
    print("\n".join(table))

    A = 97
    if args.verifier is None:
        if args.model is None and args.prefer:
            prefer_token(lm, {A: 24.0 * args.prefer})
        prefs = {A: 36.0 * args.prefer, lm.ids.eos_id: 30.0 * args.prefer} if args.prefer else None
        vpath = write_tiny_causal(f"{tmp}/causal", model_path, seed=5, prefs=prefs)
        vlabel = "tiny random Llama" + (" (shared preference, see dlm.verify.testing)" if args.prefer else "")
    else:
        vpath, vlabel = args.verifier, args.verifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    causal = AutoModelForCausalLM.from_pretrained(str(vpath)).to(args.device).eval()
    causal_tok = AutoTokenizer.from_pretrained(str(vpath))
    print(f"\n## causal verification: drafter {label}"
          f"{' (shared preference)' if args.model is None and args.verifier is None and args.prefer else ''}, "
          f"verifier {vlabel}, {args.prompts} prompts (row by row), gen_length {args.gen_length}\n")
    table, same_c = bench_causal(lm, causal, causal_tok, prompts, args)
    print("\n".join(table))
    print(f"\noutputs identical: stepwise {'yes' if same_s else 'NO'}, causal {'yes' if same_c else 'NO'}")
    return 0 if same_s and same_c else 1


if __name__ == "__main__":
    sys.exit(main())
