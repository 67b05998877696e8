"""FP8 weights on a GPU in one run (issue 16, item 3): speed at LLaDA-8B geometry, accuracy on dlm-tiny.

Parts (``--parts``; each writes its JSON to --out as soon as it is done, and a failing part is recorded, not fatal):

matmul  one linear layer (LLaDA-8B's 4096->4096, 4096->12288 and 12288->4096) at 1 to 1152 rows (a block of 32
        positions at batch 1 is 32 rows, a refresh at prompt 128 + gen 1024 is 1152): bf16 ``F.linear``, the FP8
        layer's W8A16 Triton kernel (``dlm.models.fp8_kernel``, up to its 128 rows), its W8A8 path (per-token
        activation quantization + ``torch._scaled_mm``; also in parts: the quantization alone, the product alone,
        and, at multiples of 16 rows, the product with its operands swapped, the weight as the long side) and
        the reference path (dequantize, then ``F.linear``), each call replayed from a CUDA graph of 48 calls
        cycling over 8 copies of the weight (so the weight comes from memory, not from the 50 MB L2 cache); each
        against its weight bytes over the measured copy bandwidth.
        Where the W8A16 kernel stops winning is ``fp8_kernel.MAX_ROWS``. ``--matmul-shapes llada-8b dream-7b``:
        the products those models run instead (q/k/v and gate/up joined) at 16 to 256 rows
quantizer  the W8A8 path's activation quantizer alone (``dlm.models.fp8_rows_kernel``, the compiled and the eager
        function) at the input widths of LLaDA-8B's and Dream-7B's products and 32 to 12,288 rows
kernel  the W8A16 kernel's tiles (BLOCK_N x BLOCK_K, warps, pipeline stages, K split) around the defaults, on
        the three shapes at 32 and 128 rows (``--sweep-rows``), against the defaults
scale   LLaDA-8B geometry with random bf16 weights (std 0.02), batch 1 (``--batch``: that many requests decoded
        together), prompt 128, gen 1024 (``--gen``), block 32, 4 tokens per step (low_confidence, a fixed schedule),
        dual cache, CUDA graphs + fused kernels: the whole generation after a warm-up generation (which compiles and
        captures), ms per step in bf16, then the same weights quantized in place (``dlm.models.fp8.quantize_model``)
        in FP8; each against its own weight-read floor: the bytes of all parameters (FP8: 1 byte per linear weight +
        4 per output channel, embedding in bf16) over the copy bandwidth, and without the embedding table (a step
        gathers only its rows). FP8 four times: the default (``w8a16``: the kernel up to ``fp8_kernel.max_rows``
        rows, ``torch._scaled_mm`` above; q/k/v and gate/up joined), the same with q/k/v and gate/up split again,
        ``scaled_mm`` for every product, and the kernel up to 128 rows in every product (the rule before 2026-11-29)
tiny    the bundled dlm-tiny in bf16 and FP8 on the device: logit error over the answer positions of one task
        prompt per family (prompt + 32 masks), and the exact-match accuracy of the reference decode
        (``llada-reference``: one token per step, no cache) on the test split of every task family, 64 examples
        each, through ``dlm.bench``: per family and overall, FP8 minus bf16 in points

    python benchmarks/fp8_gpu.py --out results/fp8_gpu.json
    python benchmarks/fp8_gpu.py --device cpu --tiny --out /tmp/fp8.json      # smoke run (the reference path)
    python benchmarks/fp8_gpu.py --parts scale --archs llada-8b --batch 32 --gen 256 --out results/fp8_b32.json
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
from dlm.models import fp8, fp8_kernel
from dlm.models.joined import split_projections

RESULTS: dict = {}


def param_bytes(model: nn.Module, skip_embedding: bool = False) -> int:
    return sum(p.nbytes for n, p in model.named_parameters() if not (skip_embedding and n.startswith("embed.")))


# ------------------------------------------------------------------------------------------------ matmul
SHAPES = [(4096, 4096), (4096, 12288), (12288, 4096)]  # (in, out): q/k/v/o, gate/up, down of LLaDA-8B
# --matmul-shapes: the products the models run, q/k/v and gate/up joined (dlm.models.joined)
JOINED_SHAPES = {"llada-8b": [(4096, 12288), (4096, 4096), (4096, 24576), (12288, 4096)],
                 "dream-7b": [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584)]}
JOINED_ROWS = [16, 32, 48, 64, 96, 128, 256]
TINY_SHAPES = [(256, 256), (256, 768)]
ROWS = [1, 16, 32, 64, 128, 256, 1152]
COPIES, CALLS = 8, 48  # weights cycled per graph: 8 x 16 MB (the smallest FP8 layer) is past the L2 cache


def per_call_us(fn, device: str, calls: int = CALLS) -> float:
    """Median microseconds per call of ``fn(i)`` for i = 0..calls-1; on a GPU the calls replay from one CUDA graph
    (no launch gaps)."""
    cuda = torch.device(device).type == "cuda"
    calls, repeats = (calls, 20) if cuda else (min(calls, 4), 3)
    for i in range(3):
        fn(i)  # compiles the activation quantizer / the kernel on its first call
    run = lambda: [fn(i) for i in range(calls)]  # noqa: E731
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
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


def fp8_layers(k: int, n: int, device: str, copies: int) -> list[fp8.FP8Linear]:
    """``copies`` FP8 layers k -> n (random bf16 weights, std 0.02, quantized); each keeps its bf16 weight as
    ``.bf16`` for the bf16 timing."""
    layers = []
    for _ in range(copies):
        linear = nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
        nn.init.normal_(linear.weight, std=0.02)
        layer = fp8.FP8Linear.from_linear(linear)
        layer.bf16 = linear.weight
        layers.append(layer)
    return layers


def time_layer(k: int, n: int, device: str, bandwidth: float, rows_list) -> list[dict]:
    """One k -> n layer at each row count: bf16 F.linear, the W8A16 kernel and the W8A8 scaled_mm path."""
    copies = COPIES if torch.device(device).type == "cuda" else 1
    layers = fp8_layers(k, n, device, copies)
    kernel = layers[0].impl == "w8a16"
    out = []

    def lay(i: int) -> fp8.FP8Linear:
        return layers[i % copies]

    for rows in rows_list:
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            r = {"in": k, "out": n, "rows": rows, "fp8_impl": layers[0].impl,
                 "bf16_us": per_call_us(lambda i, x=x: F.linear(x, lay(i).bf16), device)}
            if layers[0].impl != "reference":
                r["scaled_mm_us"] = per_call_us(lambda i, x=x: fp8.linear_scaled_mm(
                    x, lay(i).weight, lay(i).weight_scale, None, lay(i).quantize_rows), device)
                r.update(scaled_mm_parts(x, lay, device))
            r["reference_us"] = per_call_us(lambda i, x=x: fp8.linear_reference(
                x, lay(i).weight, lay(i).weight_scale, None), device)
            if kernel and rows <= fp8_kernel.MAX_ROWS:
                r["w8a16_us"] = per_call_us(lambda i, x=x: fp8_kernel.linear_w8a16(
                    x, lay(i).weight, lay(i).weight_scale, None), device)
        r["bf16_floor_us"] = layers[0].bf16.nbytes / bandwidth * 1e6
        r["fp8_floor_us"] = (layers[0].weight.nbytes + layers[0].weight_scale.nbytes) / bandwidth * 1e6
        r["fp8_us"] = min(r.get(key, float("inf")) for key in ("w8a16_us", "scaled_mm_us", "reference_us"))
        r["speedup"] = r["bf16_us"] / r["fp8_us"] if r["fp8_us"] < float("inf") else None
        print(f"matmul {k}x{n} M={rows}: bf16 {r['bf16_us']:.1f} us, w8a16 {r.get('w8a16_us', float('nan')):.1f}, "
              f"scaled_mm {r.get('scaled_mm_us', float('nan')):.1f} (quantize {r.get('quantize_us', float('nan')):.1f}, "
              f"product {r.get('scaled_mm_product_us', float('nan')):.1f}, swapped "
              f"{r.get('scaled_mm_swapped_us', float('nan')):.1f}), dequantized {r['reference_us']:.1f} (floors {r['bf16_floor_us']:.1f} / "
              f"{r['fp8_floor_us']:.1f})", flush=True)
        out.append(r)
    return out


def scaled_mm_parts(x: torch.Tensor, lay, device: str) -> dict:
    """The W8A8 path in parts: the activations' quantization alone (``quantize_us``), the product alone on
    activations quantized beforehand (``scaled_mm_product_us``), and the same product with its operands swapped
    (``scaled_mm_swapped_us``: the weight as the long left operand, the few rows as the right one, the output
    transposed back as a view), with the largest difference between the two orders' outputs."""
    xq, xs = fp8.quantize_rows(x)
    xs_t = xs.view(1, -1).contiguous()

    def plain(i):
        return torch._scaled_mm(xq, lay(i).weight.t(), scale_a=xs, scale_b=lay(i).weight_scale.view(1, -1),
                                out_dtype=torch.bfloat16)

    def swapped(i):
        return torch._scaled_mm(lay(i).weight, xq.t(), scale_a=lay(i).weight_scale.view(-1, 1), scale_b=xs_t,
                                out_dtype=torch.bfloat16).t()

    quantize = lay(0).quantize_rows
    out = {"quantize_us": per_call_us(lambda i: quantize(x), device),
           "scaled_mm_product_us": per_call_us(plain, device)}
    if x.shape[0] % 16 == 0:  # (torch._scaled_mm wants the right operand's columns in multiples of 16)
        out["scaled_mm_swapped_us"] = per_call_us(swapped, device)
        out["swapped_max_abs_diff"] = (plain(0).float() - swapped(0).float()).abs().max().item()
    return out


