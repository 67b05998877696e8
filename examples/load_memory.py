"""Measure the peak resident memory of loading a checkpoint, against the size of its weights.

    python examples/load_memory.py PATH [--dtype float32]           # an existing checkpoint
    python examples/load_memory.py --random-params 100e6 --tmp DIR   # write a random LLaDA-format one first

Code paths are warmed up with a tiny checkpoint first, so the figure counts data, not library code. After
loading, every weight is read once (safetensors maps files lazily), then the peak RSS growth is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import dlm
from dlm.testing import write_tiny_checkpoint


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss() -> int:
    return _status("VmRSS")


def peak() -> int:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    return _status("VmHWM")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(path: str | Path, dtype: str = "float32") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dlm.load(write_tiny_checkpoint(Path(tmp) / "warm", "llada"), device="cpu", dtype=dtype, tokenizer=False)
    reset_peak()
    base = rss()
    lm = dlm.load(path, device="cpu", dtype=dtype, tokenizer=False)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.sum()
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    grow = max(peak(), rss()) - base
    return {"weights_bytes": weights, "peak_growth_bytes": grow, "ratio": grow / weights,
            "params": sum(p.numel() for p in lm.model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--random-params", type=float, default=None, help="write a random checkpoint of ~this size")
    ap.add_argument("--tmp", default=None, help="where to write it")
    ap.add_argument("--stored-dtype", default="float32", help="dtype of the written checkpoint")
    args = ap.parse_args()
    path = args.path
    if args.random_params:
        hidden = 768
        layers = max(1, round((args.random_params - 2 * 264 * hidden) / (12 * hidden * hidden)))
        path = write_tiny_checkpoint(Path(args.tmp or tempfile.mkdtemp()) / "random", "llada", layers=layers,
                                     hidden=hidden, heads=12, mlp=4 * hidden // 3 * 2, max_shard_bytes=2**31,
                                     dtype=getattr(torch, args.stored_dtype))
        # measure in a fresh process: this one still holds the memory it used to write the checkpoint
        subprocess.run([sys.executable, __file__, str(path), "--dtype", args.dtype], check=True)
        return
    print(json.dumps(measure(path, args.dtype)))


if __name__ == "__main__":
    main()
