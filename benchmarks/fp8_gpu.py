"""FP8 weights on a GPU in one run (issue 16, item 3): speed at LLaDA-8B geometry, accuracy on dlm-tiny.

Parts (``--parts``; each writes its JSON to --out as soon as it is done, and a failing part is recorded, not fatal):

matmul  one linear layer at M=32 rows (a block of 32 positions at batch 1): 4096x4096 and 4096->12288, bf16
        ``F.linear`` vs the FP8 layer (per-token activation quantization + ``torch._scaled_mm``), each call replayed
        from a CUDA graph of 50 calls; each against its weight bytes over the measured copy bandwidth
scale   LLaDA-8B geometry with random bf16 weights (std 0.02), batch 1, prompt 128, gen 1024, block 32, 4 tokens
        per step (low_confidence, a fixed schedule), dual cache, CUDA graphs + fused kernels: the whole generation
        after a warm-up generation (which compiles and captures), ms per step in bf16, then the same weights
        quantized in place (``dlm.models.fp8.quantize_model``) in FP8; each against its own weight-read floor:
        the bytes of all parameters (FP8: 1 byte per linear weight + 4 per output channel, embedding in bf16) over
        the copy bandwidth, and without the embedding table (a step gathers only its rows)
tiny    the bundled dlm-tiny in bf16 and FP8 on the device: logit error over the answer positions of one task
        prompt per family (prompt + 32 masks), and the exact-match accuracy of the reference decode
        (``llada-reference``: one token per step, no cache) on the test split of every task family, 64 examples
        each, through ``dlm.bench``: per family and overall, FP8 minus bf16 in points

    python benchmarks/fp8_gpu.py --out results/fp8_gpu.json
    python benchmarks/fp8_gpu.py --device cpu --tiny --out /tmp/fp8.json      # smoke run (the reference path)
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from parts import run_parts
from torch import nn

import dlm
from dlm.api import from_model
from dlm.api.lm import set_fast_path
from dlm.bench.measure import sync
from dlm.bench.scale import copy_bandwidth, matmul_rate, random_lm
from dlm.models import fp8

RESULTS: dict = {}


def param_bytes(model: nn.Module, skip_embedding: bool = False) -> int:
    return sum(p.nbytes for n, p in model.named_parameters() if not (skip_embedding and n.startswith("embed.")))


# ------------------------------------------------------------------------------------------------ matmul
def per_call_us(fn, device: str) -> float:
    """Median microseconds per call of ``fn``; on a GPU the calls replay from one CUDA graph (no launch gaps)."""
    calls, repeats = (50, 20) if torch.device(device).type == "cuda" else (5, 3)
    for _ in range(3):
        fn()  # compiles the activation quantizer on its first call
    run = lambda: [fn() for _ in range(calls)]  # noqa: E731
    if torch.device(device).type == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        run = graph.replay
    times = []
    for _ in range(repeats):
        sync(torch.device(device))
        t0 = time.perf_counter()
        run()
        sync(torch.device(device))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / calls * 1e6


def time_layer(k: int, n: int, device: str, bandwidth: float) -> dict:
    """One k -> n layer at 32 rows: bf16 F.linear, the FP8 layer, and its torch._scaled_mm alone."""
    dtype = torch.bfloat16
    linear = nn.Linear(k, n, bias=False, device=device, dtype=dtype)
    nn.init.normal_(linear.weight, std=0.02)
    layer = fp8.FP8Linear.from_linear(linear)
    x = torch.randn(32, k, device=device, dtype=dtype)
    xq, xs = layer.quantize_rows(x)
    with torch.no_grad():
        bf16_us = per_call_us(lambda: F.linear(x, linear.weight), device)
        fp8_us = per_call_us(lambda: layer(x), device)
        mm_us = (per_call_us(lambda: torch._scaled_mm(xq, layer.weight.t(), scale_a=xs,
                                                      scale_b=layer.weight_scale.view(1, -1), out_dtype=dtype),
                             device) if layer.impl == "scaled_mm" else None)
    bytes_bf16, bytes_fp8 = linear.weight.nbytes, layer.weight.nbytes + layer.weight_scale.nbytes
    print(f"matmul {k}x{n} M=32: bf16 {bf16_us:.1f} us, fp8 {fp8_us:.1f} us ({layer.impl}), "
          f"x{bf16_us / fp8_us:.2f}", flush=True)
    return {"in": k, "out": n, "rows": 32, "fp8_impl": layer.impl, "bf16_us": bf16_us, "fp8_us": fp8_us,
            "fp8_scaled_mm_only_us": mm_us, "speedup": bf16_us / fp8_us,
            "bf16_floor_us": bytes_bf16 / bandwidth * 1e6, "fp8_floor_us": bytes_fp8 / bandwidth * 1e6}


def part_matmul(args, bandwidth: float) -> list[dict]:
    shapes = [(256, 256), (256, 768)] if args.tiny else [(4096, 4096), (4096, 12288)]
    return [time_layer(k, n, args.device, bandwidth) for k, n in shapes]


# ------------------------------------------------------------------------------------------------ scale
def end_to_end(lm, args, repeats: int = 2) -> dict:
    """ms per step of the whole generation (median of ``repeats`` after one warm-up generation)."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 100_000, (args.prompt,), generator=g)
    prompt[prompt == lm.ids.mask_id] = 1
    cfg = dlm.GenerationConfig(gen_length=args.gen, block_length=32, steps=args.gen // 4,
                               scheduler="low_confidence", cache="dual", stop_at_eos=False, seed=0)
    lm.generate([prompt.tolist()], cfg)  # compiles the fused kernels and captures the step graphs
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, steps = [], 0
    for _ in range(repeats):
        sync(lm.device)
        t0 = time.perf_counter()
        out = lm.generate([prompt.tolist()], cfg)
        sync(lm.device)
        walls.append(time.perf_counter() - t0)
        steps = out.steps
    wall = sorted(walls)[len(walls) // 2]
    return {"wall_s": wall, "steps": steps, "ms_per_step": wall / steps * 1e3,
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def with_floors(row: dict, model: nn.Module, bandwidth: float) -> dict:
    row["weight_bytes"] = param_bytes(model)
    row["floor_ms"] = row["weight_bytes"] / bandwidth * 1e3
    row["floor_no_embedding_ms"] = param_bytes(model, skip_embedding=True) / bandwidth * 1e3
    row["x_floor"] = row["ms_per_step"] / row["floor_ms"]
    return row


def fast_settings(lm, device: str):
    if torch.device(device).type == "cuda":
        set_fast_path(lm, True, True)
    return lm


def part_scale(args, bandwidth: float) -> dict:
    arch = "llada-tiny" if args.tiny else "llada-8b"
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    lm = fast_settings(random_lm(arch, device=args.device, dtype=dtype), args.device)
    res = {"arch": arch, "batch": 1, "prompt": args.prompt, "gen": args.gen, "block": 32, "tokens_per_step": 4,
           "cache": "dual", "graphs": lm.cuda_graphs, "fused": lm.model.ops.fused}
    res["bf16"] = with_floors(end_to_end(lm, args), lm.model, bandwidth)
    print(f"scale {arch} bf16: {res['bf16']['ms_per_step']:.2f} ms/step, {res['bf16']['x_floor']:.2f}x its floor "
          f"({res['bf16']['floor_ms']:.2f} ms)", flush=True)
    model, arch_cls, ids, max_length = lm.model, lm.arch_cls, lm.ids, lm.max_length
    del lm  # its engine (key/value pool, captured graphs) goes before the weights change
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    res["layers_quantized"] = fp8.quantize_model(model)
    sync(torch.device(args.device))
    res["quantize_s"] = time.perf_counter() - t0
    res["fp8_impls"] = sorted({m.impl for m in model.modules() if isinstance(m, fp8.FP8Linear)})
    lm = from_model(model, arch_cls, ids)
    lm.max_length = max_length
    res["fp8"] = with_floors(end_to_end(fast_settings(lm, args.device), args), model, bandwidth)
    res["fp8_vs_bf16_speedup"] = res["bf16"]["ms_per_step"] / res["fp8"]["ms_per_step"]
    print(f"scale {arch} fp8: {res['fp8']['ms_per_step']:.2f} ms/step, {res['fp8']['x_floor']:.2f}x its floor "
          f"({res['fp8']['floor_ms']:.2f} ms); x{res['fp8_vs_bf16_speedup']:.2f} vs bf16", flush=True)
    return res


# ------------------------------------------------------------------------------------------------ dlm-tiny
def logit_errors(plain, quantized) -> dict:
    """Errors of the FP8 logits over the answer positions of one task prompt per family + 32 masks."""
    from dlm.data import FAMILIES, get_task

    prompts = [get_task(f).generate("test", 1, 0)[0].prompt for f in FAMILIES]
    diffs, refs, agree = [], [], []
    with torch.no_grad():
        for ids in plain.encode(prompts):
            canvas = torch.tensor([ids + [plain.ids.mask_id] * 32], device=plain.device)
            a, b = plain.model(canvas)[0, -32:].float(), quantized.model(canvas)[0, -32:].float()
            diffs.append((a - b).abs())
            refs.append(a)
            agree.append((a.argmax(-1) == b.argmax(-1)).float())
    d, r = torch.cat(diffs), torch.cat(refs)
    return {"prompts": len(prompts), "max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "logit_std": float(r.std()), "rel_l2": float(d.norm() / r.norm()),
            "argmax_agreement": float(torch.cat(agree).mean())}


def accuracy(lm, n: int, batch: int) -> dict:
    """The reference decode's exact-match accuracy on the test split, per family, through dlm.bench."""
    from dlm.bench.methods import REFERENCE
    from dlm.bench.presets import NAMED, Suite
    from dlm.bench.runner import Bench
    from dlm.data import FAMILIES

    suite = Suite(tasks=FAMILIES, n=n, code_n=0, gen_length=(32,), block_length=(32,), batch_size=(batch,),
                  repeats=1, warmup=0, methods=(NAMED[REFERENCE],))
    row = Bench(lm, suite, log=lambda s: None).run()["rows"][0]
    return {"overall": row["metrics"]["accuracy"],
            "families": {f: v["accuracy"] for f, v in row["families"].items()}}


def part_tiny(args) -> dict:
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    plain = dlm.load(device=args.device, dtype=dtype, fast=False)
    quantized = dlm.load(device=args.device, dtype=dtype, quantize="fp8", fast=False)
    res = {"dtype": dtype, "fp8_impls": sorted({m.impl for m in quantized.model.modules()
                                                 if isinstance(m, fp8.FP8Linear)})}
    res["logits"] = logit_errors(plain, quantized)
    n, batch = (2, 12) if args.tiny else (64, 64)
    res["examples_per_family"] = n
    res["bf16"], res["fp8"] = accuracy(plain, n, batch), accuracy(quantized, n, batch)
    res["diff_points"] = 100 * (res["fp8"]["overall"] - res["bf16"]["overall"])
    res["diff_points_per_family"] = {f: 100 * (res["fp8"]["families"][f] - v)
                                     for f, v in res["bf16"]["families"].items()}
    print(f"dlm-tiny: logits rel {res['logits']['rel_l2']:.4f}, max {res['logits']['max_abs']:.3f}; accuracy "
          f"{100 * res['bf16']['overall']:.1f} -> {100 * res['fp8']['overall']:.1f} "
          f"({res['diff_points']:+.1f} points)", flush=True)
    return res


# ------------------------------------------------------------------------------------------------ report
def table() -> str:
    lines = []
    for r in RESULTS.get("matmul") or []:
        if isinstance(r, dict) and "bf16_us" in r:
            lines.append(f"matmul {r['in']}x{r['out']} M=32 | bf16 {r['bf16_us']:.1f} us (floor {r['bf16_floor_us']:.1f})"
                         f" | fp8 {r['fp8_us']:.1f} us (floor {r['fp8_floor_us']:.1f}) | x{r['speedup']:.2f}")
    s = RESULTS.get("scale") or {}
    for key in ("bf16", "fp8"):
        if key in s:
            r = s[key]
            mode = "graphs+fused" if s["graphs"] and s["fused"] else "eager"
            lines.append(f"{s['arch']} gen {s['gen']} dual {mode} {key} | {r['ms_per_step']:.2f} ms/step | floor "
                         f"{r['floor_ms']:.2f} ms ({r['floor_no_embedding_ms']:.2f} w/o embedding) | "
                         f"{r['x_floor']:.2f}x floor")
    t = RESULTS.get("tiny") or {}
    if "diff_points" in t:
        lines.append(f"dlm-tiny logits | max {t['logits']['max_abs']:.3f} mean {t['logits']['mean_abs']:.4f} "
                     f"rel {t['logits']['rel_l2']:.4f} argmax {t['logits']['argmax_agreement']:.3f}")
        for f, d in t["diff_points_per_family"].items():
            lines.append(f"dlm-tiny {f} | bf16 {100 * t['bf16']['families'][f]:.1f} | fp8 "
                         f"{100 * t['fp8']['families'][f]:.1f} | {d:+.1f} points")
        lines.append(f"dlm-tiny all | bf16 {100 * t['bf16']['overall']:.1f} | fp8 {100 * t['fp8']['overall']:.1f} | "
                     f"{t['diff_points']:+.1f} points")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", nargs="+", default=["matmul", "scale", "tiny"], choices=["matmul", "scale", "tiny"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny geometry, gen 64, 2 examples per family (smoke run)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --tiny for a smoke run")
    if args.tiny:
        args.prompt, args.gen = 16, 64
    cuda = args.device == "cuda"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bandwidth = copy_bandwidth(args.device, 2**31 if cuda else 2**24, 20 if cuda else 3)
    RESULTS["env"] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                      "copy_bandwidth_TBps": bandwidth / 1e12, "date": time.strftime("%Y-%m-%d"),
                      "matmul_TFLOPs": matmul_rate(args.device, 8192 if cuda else 256, 10 if cuda else 2) / 1e12}
    jobs = {"matmul": lambda: part_matmul(args, bandwidth), "scale": lambda: part_scale(args, bandwidth),
            "tiny": lambda: part_tiny(args)}
    run_parts(args.parts, jobs, RESULTS, lambda: args.out.write_text(json.dumps(RESULTS, indent=2, default=str)))
    print(table())


if __name__ == "__main__":
    main()