QUANTIZER_COLS = (3584, 4096, 12288, 18944)  # the inputs of Dream-7B's and LLaDA-8B's products
QUANTIZER_ROWS = (32, 1024, 1152, 12288)


def part_quantizer(args, bandwidth: float) -> list[dict]:
    """The activation quantizer alone: the kernel against the compiled and the eager function (us a call)."""
    from dlm.models import fp8_rows_kernel

    out = []
    for cols in QUANTIZER_COLS:
        for rows in QUANTIZER_ROWS:
            xs = [torch.randn(rows, cols, device=args.device, dtype=torch.bfloat16) for _ in range(COPIES)]
            calls = COPIES if rows * cols > 2**24 else CALLS  # (a graph keeps every call's outputs)
            r = {"rows": rows, "cols": cols,
                 "floor_us": rows * cols * 3 / bandwidth * 1e6,  # bf16 read, e4m3 written
                 "compiled_us": per_call_us(lambda i, xs=xs: fp8.compiled_quantizer()(xs[i % COPIES]), args.device,
                                            calls),
                 "eager_us": per_call_us(lambda i, xs=xs: fp8.quantize_rows(xs[i % COPIES]), args.device, calls)}
            if fp8_rows_kernel.applies(xs[0]):
                r["kernel_us"] = per_call_us(lambda i, xs=xs: fp8_rows_kernel.quantize_rows(xs[i % COPIES]),
                                             args.device, calls)
            print(f"quantizer {rows} x {cols}: kernel {r.get('kernel_us', float('nan')):.1f} us, compiled "
                  f"{r['compiled_us']:.1f}, eager {r['eager_us']:.1f} (floor {r['floor_us']:.1f})", flush=True)
            out.append(r)
            del xs
    return out


