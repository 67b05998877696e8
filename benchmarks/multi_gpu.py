"""Multi-GPU figures of issue 18 on a 2-GPU machine, end to end in one command (about 5 minutes on 2 H100s):

    python benchmarks/multi_gpu.py --out results/multi_gpu.json            # 2 GPUs
    python benchmarks/multi_gpu.py --tiny --out /tmp/multi_gpu_tiny.json   # CPU smoke run (gloo, tiny models)

(a) data parallel: LLaDA-8B geometry, random bf16 weights made on each GPU (never on the CPU), a fixed schedule of
    4 tokens per step (``low_confidence``), gen 256, dual cache, batches of 32: the same prompts on one replica,
    then split over two; throughput ratio, and whether the answers are identical.
(b) tensor parallel: step latency at batch 1 of the same geometry under ``torchrun --nproc-per-node 2`` (this
    script re-launches itself), in the ``local`` and ``dtensor`` modes, eager and with CUDA graphs, against one GPU
    in the same job; plus the largest logit difference between TP2 and one GPU on the same weights.
(c) device map: a random LLaDA-8B checkpoint written to disk, loaded on one GPU and then with ``device_map="auto"``
    and ``max_memory`` of 10 GiB per GPU (so the map must split it): identical answers? Then a random model of the
    same width with enough layers to be 1.25x one GPU's memory, placed over both GPUs and generating.
Prints a table and writes everything to --out (JSON). Each part records its error instead of stopping the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dlm  # noqa: E402
from dlm.api import from_model  # noqa: E402
from dlm.bench.scale import ARCHS, STOP_IDS, random_lm, time_config  # noqa: E402
from dlm.models.base import MODELS, SpecialIds  # noqa: E402
from dlm.models.loading import _set_tensor, build_model, save_checkpoint  # noqa: E402
from dlm.parallel import DevicePlacement, ReplicaPool, TensorParallel  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setup:
    """Sizes of a run: the real one on 2 GPUs, or the tiny CPU smoke run."""

    arch: str
    devices: tuple[str, str]
    dtype: torch.dtype
    dp_prompts: int
    dp_batch: int
    gen: int
    prompt_len: int
    map_budget: str

    @property
    def cuda(self) -> bool:
        return self.devices[0].startswith("cuda")


REAL = Setup("llada-8b", ("cuda:0", "cuda:1"), torch.bfloat16, 64, 32, 256, 64, "10GiB")
TINY = Setup("llada-tiny", ("cpu", "cpu"), torch.float32, 8, 4, 64, 16, "1GiB")


def config(setup: Setup, gen: int | None = None, cache: str = "dual") -> dlm.GenerationConfig:
    gen = gen or setup.gen
    return dlm.GenerationConfig(gen_length=gen, block_length=32, steps=gen // 4, scheduler="low_confidence",
                                cache=cache, stop_at_eos=False, seed=0)


def prompts(setup: Setup, n: int, seed: int = 0) -> list[list[int]]:
    ids = torch.randint(0, 100000, (n, setup.prompt_len), generator=torch.Generator().manual_seed(seed))
    ids[ids == ARCHS[setup.arch]["mask_token_id"]] = 1
    return ids.tolist()


def special_ids(arch: str) -> SpecialIds:
    cfg = ARCHS[arch]
    return SpecialIds(mask_id=cfg["mask_token_id"], eos_id=cfg["eos_token_id"], pad_id=cfg["pad_token_id"],
                      stop_ids=STOP_IDS[cfg["model_type"]])


def sync(setup: Setup) -> None:
    if setup.cuda:
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


# ------------------------------------------------------------------------------------------- (a) data parallel
def random_replica(arch: str, dtype: torch.dtype, device: torch.device):
    """A replica's loader: random weights made on its own device (same seed everywhere: the same model)."""
    return random_lm(arch, device=str(device), dtype=dtype)


