"""The bf16 matmul rate of a GPU over time under products back to back, with its clock and power.

What the compute ceilings of ``benchmarks/engine_gpu.py`` divide by: a short measurement (``matmul_rate``: 13
products) runs at the GPU's boost clock, but a GPU at its power limit lowers its clock within a fraction of a
second of sustained products, so a run of several seconds cannot keep that rate. This prints the short figure,
the rate in windows of 40 products (8192 x 8192 x 8192, bf16) for ``--seconds``, the mean over the first 0.5, 1,
2 and 4 s (their FLOPs over their time), then ``sustained_matmul_rate`` over ``--seconds`` more (a GPU already
hot, as a decode's run is after its warm-up), and (where ``nvidia-smi`` runs) the SM clock, power draw and
temperature every 100 ms during it all.

    python benchmarks/matmul_clock.py --out results/matmul_clock.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from dlm.bench.scale import matmul_rate, square_operands, sustained_matmul_rate


def windows(seconds: float, n: int = 8192, per_window: int = 40) -> list[tuple[float, float]]:
    """(seconds since the start, TFLOP/s) of each window of ``per_window`` products, for ``seconds``."""
    a, b = square_operands("cuda", n)
    a @ b  # the kernel's first call is not timed
    torch.cuda.synchronize()
    out, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per_window):
            a @ b
        end.record()
        end.synchronize()
        out.append((round(time.perf_counter() - t0, 3), per_window * 2 * n**3 / (start.elapsed_time(end) / 1e3) / 1e12))
    return out


def smi_start(path: Path) -> subprocess.Popen | None:
    """``nvidia-smi`` logging clock, power and temperature every 100 ms into ``path`` (None without it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=timestamp,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu"
    with path.open("w") as log:  # the child keeps its own handle
        return subprocess.Popen(["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "100"],
                                stdout=log, stderr=subprocess.DEVNULL)


def smi_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 6:
            rows.append({"time": parts[0], "sm_mhz": float(parts[1]), "max_sm_mhz": float(parts[2]),
                         "power_w": float(parts[3]), "power_limit_w": float(parts[4]), "temp_c": float(parts[5])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("results/matmul_clock.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("matmul_clock.py needs a CUDA GPU")
    handle, name = tempfile.mkstemp(suffix=".csv")
    os.close(handle)
    log = Path(name)
    smi = smi_start(log)
    time.sleep(0.5)
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    out["short_tflops"] = matmul_rate("cuda", 8192, 10) / 1e12
    out["windows"] = windows(args.seconds)
    for span in (0.5, 1, 2, 4):  # windows of equal FLOPs: their FLOPs over their time is the harmonic mean
        sel = [r for t, r in out["windows"] if t <= span]
        out[f"mean_first_{span}s_tflops"] = len(sel) / sum(1 / r for r in sel)
    out["sustained_tflops"] = sustained_matmul_rate("cuda", args.seconds) / 1e12
    time.sleep(0.5)
    if smi is not None:
        smi.terminate()
        smi.wait()
        out["nvidia_smi"] = smi_rows(log)
    log.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("windows", "nvidia_smi")}, indent=1))


if __name__ == "__main__":
    main()