def part_matmul(args, bandwidth: float) -> list[dict]:
    shapes, rows = (TINY_SHAPES, [1, 32]) if args.tiny else (SHAPES, ROWS)
    if args.matmul_shapes and not args.tiny:
        shapes, rows = [sh for arch in args.matmul_shapes for sh in JOINED_SHAPES[arch]], JOINED_ROWS
    return [r for k, n in shapes for r in time_layer(k, n, args.device, bandwidth, rows)]


# (BLOCK_N, BLOCK_K, warps, stages, split): the tiles around the defaults. Earlier sweeps (2026-11-28): 60
# tiles at 32 rows (BLOCK_N 32-128, BLOCK_K 64-256, 4/8 warps, 4/6 stages, split 1-8) chose 64 x 128, 4 warps,
# 4 stages, split 2-4; at 128 rows 4 warps and 3 stages; float16 operands (the weight converted in one
# instruction, the activations scaled into float16's range) were slower than bf16 ones
TILES = {32: [(bn, bk, w, st, split) for bn, bk, w, st in ((64, 128, 4, 4), (64, 64, 4, 4), (128, 128, 8, 4))
              for split in (2, 4)],
         128: [(bn, bk, w, st, None) for bn, bk, w, st in ((64, 128, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3))]}


def part_kernel(args, bandwidth: float) -> list[dict]:
    """The W8A16 kernel's tile sweep (BLOCK_N, BLOCK_K, warps, stages, K split) at the row counts of
    ``--sweep-rows``, fastest first per shape, and the defaults (the fixed tiles with the layer's own split,
    ``fp8_kernel.splits``)."""
    if torch.device(args.device).type != "cuda" or not fp8_kernel.works(torch.device(args.device)):
        raise RuntimeError("the W8A16 kernel needs a CUDA GPU of compute capability >= 8.9 with Triton")
    return [sweep_tiles(k, n, m, args.device, bandwidth) for m in args.sweep_rows for k, n in SHAPES]