def bench_data_parallel(setup: Setup) -> dict:
    loader = functools.partial(random_replica, setup.arch, setup.dtype)
    work, cfg = prompts(setup, setup.dp_prompts), config(setup)
    with ReplicaPool(loader, list(setup.devices), start_timeout=900) as pool:
        warm = config(setup, gen=64)
        pool.generate(work[: 2 * setup.dp_batch], warm, batch_size=setup.dp_batch, timeout=300)
        one = pool.generate(work, cfg, batch_size=setup.dp_batch, replicas=[0], timeout=300)
        two = pool.generate(work, cfg, batch_size=setup.dp_batch, timeout=300)
    tokens = len(work) * cfg.gen_length
    differ = int((one.sequences != two.sequences).any(1).sum())
    return {"prompts": len(work), "batch": setup.dp_batch, "gen": cfg.gen_length, "cache": cfg.cache,
            "one_s": one.timings["total"], "two_s": two.timings["total"],
            "one_tok_s": tokens / one.timings["total"], "two_tok_s": tokens / two.timings["total"],
            "speedup": one.timings["total"] / two.timings["total"], "rows_differ": differ, "identical": differ == 0}


# ------------------------------------------------------------------------------------------- (b) tensor parallel
def materialize(model, place, device, dtype: torch.dtype, seed: int = 0) -> None:
    """Random weights exactly as dlm.bench.scale.random_lm makes them (one generator on ``device``, parameters in
    order, so the same values), each full tensor handed to ``place`` (a shard, or its own device)."""
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()):
            full = torch.empty(p.shape, dtype=dtype, device=device)
            full.fill_(1.0) if name.endswith("norm.weight") else full.normal_(0.0, 0.02, generator=g)
            _set_tensor(model, name, place(name, full, dtype))
            del full


def random_tp_lm(arch: str, tp: TensorParallel, dtype: torch.dtype):
    cfg = ARCHS[arch]
    arch_cls = MODELS.get(cfg["model_type"])
    model = build_model(arch_cls.parse_config(cfg), device="meta")
    tp.parallelize(model)
    materialize(model, tp.place(model), tp.device, dtype)
    tp.finish(model)
    lm = from_model(model.eval(), arch_cls, special_ids(arch))
    lm.max_length = arch_cls.max_length(cfg)
    return lm


def step_ms(lm, graphs: bool, cache: str) -> float:
    lm.cuda_graphs = graphs
    return time_config(lm, cache=cache, batch=1, gen_length=256, tokens_per_step=4).ms_per_step


def probe_logits(lm) -> torch.Tensor:
    ids = torch.randint(0, 100000, (1, 96), generator=torch.Generator().manual_seed(1)).to(lm.device)
    with torch.no_grad():
        return lm.model(ids).float().cpu()


def progress(message: str) -> None:
    """A time-stamped line on stdout at once (a killed job keeps the lines that say where it was)."""
    print(f"[{time.strftime('%H:%M:%S')} rank {os.environ.get('RANK', '-')}] {message}", flush=True)


def time_cases(lm, label: dict, cases, rows: list, errors: dict) -> None:
    """ms/step of ``lm`` for each (cache, graphs) case; errors recorded (e.g. a collective that cannot be
    captured in a CUDA graph)."""
    for cache, graphs in cases:
        progress(f"timing {label} cache={cache} graphs={graphs}")
        try:
            rows.append({**label, "cache": cache, "graphs": graphs, "ms_per_step": step_ms(lm, graphs, cache)})
        except Exception as exc:  # noqa: BLE001
            errors[f"tp{label['tp']}/{label['mode']}/{cache}/graphs={graphs}"] = f"{type(exc).__name__}: {exc}"[:1000]


