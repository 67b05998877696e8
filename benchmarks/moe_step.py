"""Per-forward latency of an in-block step of an MoE model (random bf16 weights; LLaDA2.0-mini by default,
``--geometry llada-moe-7b`` for LLaDA-MoE-7B-A1B) against the bytes-read floor.

One step = B rows x 32 new tokens (one block) attending to a prefix of P cached keys (a static cache filled with random
keys/values), logits for the 32 positions: the forward a block-diffusion engine makes at every step once the earlier
blocks are cached (for LLaDA-MoE, a bidirectional model, the step of a ``dual``-style cache: the block attends to the
P cached positions and to itself). The model is built on the meta device and materialised on the GPU with random
values (std 0.02, router bias std 0.01), so routing is close to uniform (real checkpoints route less evenly and hit
fewer experts).

Floor: the weight bytes the step must read (embedding rows fed, attention and norms of every layer, the dense layer,
routers, shared experts, the routed experts actually chosen by at least one token in that layer, the final norm and
the LM head) over the device-to-device copy bandwidth measured in the same run (reads + writes, as dlm.bench.scale);
"floor+kv" adds the cached keys/values read. Both expert paths of dlm.models.moe are timed: ``grouped``
(torch._grouped_mm) and ``sorted`` (one matmul per expert).

    python benchmarks/moe_step.py --out results/moe_step.json                 # GPU, LLaDA2.0-mini geometry
    python benchmarks/moe_step.py --geometry llada-moe-7b --out results/moe_step_llada_moe.json
    python benchmarks/moe_step.py --tiny --device cpu --out /tmp/moe_tiny.json  # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dlm.bench.scale import _timed, copy_bandwidth
from dlm.models.base import MODELS
from dlm.models.moe import Router, set_expert_impl
from dlm.models.transformer import DenseAttention, Transformer

MINI = {  # inclusionAI/LLaDA2.0-mini config.json (as dFactory's configs/model_configs/llada2_mini), model_type fixed
    "model_type": "llada2_moe", "num_hidden_layers": 20, "hidden_size": 2048, "intermediate_size": 5120,
    "first_k_dense_replace": 1, "hidden_act": "silu", "max_position_embeddings": 16384, "moe_intermediate_size": 512,
    "norm_topk_prob": True, "num_experts_per_tok": 8, "norm_head": False, "num_attention_heads": 16,
    "num_experts": 256, "num_key_value_heads": 4, "rope_theta": 600000, "rope_scaling": None,
    "tie_word_embeddings": False, "use_bias": False, "rms_norm_eps": 1e-06, "head_dim": 128, "num_shared_experts": 1,
    "use_qkv_bias": False, "vocab_size": 157184, "routed_scaling_factor": 2.5, "n_group": 8, "topk_group": 4,
    "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "partial_rotary_factor": 0.5,
    "pad_token_id": 156892,
}
TINY = {**MINI, "num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 16, "n_group": 4,
        "topk_group": 2, "vocab_size": 1024}
LLADA_MOE_7B = {  # LLaDA-MoE-7B-A1B (dlm.models.llada_moe; 7.36B parameters, about 1B active per token)
    "model_type": "llada", "architectures": ["LLaDAMoEModelLM"], "vocab_size": 157184, "hidden_size": 2048,
    "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16, "dense_intermediate_size": 8192,
    "expert_intermediate_size": 1024, "shared_expert_intermediate_size": None, "num_experts": 64,
    "num_experts_per_tok": 8, "moe_layer_freq": [1] * 16, "norm_topk_prob": False, "qk_layernorm": True,
    "partial_rotary_factor": 1, "rms_norm_eps": 1e-05, "rope_theta": 50000, "rope_scaling": None,
    "max_position_embeddings": 8192, "tie_word_embeddings": False, "attention_bias": False, "pad_token_id": 156892,
}
TINY_LLADA_MOE = {**LLADA_MOE_7B, "num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
                  "num_key_value_heads": 4, "expert_intermediate_size": 32, "num_experts": 16,
                  "moe_layer_freq": [0, 1, 1], "dense_intermediate_size": 128, "vocab_size": 1024}
GEOMETRIES = {"llada2-mini": (MINI, TINY), "llada-moe-7b": (LLADA_MOE_7B, TINY_LLADA_MOE)}
BLOCK = 32


class StaticCache:
    """Keys/values of a P-token prefix (random) plus room for the fed block, per layer: (B, Hkv, P + 32, D)."""

    def __init__(self, arch, batch: int, prefix: int, dtype, device):
        shape = (batch, arch.num_kv_heads, prefix + BLOCK, arch.head_dim)
        self.k = [torch.randn(shape, dtype=dtype, device=device) for _ in range(arch.num_layers)]
        self.v = [torch.randn(shape, dtype=dtype, device=device) for _ in range(arch.num_layers)]
        self.prefix = prefix

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.k[layer][:, :, self.prefix:] = k
        self.v[layer][:, :, self.prefix:] = v
        return self.k[layer], self.v[layer]

    def key_mask(self):
        return None  # the block sees the whole prefix and itself (block-causal: nothing after the block exists)


def random_model(cfg: dict, dtype, device) -> Transformer:
    """The model of the geometry (its format as ``dlm.load`` would pick it), built on the meta device, then random
    values written on ``device``."""
    from dlm.models.loading import format_name

    arch_cls = MODELS.get(format_name(cfg))
    arch = arch_cls.parse_config(cfg)
    with torch.device("meta"):
        model = arch_cls.model_class(arch)
    model = model.to(dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.01 if name.endswith("expert_bias") else 0.02, generator=g)
    return model.eval()


def experts_hit(model: Transformer, step) -> list[int]:
    """Number of distinct routed experts chosen in each MoE layer during one call of ``step``."""
    hits: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: hits.append(int(out[1].unique().numel())))
             for m in model.modules() if isinstance(m, Router)]
    step()
    for h in hooks:
        h.remove()
    return hits


def weight_bytes(model: Transformer, hits: list[int], batch: int) -> int:
    """Bytes of weights one step reads (see the module docstring)."""
    a = model.cfg
    size = next(model.parameters()).element_size()
    total = (batch * BLOCK + 1) * a.hidden_size * size  # fed embedding rows + the final norm
    per_expert = 3 * a.hidden_size * a.expert_intermediate_size * size
    moe_index = 0
    for name, p in model.named_parameters():
        if name.startswith("embed.") or ".moe.experts." in name:
            continue
        total += p.numel() * p.element_size()
    for layer in model.layers:
        if layer.index in a.moe_layers:
            total += hits[moe_index] * per_expert
            moe_index += 1
    return total


def kv_bytes(arch, batch: int, prefix: int, size: int) -> int:
    return 2 * arch.num_layers * batch * arch.num_kv_heads * (prefix + BLOCK) * arch.head_dim * size


def measure(model, batch: int, prefix: int, impl: str, repeats: int, device, bandwidth: float) -> dict:
    a = model.cfg
    dtype = next(model.parameters()).dtype
    cache = StaticCache(a, batch, prefix, dtype, device)
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, min(a.vocab_size, 100000), (batch, BLOCK), generator=g).to(device)
    pos = (prefix + torch.arange(BLOCK, device=device)).expand(batch, -1)
    set_expert_impl(model, impl)

    def step():
        with torch.inference_mode():
            return model(ids, pos, attention=DenseAttention(cache, None))

    hits = experts_hit(model, step)
    seconds = _timed(step, device, repeats)
    w = weight_bytes(model, hits, batch)
    kv = kv_bytes(a, batch, prefix, cache.k[0].element_size())
    ms = seconds * 1e3
    return {"impl": impl, "batch": batch, "prefix": prefix, "ms_per_step": ms,
            "floor_ms": w / bandwidth * 1e3, "floor_kv_ms": (w + kv) / bandwidth * 1e3,
            "x_floor": ms / (w / bandwidth * 1e3), "weights_read_GB": w / 1e9, "kv_read_GB": kv / 1e9,
            "experts_hit_mean": sum(hits) / len(hits), "experts": a.num_experts,
            "tokens_per_s": batch * BLOCK / seconds}


def paths_agree(model, batch: int, device) -> float:
    """Relative difference of the step's logits between the grouped and the sorted expert paths."""
    a = model.cfg
    cache = StaticCache(a, batch, 64, next(model.parameters()).dtype, device)
    ids = torch.randint(0, min(a.vocab_size, 100000), (batch, BLOCK), generator=torch.Generator().manual_seed(7))
    pos = (64 + torch.arange(BLOCK, device=device)).expand(batch, -1)
    out = {}
    for impl in ("sorted", "grouped"):
        set_expert_impl(model, impl)
        with torch.inference_mode():
            out[impl] = model(ids.to(device), pos, attention=DenseAttention(cache, None)).float()
    return ((out["grouped"] - out["sorted"]).norm() / out["sorted"].norm()).item()