def sweep_tiles(k: int, n: int, m: int, device: str, bandwidth: float) -> dict:
    """The tiles of ``TILES[m]`` on one k -> n layer at m rows, and the defaults."""
    layers = fp8_layers(k, n, device, COPIES)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    floor = (layers[0].weight.nbytes + layers[0].weight_scale.nbytes) / bandwidth * 1e6
    rows = []
    default = (fp8_kernel.BLOCK_N, fp8_kernel.BLOCK_K, fp8_kernel.NUM_WARPS, None, None)
    for bn, bk, w, st, split in TILES[m] + [default]:
        tile = {"block_n": bn, "block_k": bk, "warps": w, "stages": st, "split": split}

        def fn(i, bn=bn, bk=bk, w=w, st=st, split=split, layers=layers, x=x):
            lay = layers[i % COPIES]
            return fp8_kernel.linear_w8a16(x, lay.weight, lay.weight_scale, None, bn, bk, w, st, split)
        try:
            us = per_call_us(fn, device)
        except Exception as exc:  # noqa: BLE001 - a tile Triton cannot build is recorded, not fatal
            rows.append({**tile, "error": repr(exc)[:200]})
            continue
        rows.append({**tile, "us": us, "x_floor": us / floor})
    default = rows.pop()
    rows.sort(key=lambda r: r.get("us", float("inf")))
    print(f"kernel {k}x{n} M={m}: default {default}, floor {floor:.1f} us; fastest:", flush=True)
    for r in rows[:4]:
        print(f"    {r}", flush=True)
    return {"in": k, "out": n, "rows": m, "fp8_floor_us": floor, "tiles": rows, "default": default}


