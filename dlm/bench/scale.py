"""Scale runs: per-step latency of real-size architectures with random weights, against the roofline floor.

LLaDA-8B and Dream-7B geometries are built with random bf16 weights directly on the GPU (no checkpoint needed);
every step commits a fixed number of tokens (``low_confidence`` with steps = gen_length / tokens_per_step), so
the step count does not depend on the random model's confidences. For each cache policy the time per step is
measured on a block in the middle of the answer (the first half of the answer is pre-filled as committed text,
so the canvas has its full length and the prefix cache its average cost), after a warm-up block, with CUDA
synchronisation around the timed blocks.

Every figure is reported next to the floors measured in the same run: the bytes of the weights over the measured
device-to-device copy bandwidth (reads + writes), and the forward's matrix FLOPs over the measured bf16 matrix
rate. Ratios are against the ``none`` policy of the same (architecture, batch, gen_length).

    python -m dlm.bench.scale --arch llada-8b dream-7b --batch 1 8 --gen 256 1024 --out results/scale.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..api import from_model
from ..api.lm import set_fast_path
from ..config import GenerationConfig
from ..models.base import MODELS, SpecialIds
from ..models.transformer import ArchConfig, Transformer
from .methods import parse_component

LLADA_8B = {
    "model_type": "llada", "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
    "mlp_ratio": 4, "activation_type": "silu", "block_type": "llama", "layer_norm_type": "rms", "rms_norm_eps": 1e-5,
    "rope": True, "rope_theta": 500000.0, "max_sequence_length": 4096, "vocab_size": 126464, "embedding_size": 126464,
    "weight_tying": False, "include_bias": False, "include_qkv_bias": False, "scale_logits": False,
    "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
}
DREAM_7B = {
    "model_type": "Dream", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 131072, "vocab_size": 152064, "tie_word_embeddings": False, "hidden_act": "silu",
    "mask_token_id": 151666, "eos_token_id": 151643, "pad_token_id": 151643,
}
# tiny geometries of both formats, for a CPU smoke run of this script
LLADA_TINY = {**LLADA_8B, "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128,
              "vocab_size": 126464, "embedding_size": 126464}
DREAM_TINY = {**DREAM_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
ARCHS = {"llada-8b": LLADA_8B, "dream-7b": DREAM_7B, "llada-tiny": LLADA_TINY, "dream-tiny": DREAM_TINY}
STOP_IDS = {"llada": (126081, 126348), "Dream": (151643, 151645)}


def random_lm(name: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A DiffusionLM of the named geometry with random weights (std 0.02), built on the device directly;
    ``device="meta"``: shapes only (no weights), what a process that only reads prompts and answers needs."""
    lm = _random_lm_on_meta(name)
    if torch.device(device).type == "meta":
        return lm
    model = lm.model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    lm.model = model.eval()
    return lm


def _random_lm_on_meta(name: str):
    cfg = ARCHS[name]
    arch_cls = MODELS.get(cfg["model_type"])
    arch: ArchConfig = arch_cls.parse_config(cfg)
    with torch.device("meta"):
        model = Transformer(arch)
    ids = SpecialIds(mask_id=cfg["mask_token_id"], eos_id=cfg["eos_token_id"], pad_id=cfg["pad_token_id"],
                     stop_ids=STOP_IDS[cfg["model_type"]])
    lm = from_model(model.eval(), arch_cls, ids)
    lm.max_length = arch_cls.max_length(cfg)
    return lm


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after 3 warm-ups (CUDA events on GPU)."""
    times = []
    for _ in range(repeats + 3):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[3:])
    return times[len(times) // 2]


def copy_bandwidth(device: str = "cuda", nbytes: int = 2**31, repeats: int = 20) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written (median of repeats)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / _timed(lambda: dst.copy_(src), device, repeats)


def square_operands(device: str = "cuda", n: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random bf16 (n, n) matrices on ``device``: the operands of the matmul-rate measurements."""
    return (torch.randn(n, n, device=device, dtype=torch.bfloat16),
            torch.randn(n, n, device=device, dtype=torch.bfloat16))