def tp_worker(setup: Setup, caches, out: Path) -> None:
    """One rank of ``torchrun --nproc-per-node 2``. One GPU eager first (rank 0 while rank 1 waits), then TP2 in
    both modes, the CUDA-graph cases last (TP2 ``local``, then one GPU: a capture that fails on one rank can leave
    the other waiting for ever); each case prints a line as it starts and rank 0 rewrites ``out`` after each, so
    a killed run keeps what it measured and shows where it stopped."""
    from datetime import timedelta

    import torch.distributed as dist

    if setup.cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    progress("init process group")
    dist.init_process_group("nccl" if setup.cuda else "gloo", timeout=timedelta(seconds=300))
    tp = TensorParallel.init(2, None if setup.cuda else "cpu")
    progress("process group ready")
    res: dict = {"rows": [], "errors": {}}
    save = (lambda: out.write_text(json.dumps(res))) if tp.rank == 0 else (lambda: None)
    eager = [(c, False) for c in caches]
    graphed = [(c, True) for c in caches] if setup.cuda else []
    ref = None
    if tp.rank == 0:
        one = random_lm(setup.arch, device=str(tp.device), dtype=setup.dtype)
        ref = probe_logits(one)
        time_cases(one, {"tp": 1, "mode": "-"}, eager, res["rows"], res["errors"])
        del one
        save()
    dist.barrier()
    for mode in ("dtensor", "local"):
        if setup.cuda:
            torch.cuda.empty_cache()
        progress(f"building the TP2 {mode} model")
        lm = random_tp_lm(setup.arch, dataclasses.replace(tp, mode=mode), setup.dtype)
        logits = probe_logits(lm)
        if ref is not None:
            diff = (logits - ref).abs()
            res[f"max_logit_diff_tp2_{mode}_vs_1"] = float(diff[torch.isfinite(diff)].max())
        cases = eager + (graphed if mode == "local" else [])
        for case in cases:
            time_cases(lm, {"tp": 2, "mode": mode}, [case], res["rows"], res["errors"])
            save()
        del lm
    dist.barrier()
    if tp.rank == 0 and graphed:  # one GPU with CUDA graphs last: a capture that hangs keeps every TP2 row
        torch.cuda.empty_cache()
        one = random_lm(setup.arch, device=str(tp.device), dtype=setup.dtype)
        time_cases(one, {"tp": 1, "mode": "-"}, graphed, res["rows"], res["errors"])
        save()
    dist.barrier()
    dist.destroy_process_group()