# ------------------------------------------------------------------------------------------------ scale
def end_to_end(lm, args, repeats: int = 2) -> dict:
    """ms per step of the whole generation (median of ``repeats`` after one warm-up generation)."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 100_000, (args.batch, args.prompt), generator=g)
    prompts[prompts == lm.ids.mask_id] = 1
    prompts = prompts.tolist()
    cfg = dlm.GenerationConfig(gen_length=args.gen, block_length=32, steps=args.gen // 4,
                               scheduler="low_confidence", cache="dual", stop_at_eos=False, seed=0)
    lm.generate(prompts, cfg)  # compiles the fused kernels and captures the step graphs
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    walls, steps = [], 0
    for _ in range(repeats):
        sync(lm.device)
        t0 = time.perf_counter()
        out = lm.generate(prompts, cfg)
        sync(lm.device)
        walls.append(time.perf_counter() - t0)
        steps = out.steps
    wall = sorted(walls)[len(walls) // 2]
    return {"wall_s": wall, "steps": steps, "ms_per_step": wall / steps * 1e3,
            "tokens_per_s": args.batch * args.gen / wall,
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


def fp8_lm(model, arch_cls, ids, max_length, impl: str | None, device: str, split: bool = False,
           w8a16_rows: int | None = None):
    """A DiffusionLM over the (already quantized) ``model`` with the fast settings, its FP8 path forced to
    ``impl`` (``None``: the default), its joined q/k/v and gate/up split again when ``split``, the W8A16 kernel
    taken up to ``w8a16_rows`` rows in every product when given (else by ``fp8_kernel.max_rows``)."""
    lm = from_model(model, arch_cls, ids)
    lm.max_length = max_length
    lm = fast_settings(lm, device)
    if split:
        split_projections(lm.model)
    if impl is not None:
        fp8.set_fp8_impl(lm.model, impl)
    if w8a16_rows is not None:  # (else each layer keeps its own, fp8_kernel.max_rows)
        for m in lm.model.modules():
            if isinstance(m, fp8.FP8Linear):
                m.w8a16_rows = w8a16_rows
    return lm


def free(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def scale_arch(arch: str, args, bandwidth: float) -> dict:
    """bf16, then the same weights in FP8 with the default path and with scaled_mm for every product."""
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    lm = fast_settings(random_lm(arch, device=args.device, dtype=dtype), args.device)
    res = {"arch": arch, "batch": args.batch, "prompt": args.prompt, "gen": args.gen, "block": 32, "tokens_per_step": 4,
           "cache": "dual", "graphs": lm.cuda_graphs, "fused": lm.model.ops.fused}
    res["bf16"] = with_floors(end_to_end(lm, args), lm.model, bandwidth)
    print(f"scale {arch} bf16: {res['bf16']['ms_per_step']:.2f} ms/step, {res['bf16']['x_floor']:.2f}x its floor "
          f"({res['bf16']['floor_ms']:.2f} ms)", flush=True)
    model, arch_cls, ids, max_length = lm.model, lm.arch_cls, lm.ids, lm.max_length
    del lm  # its engine (key/value pool, captured graphs) goes before the weights change
    free(args.device)
    t0 = time.perf_counter()
    res["layers_quantized"] = fp8.quantize_model(model)
    sync(torch.device(args.device))
    res["quantize_s"] = time.perf_counter() - t0
    default = sorted({m.impl for m in model.modules() if isinstance(m, fp8.FP8Linear)})
    res["fp8_impls"] = default
    runs = [("fp8", None, False, None), ("fp8_split", None, True, None)]
    if default == ["w8a16"]:
        runs += [("fp8_scaled_mm", "scaled_mm", False, None),
                 ("fp8_w8a16_to_max_rows", None, False, fp8_kernel.MAX_ROWS)]  # the rule before 2026-11-29
    for key, impl, split, w8a16_rows in runs:
        lm = fp8_lm(model, arch_cls, ids, max_length, impl, args.device, split, w8a16_rows)
        res[key] = with_floors(end_to_end(lm, args), model, bandwidth)
        res[key + "_vs_bf16_speedup"] = res["bf16"]["ms_per_step"] / res[key]["ms_per_step"]
        print(f"scale {arch} {key}: {res[key]['ms_per_step']:.2f} ms/step, {res[key]['x_floor']:.2f}x its floor "
              f"({res[key]['floor_ms']:.2f} ms); x{res[key + '_vs_bf16_speedup']:.2f} vs bf16", flush=True)
        del lm
        free(args.device)
    del model
    free(args.device)
    return res


def part_scale(args, bandwidth: float) -> list[dict]:
    archs = ["llada-tiny"] if args.tiny else args.archs
    return [scale_arch(arch, args, bandwidth) for arch in archs]


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
            cell = lambda key, r=r: f"{r[key]:.1f}" if key in r else "-"  # noqa: E731
            lines.append(f"matmul {r['in']}x{r['out']} M={r['rows']} | bf16 {r['bf16_us']:.1f} us (floor "
                         f"{r['bf16_floor_us']:.1f}) | w8a16 {cell('w8a16_us')} | scaled_mm {cell('scaled_mm_us')} | "
                         f"dequantized {cell('reference_us')} | "
                         f"fp8 floor {r['fp8_floor_us']:.1f} | x{r['speedup'] or float('nan'):.2f}")
    for r in RESULTS.get("kernel") or []:
        if isinstance(r, dict) and r.get("tiles"):
            best, d = r["tiles"][0], r["default"] or {}
            lines.append(f"kernel {r['in']}x{r['out']} M={r['rows']} | best {best.get('block_n')}x{best.get('block_k')} "
                         f"w{best.get('warps')} s{best.get('stages')} split {best.get('split')} "
                         f"{best.get('us', float('nan')):.1f} us | default "
                         f"{d.get('us', float('nan')):.1f} us | floor {r['fp8_floor_us']:.1f}")
    scale = RESULTS.get("scale")
    for s in scale if isinstance(scale, list) else []:
        for key in [k for k in s if k == "bf16" or k.startswith("fp8") and isinstance(s[k], dict)]:
            if key in s:
                r = s[key]
                mode = "graphs+fused" if s["graphs"] and s["fused"] else "eager"
                lines.append(f"{s['arch']} batch {s['batch']} gen {s['gen']} dual {mode} {key} | "
                             f"{r['ms_per_step']:.2f} ms/step, {r['tokens_per_s']:.0f} tokens/s | floor "
                             f"{r['floor_ms']:.2f} ms ({r['floor_no_embedding_ms']:.2f} w/o embedding) | "
                             f"{r['x_floor']:.2f}x floor")
    t = RESULTS.get("tiny") or {}
    if "diff_points" in t:
        lines.append(f"dlm-tiny logits ({', '.join(t['fp8_impls'])}) | max {t['logits']['max_abs']:.3f} mean "
                     f"{t['logits']['mean_abs']:.4f} rel {t['logits']['rel_l2']:.4f} argmax "
                     f"{t['logits']['argmax_agreement']:.3f}")
        for f, d in t["diff_points_per_family"].items():
            lines.append(f"dlm-tiny {f} | bf16 {100 * t['bf16']['families'][f]:.1f} | fp8 "
                         f"{100 * t['fp8']['families'][f]:.1f} | {d:+.1f} points")
        lines.append(f"dlm-tiny all | bf16 {100 * t['bf16']['overall']:.1f} | fp8 {100 * t['fp8']['overall']:.1f} | "
                     f"{t['diff_points']:+.1f} points")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", nargs="+", default=["matmul", "scale", "tiny"],
                    choices=["matmul", "kernel", "quantizer", "scale", "tiny"])
    ap.add_argument("--sweep-rows", nargs="+", type=int, default=sorted(TILES), choices=sorted(TILES),
                    help="row counts of the kernel part")
    ap.add_argument("--archs", nargs="+", default=["llada-8b", "dream-7b"], help="geometries of the scale part")
    ap.add_argument("--matmul-shapes", nargs="+", choices=sorted(JOINED_SHAPES),
                    help="the matmul part on these models' products (q/k/v and gate/up joined), 16 to 256 rows")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny geometry, gen 64, 2 examples per family (smoke run)")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1, help="requests decoded together in the scale part")
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
    jobs = {"matmul": lambda: part_matmul(args, bandwidth), "kernel": lambda: part_kernel(args, bandwidth),
            "quantizer": lambda: part_quantizer(args, bandwidth),
            "scale": lambda: part_scale(args, bandwidth),
            "tiny": lambda: part_tiny(args)}
    run_parts(args.parts, jobs, RESULTS, lambda: args.out.write_text(json.dumps(RESULTS, indent=2, default=str)))
    print(table())


if __name__ == "__main__":
    main()