def matmul_rate(device: str = "cuda", n: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product rate in FLOP/s on random data (median)."""
    a, b = square_operands(device, n)
    return 2 * n**3 / _timed(lambda: a @ b, device, repeats)


def sustained_matmul_rate(device: str = "cuda", seconds: float = 4.0, n: int = 8192) -> float:
    """bf16 matrix-product rate in FLOP/s over ``seconds`` of products back to back (total FLOPs over total time).

    :func:`matmul_rate` times a few products: on a GPU that has idled, they run at its boost clock. Under
    products back to back a GPU at its power limit lowers its clock within a fraction of a second (an H200 at
    700 W: from 1,980 to 1,400-1,550 MHz), so a run that lasts seconds cannot keep the
    short measurement's rate; this is the rate a run of ``seconds`` can keep (``benchmarks/matmul_clock.py``:
    750 TFLOP/s short, 660 over 6 s on one H200)."""
    a, b = square_operands(device, n)
    a @ b  # the kernel's first call (its choice and load) is not timed
    _sync(device)
    t0 = time.perf_counter()
    count = 0
    while True:
        for _ in range(8):
            a @ b
        count += 8
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n**3 * count / elapsed


@dataclass
class ScaleResult:
    arch: str
    cache: str
    graphs: bool
    fused: bool
    batch: int
    gen_length: int
    block_length: int
    tokens_per_step: int
    prompt_length: int
    ms_per_step: float
    tokens_per_s: float
    fed_per_step: float
    peak_mem_gb: float
    floor_bw_ms: float
    floor_flops_ms: float
    steps_timed: int
    speedup_vs_none: float | None = None
    x_floor: float | None = None


def forward_flops(arch: ArchConfig, fed_tokens: float, keys: int, logits: int) -> float:
    """Matrix FLOPs of one forward: projections + MLP per fed token, attention scores/values, the head."""
    d, hd = arch.hidden_size, arch.head_dim
    per_token = 2 * (d * arch.num_heads * hd + 2 * d * arch.num_kv_heads * hd + arch.num_heads * hd * d
                     + 3 * d * arch.intermediate_size)
    attn = 4 * arch.num_heads * hd * keys
    return arch.num_layers * fed_tokens * (per_token + attn) + 2 * logits * d * arch.vocab_size


def time_config(lm, *, cache: str, batch: int, gen_length: int, block_length: int = 32, tokens_per_step: int = 4,
                prompt_length: int = 128, warmup_blocks: int = 2, timed_blocks: int = 2, seed: int = 0,
                bandwidth: float = 1.0, flop_rate: float = 1.0, arch_name: str = "") -> ScaleResult:
    """Time ``timed_blocks`` blocks in the middle of the answer (see the module doc). The warm-up blocks also let
    CUDA graphs capture both step shapes of the block caches (the refresh and the steady step)."""
    device = lm.device
    need = (warmup_blocks + timed_blocks) * block_length
    if gen_length - gen_length // 2 < need:
        raise ValueError(f"gen_length {gen_length} is too short to time: the second half of the answer must hold "
                         f"{warmup_blocks} warm-up + {timed_blocks} timed blocks of {block_length} ({need} positions)")
    if block_length % tokens_per_step:
        raise ValueError(f"tokens_per_step {tokens_per_step} must divide block_length {block_length}")
    g = torch.Generator().manual_seed(seed)
    half = gen_length // 2
    vocab = lm.arch.valid_vocab or lm.arch.vocab_size
    prompts = torch.randint(0, min(vocab, 100000), (batch, prompt_length + half), generator=g)
    prompts[prompts == lm.ids.mask_id] = 1
    remaining = gen_length - half
    cache_name, cache_kwargs, _ = parse_component(cache, "cache")
    cfg = GenerationConfig(gen_length=remaining, block_length=block_length,
                           steps=remaining // tokens_per_step, scheduler="low_confidence", cache=cache_name,
                           cache_kwargs=cache_kwargs, stop_at_eos=False, seed=seed)
    steps_per_block = block_length // tokens_per_step
    warm, timed = warmup_blocks * steps_per_block, timed_blocks * steps_per_block
    marks: dict[str, float] = {}

    def stream(event):  # every request takes the same steps (a fixed schedule): time request 0, stop them all
        if event.tag == 0 and event.step == warm:
            _sync(device)
            marks["t0"] = time.perf_counter()
        if event.tag == 0 and event.step == warm + timed:
            _sync(device)
            marks["t1"] = time.perf_counter()
        if event.step >= warm + timed:
            event.stop()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = lm.generate(prompts.tolist(), cfg, stream=stream)
    ms = (marks["t1"] - marks["t0"]) / timed * 1e3
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    fed_per_step = out.stats["fed_positions"] / max(1.0, out.stats["forwards"])
    keys = prompt_length + gen_length
    flops = forward_flops(lm.arch, batch * fed_per_step, keys, batch * block_length)
    return ScaleResult(
        arch=arch_name, cache=cache, graphs=bool(getattr(lm, "cuda_graphs", False)), fused=lm.model.ops.fused,
        batch=batch,
        gen_length=gen_length, block_length=block_length, tokens_per_step=tokens_per_step,
        prompt_length=prompt_length, ms_per_step=ms, tokens_per_s=batch * tokens_per_step / (ms / 1e3),
        fed_per_step=fed_per_step, peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        floor_bw_ms=weight_bytes / bandwidth * 1e3, floor_flops_ms=flops / flop_rate * 1e3, steps_timed=timed,
    )


def run(archs, batches, gens, caches, graphs_modes, out_path: Path | None, tokens_per_step: int = 4,
        timed_blocks: int = 2, device: str = "cuda", fused_modes: Sequence[bool] = (False,),
        warm_shapes: int = 0) -> list[dict]:
    """Time every (arch, batch, gen, cache) with every option set. ``warm_shapes``: run each option set that
    many times untimed right before its timed run, in the same engine, so the timed run is the steady state a
    server sees after its first requests of that kind (two: layouts that a request meets once each, like
    ``dual:refresh_from=last_block``'s refreshes, are captured at their second occurrence and replay from the
    third): shapes met before (attention plans, compiled kernels) and graphs
    captured before (the engine keeps them) cost nothing again. Without it each option set is timed on its
    first run, paying for the shapes it meets first (the ``prefix``, ``delayed`` and ``window`` caches meet new
    ones in the timed blocks) and for its captures."""
    cuda = torch.device(device).type == "cuda"
    bw = copy_bandwidth(device, 2**31 if cuda else 2**26, 20 if cuda else 3)
    rate = matmul_rate(device, 8192 if cuda else 512, 10 if cuda else 3)
    env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "copy_bandwidth_TBps": bw / 1e12, "matmul_TFLOPs": rate / 1e12, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(env), flush=True)
    rows: list[dict] = []
    for name in archs:
        lm = random_lm(name, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
        lm.generate([[1, 2, 3]], GenerationConfig(gen_length=32, block_length=32, steps=8, stop_at_eos=False))
        combos = [(f, g) for f in fused_modes for g in graphs_modes]
        if any(f for f, _ in combos):  # compile (and warm up) the fused kernels outside the timed windows
            set_fast_path(lm, False, True)
            lm.generate([[1, 2, 3]], GenerationConfig(gen_length=32, block_length=32, steps=8, stop_at_eos=False))
        for batch in batches:
            for gen in gens:
                base: dict[tuple, float] = {}
                for cache in caches:
                    for fused, graphs in combos:  # every option set of a configuration before the next one
                        set_fast_path(lm, graphs, fused)
                        try:
                            for _ in range(int(warm_shapes)):  # same options, same (kept) engine: its graphs
                                time_config(lm, cache=cache, batch=batch, gen_length=gen,  # and shapes carry over
                                            tokens_per_step=tokens_per_step, timed_blocks=timed_blocks)
                            r = time_config(lm, cache=cache, batch=batch, gen_length=gen, tokens_per_step=tokens_per_step,
                                            bandwidth=bw, flop_rate=rate, arch_name=name, timed_blocks=timed_blocks)
                        except torch.cuda.OutOfMemoryError:
                            print(f"OOM: {name} {cache} batch {batch} gen {gen}", flush=True)
                            torch.cuda.empty_cache()
                            continue
                        if cache == "none":
                            base[fused, graphs] = r.ms_per_step
                        r.speedup_vs_none = base[fused, graphs] / r.ms_per_step if (fused, graphs) in base else None
                        r.x_floor = r.ms_per_step / max(r.floor_bw_ms, r.floor_flops_ms)
                        d = asdict(r)
                        rows.append(d)
                        print(json.dumps(d), flush=True)
                        if out_path is not None:
                            out_path.write_text(json.dumps({"env": env, "rows": rows}, indent=1))
        del lm
        if cuda:
            torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| arch | graphs | fused | batch | gen | cache | ms/step | tokens/s | x vs none | fed/step | "
            "floor ms (bw / flops) | x floor | peak GB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        sp = "-" if r["speedup_vs_none"] is None else f"{r['speedup_vs_none']:.2f}"
        lines.append(
            f"| {r['arch']} | {'yes' if r['graphs'] else 'no'} | {'yes' if r.get('fused') else 'no'} | {r['batch']} | {r['gen_length']} | {r['cache']} | "
            f"{r['ms_per_step']:.2f} | {r['tokens_per_s']:.0f} | {sp} | {r['fed_per_step']:.0f} | "
            f"{r['floor_bw_ms']:.2f} / {r['floor_flops_ms']:.2f} | {r['x_floor']:.2f} | {r['peak_mem_gb']:.1f} |"
        )
    return "\n".join(lines)


def _options(r: dict) -> str:
    return {(True, True): "graphs + fused", (True, False): "graphs", (False, True): "fused",
            (False, False): "eager"}[(bool(r["graphs"]), bool(r.get("fused")))]


def defaults_table(rows: list[dict], graphs: bool = True, fused: bool = True) -> str:
    """Per (arch, batch, gen, cache): the option set ``dlm.load`` picks by default on CUDA (``graphs`` and
    ``fused``; see :func:`dlm.api.lm.fast_options`) against the fastest option set measured and against eager;
    only configurations measured with the default and at least one other option set."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["batch"], r["gen_length"], r["cache"]), []).append(r)
    lines = ["| arch | batch | gen | cache | default ms/step | fastest measured | default / fastest | eager / default |",
             "|---|---|---|---|---|---|---|---|"]
    for (arch, batch, gen, cache), group in groups.items():
        default = [r for r in group if bool(r["graphs"]) == graphs and bool(r.get("fused")) == fused]
        if not default or len(group) < 2:
            continue
        d = default[0]
        best = min(group, key=lambda r: r["ms_per_step"])
        eager = [r for r in group if not r["graphs"] and not r.get("fused")]
        vs_eager = f"{eager[0]['ms_per_step'] / d['ms_per_step']:.2f}" if eager else "-"
        lines.append(f"| {arch} | {batch} | {gen} | {cache} | {d['ms_per_step']:.2f} | {_options(best)} "
                     f"{best['ms_per_step']:.2f} | {d['ms_per_step'] / best['ms_per_step']:.3f} | {vs_eager} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=["llada-8b", "dream-7b"], choices=sorted(ARCHS))
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--gen", nargs="+", type=int, default=[256, 1024])
    ap.add_argument("--cache", nargs="+", default=["none", "prefix", "dual", "delayed", "window"],
                    help="cache policies: NAME or NAME:key=value,... (e.g. dual:refresh_from=last_block)")
    ap.add_argument("--graphs", choices=["off", "on", "both"], default="both")
    ap.add_argument("--fused", choices=["off", "on", "both"], default="off",
                    help="elementwise kernels fused with torch.compile (dlm.load(..., fused_kernels=True))")
    ap.add_argument("--tokens-per-step", type=int, default=4)
    ap.add_argument("--warm-shapes", type=int, nargs="?", const=1, default=0, metavar="RUNS",
                    help="run each option set RUNS times (1 if not given) untimed right before timing it, in the "
                    "same engine (the steady state: shapes and CUDA graphs of those runs carry over)")
    ap.add_argument("--timed-blocks", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the real thing) or cpu (a smoke run of llada-tiny)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the scale benchmark needs a CUDA device (or --device cpu --arch llada-tiny for a smoke run)")
    both = {"off": [False], "on": [True], "both": [True, False]}  # the default (fast) options are measured first
    modes = both[args.graphs]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = run(args.arch, args.batch, args.gen, args.cache, modes, args.out, args.tokens_per_step, args.timed_blocks,
               args.device, both[args.fused], args.warm_shapes)
    print(markdown(rows))
    if len(modes) > 1 or args.fused == "both":
        print(defaults_table(rows))


if __name__ == "__main__":
    main()