def table(rows: list[dict]) -> str:
    head = "| impl | batch | prefix | ms/step | floor ms (weights) | x floor | floor ms (+kv) | experts hit/layer |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['batch']} | {r['prefix']} | {r['ms_per_step']:.2f} | {r['floor_ms']:.2f} | "
                     f"{r['x_floor']:.2f} | {r['floor_kv_ms']:.2f} | {r['experts_hit_mean']:.0f}/{r['experts']} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--geometry", default="llada2-mini", choices=sorted(GEOMETRIES))
    ap.add_argument("--tiny", action="store_true", help="tiny geometry of the format (CPU smoke run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--prefix", type=int, nargs="+", default=[1024])
    ap.add_argument("--impl", nargs="+", default=["grouped", "sorted"], choices=["grouped", "sorted", "auto"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    bandwidth = copy_bandwidth(args.device, 2**31 if cuda else 2**26, 20 if cuda else 3)
    env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "dtype": str(dtype), "copy_bandwidth_TBps": bandwidth / 1e12, "date": time.strftime("%Y-%m-%d"),
           "geometry": args.geometry + (" (tiny)" if args.tiny else "")}
    model = random_model(GEOMETRIES[args.geometry][1 if args.tiny else 0], dtype, device)
    env["grouped_vs_sorted_rel_diff"] = paths_agree(model, 2, device)  # the two paths compute the same thing
    print(json.dumps(env), flush=True)
    rows = []
    for batch in args.batch:
        for prefix in args.prefix:
            for impl in args.impl:
                rows.append(measure(model, batch, prefix, impl, args.repeats, device, bandwidth))
                print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