def kill_workers(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (torchrun's workers may sit in their own
    process groups, and a hung one keeps the job alive)."""
    import signal

    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def torchrun(script: str, worker_args: list[str], timeout_s: float) -> dict:
    """Run ``script`` under ``torchrun --nproc-per-node 2`` with ``--worker-out PATH`` added, and return the JSON
    its rank 0 wrote there. The workers' lines go straight to this process's stdout (so a killed run shows where
    it was); after ``timeout_s`` every worker is killed with the partial results kept."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        cmd = [sys.executable, "-u", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               script, "--worker-out", str(out), *worker_args]
        sys.stdout.flush()
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            progress(f"the torchrun job was killed after {timeout_s:.0f} s")
        kill_workers(str(out))
        proc.wait()
        if not out.exists():
            raise RuntimeError(f"torchrun exited with {proc.returncode} before measuring anything (its lines above)")
        res = json.loads(out.read_text())
        if proc.returncode != 0:
            res["error"] = f"torchrun exited with {proc.returncode} (partial results kept; its lines in the log)"
        return res


def bench_tensor_parallel(setup: Setup, caches, tiny: bool, timeout_s: float = 200.0) -> dict:
    """Re-launch this script under torchrun (:func:`torchrun`)."""
    return torchrun(__file__, ["--cache", *caches] + (["--tiny"] if tiny else []), timeout_s)


# ------------------------------------------------------------------------------------------- (c) device map
def generate_timed(lm, setup: Setup, work: list[list[int]], caches) -> dict[str, dict]:
    """Per cache policy: the answers and the seconds, or the error."""
    out = {}
    for cache in caches:
        try:
            sync(setup)
            t0 = time.perf_counter()
            seq = lm.generate(work, config(setup, gen=128, cache=cache)).sequences
            sync(setup)
            out[cache] = {"sequences": seq, "s": time.perf_counter() - t0}
        except Exception as exc:  # noqa: BLE001 - recorded per cache
            out[cache] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def map_summary(model) -> dict[str, float]:
    """GB of weights per device."""
    per: dict[str, float] = {}
    for p in model.parameters():
        per[str(p.device)] = per.get(str(p.device), 0.0) + p.numel() * p.element_size() / 1e9
    return per


def bench_split_checkpoint(setup: Setup, workdir: Path, caches) -> dict:
    """A random checkpoint loaded on one device, then split by ``device_map="auto"`` under ``max_memory``."""
    folder = workdir / "random-checkpoint"
    src = random_lm(setup.arch, device=setup.devices[0], dtype=setup.dtype)
    t0 = time.perf_counter()
    save_checkpoint(src.model, "llada", src.ids, folder, max_shard_bytes=2 * 2**30)
    write_s = time.perf_counter() - t0
    del src
    work = prompts(setup, 4, seed=2)
    one = dlm.load(folder, device=setup.devices[0], dtype=setup.dtype, tokenizer=False)
    ref = generate_timed(one, setup, work, caches)
    del one
    if setup.cuda:
        torch.cuda.empty_cache()
    budget = {0: setup.map_budget, 1: setup.map_budget} if setup.cuda else {"cpu": setup.map_budget}
    t0 = time.perf_counter()
    split = dlm.load(folder, device_map="auto", max_memory=budget, dtype=setup.dtype, tokenizer=False)
    load_s = time.perf_counter() - t0
    got = generate_timed(split, setup, work, caches)
    per_cache = {}
    for cache in caches:
        a, b = ref[cache], got[cache]
        per_cache[cache] = {k: v for k, v in b.items() if k != "sequences"} | {"one_device_s": a.get("s")}
        if "sequences" in a and "sequences" in b:
            per_cache[cache]["identical"] = bool(torch.equal(a["sequences"], b["sequences"]))
    modules = [str(d) for d in split.model.device_map.values()]
    return {"max_memory": setup.map_budget, "weights_gb_per_device": map_summary(split.model),
            "modules_per_device": {d: modules.count(d) for d in sorted(set(modules))}, "write_s": write_s,
            "load_s": load_s, "caches": per_cache}


def bench_larger_than_one(setup: Setup, caches) -> dict:
    """Random weights of the same width with enough layers for 1.25x one GPU's memory, placed over both GPUs."""
    cfg = dict(ARCHS[setup.arch])
    arch_cls = MODELS.get(cfg["model_type"])
    base = arch_cls.parse_config(cfg)
    elt = torch.empty((), dtype=setup.dtype).element_size()
    per_layer = (base.num_parameters - 2 * base.vocab_size * base.hidden_size) / base.num_layers * elt
    if setup.cuda:
        gpu = torch.cuda.get_device_properties(0).total_memory
        budget = {i: int(0.85 * torch.cuda.mem_get_info(i)[0]) for i in range(2)}
    else:  # pretend a device holds the embedding, the head and 6 layers
        gpu = 2 * base.vocab_size * base.hidden_size * elt + 6 * per_layer
        budget = {"cpu": int(4 * gpu)}
    cfg["n_layers"] = int((1.25 * gpu - 2 * base.vocab_size * base.hidden_size * elt) // per_layer) + 1
    model = build_model(arch_cls.parse_config(cfg), device="meta")
    placement = DevicePlacement.create(model, "auto", budget, setup.dtype)
    materialize(model, placement.place, setup.devices[0], setup.dtype)
    placement.attach(model)
    lm = from_model(model.eval(), arch_cls, special_ids(setup.arch))
    lm.max_length = arch_cls.max_length(cfg)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    got = generate_timed(lm, setup, prompts(setup, 2, seed=3), caches)
    per_cache = {c: {k: v for k, v in r.items() if k != "sequences"} for c, r in got.items()}
    return {"layers": cfg["n_layers"], "weights_gb": weights / 1e9, "one_device_gb": gpu / 1e9,
            "weights_gb_per_device": map_summary(model), "caches": per_cache,
            "note": "no single device holds this model, so there is no one-device run to compare"}


# ------------------------------------------------------------------------------------------- driver
def run_part(name: str, fn, results: dict, out: Path | None) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - one part failing must not lose the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    results[name]["part_s"] = time.perf_counter() - t0
    print(f"[{name}] {json.dumps(results[name])[:600]}", flush=True)
    if out is not None:
        out.write_text(json.dumps(results, indent=1))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(results: dict) -> str:
    lines = ["| part | figure | value |", "|---|---|---|"]
    dp, tp = results.get("data_parallel", {}), results.get("tensor_parallel", {})
    if "speedup" in dp:
        lines.append(f"| data parallel | tokens/s 1 GPU -> 2 GPUs | {dp['one_tok_s']:.0f} -> {dp['two_tok_s']:.0f} "
                     f"({dp['speedup']:.2f}x, identical: {dp['identical']}) |")
    for r in tp.get("rows", []):
        lines.append(f"| tensor parallel | TP{r['tp']} {r['mode']} {r['cache']} graphs={r['graphs']} ms/step "
                     f"(batch 1) | {r['ms_per_step']:.2f} |")
    for case, err in tp.get("errors", {}).items():
        lines.append(f"| tensor parallel | {case} | {err[:200]} |")
    for key in sorted(k for k in tp if k.startswith("max_logit_diff")):
        lines.append(f"| tensor parallel | {key} | {tp[key]:.4f} |")
    for key in ("split_checkpoint", "larger_than_one"):
        r = results.get(key, {})
        for cache, c in r.get("caches", {}).items():
            gb = ", ".join(f"{d} {g:.1f}" for d, g in r["weights_gb_per_device"].items())
            what = c.get("error", f"{c['s']:.2f} s, identical to one device: {c.get('identical', 'n/a')}")
            lines.append(f"| device map, {key} ({cache}) | GB per device: {gb} | {what[:200]} |")
    for key, r in results.items():
        if isinstance(r, dict) and "error" in r:
            lines.append(f"| {key} | error | {r['error'][:200]} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny models, 2 CPU processes, gloo")
    ap.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    ap.add_argument("--parts", nargs="+", default=["dp", "tp", "map", "big"], choices=["dp", "tp", "map", "big"])
    ap.add_argument("--cache", nargs="+", default=["dual", "none"],
                    help="cache policies of the tensor-parallel and device-map runs")
    ap.add_argument("--workdir", type=Path, default=None, help="where the random checkpoint of (c) is written")
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup = TINY if args.tiny else REAL
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2) if args.tiny else torch.get_num_threads())
    if args.worker_out is not None:
        return tp_worker(setup, args.cache, args.worker_out)
    if not args.tiny and torch.cuda.device_count() < 2:
        raise SystemExit("needs 2 GPUs (or --tiny for a CPU smoke run)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"env": {"device": torch.cuda.get_device_name(0) if setup.cuda else "cpu",
                             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "setup": str(setup)}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        parts = {"dp": ("data_parallel", lambda: bench_data_parallel(setup)),
                 "tp": ("tensor_parallel", lambda: bench_tensor_parallel(setup, args.cache, args.tiny)),
                 "map": ("split_checkpoint", lambda: bench_split_checkpoint(setup, Path(tmp), args.cache)),
                 "big": ("larger_than_one", lambda: bench_larger_than_one(setup, args.cache))}
        for key in args.parts:
            run_part(*parts[key], results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
