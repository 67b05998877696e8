"""The report of a benchmark run: ``results.json``, ``results.md`` and the PNG plots, in one folder.

``results.json`` holds ``environment`` (date, hardware, versions, the exact command), ``model``, ``suite``,
``rows`` (one per configuration and shape; see :mod:`dlm.bench.runner` for the metrics), ``trajectories`` and
``files``. ``results.md`` holds one table per shape group with every metric and its ratio against the group's
reference row, a per-family accuracy table, the stress sections when the suite asks for the breakdown
(:mod:`dlm.bench.stress_report`), the skipped and failed configurations with the reason, and a legend.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import CODE, FAMILIES, STRESS_FAMILIES
from .plots import PLOT_FILES, write_plots
from .stress_report import stress_markdown

FILES = {"json": "results.json", "markdown": "results.md", **PLOT_FILES}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``dlm bench ...`` / ``python -m dlm.bench ...`` (from ``sys.argv``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0]
    p = Path(head)
    if p.name == "__main__.py":
        mod = "dlm.bench" if p.parent.name == "bench" else p.parent.name
        prefix = ["python", "-m", mod]
    else:
        prefix = [p.name]
    return shlex.join(prefix + argv[1:])


def _git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        # GIT_OPTIONAL_LOCKS=0: a read-only look, without refreshing the index
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=30, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head or None, "dirty": dirty}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str | None = None, command: str | None = None) -> dict[str, Any]:
    """Date, hardware, software versions and the command of this run."""
    import dlm

    env: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "dlm": getattr(dlm, "__version__", None),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device) if device is not None else None,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    env["git"] = _git_commit()
    return env


def model_info(lm) -> dict[str, Any]:
    a = lm.arch
    return {"path": str(lm.path) if lm.path is not None else None, "model_type": lm.model_type, "repr": repr(lm),
            "parameters": a.num_parameters, "layers": a.num_layers, "hidden": a.hidden_size,
            "vocab": a.vocab_size, "dtype": str(lm.dtype).replace("torch.", ""), "device": str(lm.device),
            "max_length": lm.max_length}


# ------------------------------------------------------------------------------------------------ Markdown
def _md(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _cell(row: dict[str, Any], key: str, spec: str, ratio: bool = True) -> str:
    v = row["metrics"].get(key)
    s = _num(v, spec)
    if ratio and v is not None:
        r = row["ratios"].get(key)
        s += f" ({_num(r, '.2f')}x)" if r is not None else " (-)"
    return s


MAIN_COLUMNS = [
    # header, metric key, format, with ratio
    ("accuracy", "accuracy", ".3f", True),
    ("NFE / token", "nfe_per_token", ".3f", True),
    ("tokens/s", "tokens_per_s", ".1f", True),
    ("wall s", "wall_s", ".2f", True),
    ("ms / step", "ms_per_step", ".2f", True),
    ("peak MB", "peak_mem_mb", ".0f", True),
    ("token agreement", "token_agreement", ".3f", False),
    ("exact match vs ref", "exact_match_vs_reference", ".3f", False),
]

LEGEND = """\
Columns (each value is followed by its ratio to the reference row of the same table, measured in the same run;
the reference row's ratios are 1.00x):
- accuracy: exact match of the answer (cut at the first stop token, whitespace stripped) with the task's answer,
  over the synthetic test examples.
- NFE / token: forward passes per generated token; a row's generated tokens are its answer positions up to and
  including the first stop token (EOS or end of turn), or all of them when there is none.
- tokens/s: generated tokens of all examples / wall time. wall s: median over the repeats of one pass over all
  examples (after warm-up; CUDA synchronised). ms / step: wall time / forward passes of the batches.
- peak MB: CUDA max allocated during the timed passes, or the CPU process's peak resident set.
- token agreement: answer positions holding the reference's token (up to the longer answer), over all examples;
  exact match vs ref: answers identical to the reference's (tokens up to and including the first stop token).
- code (per-family table): agreement with the one-token-per-step decode (the reference) on held-out standard-library
  functions; "parses" is the share of completions whose body parses, for information.
"""


def markdown(results: dict[str, Any]) -> str:
    env, rows = results["environment"], results["rows"]
    model = results.get("model", {})
    lines = [f"# dlm bench ({env['date']})", ""]
    dev = env.get("gpu") if str(env.get("device", "")).startswith("cuda") else env.get("cpu")
    lines += [f"- command: `{env['command']}`",
              f"- model: {model.get('repr', '?')} from `{model.get('path')}`",
              f"- device: {env.get('device')} ({dev}); torch {env['torch']}, dlm {env['dlm']}, "
              f"python {env['python']}, {env['torch_threads']} torch threads",
              f"- examples: {_examples_line(results)}; repeats {results['suite']['repeats']} (median), "
              f"warm-up {results['suite']['warmup']}, seed {results['suite']['seed']}"]
    load = results.get("load_average") or {}
    if load.get("start") and load.get("end"):
        lines.append(f"- load average (1 min) {load['start'][0]} at the start, {load['end'][0]} at the end, on "
                     f"{env.get('cpu_count')} cores")
    lines.append("")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for g in groups:
        grows = [r for r in rows if r["group"] == g]
        sh = grows[0]["shape"]
        ref = next((r for r in grows if r["is_reference"]), None)
        code = f", code gen_length {sh['code_gen_length']}" if sh.get("code_gen_length") else ""
        lines += [f"## gen_length {sh['gen_length']}{code}, block_length {sh['block_length'] or 'default'}, "
                  f"batch size {sh['batch_size']}", "",
                  f"Ratios against `{ref['name'] if ref else '?'}` of this table.", ""]
        lines.append("| configuration | method | " + " | ".join(c[0] for c in MAIN_COLUMNS) + " |")
        lines.append("|---|---|" + "---|" * len(MAIN_COLUMNS))
        for r in grows:
            if r["status"] != "ok":
                continue
            cells = [_cell(r, key, spec, ratio) for _, key, spec, ratio in MAIN_COLUMNS]
            lines.append(f"| {_md(r['name'])} | {_md(r['label'])} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["suite"].get("breakdown"):
        lines += stress_markdown(results)  # holds the per-family accuracies too
    else:
        lines += _family_table(rows, groups)
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["## Skipped and failed configurations", ""]
        seen = set()
        for r in bad:
            key = (r["name"], r["status"], r["note"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- `{r['name']}` ({r['status']}): {r['note']}")
        lines.append("")
    lines += ["## Columns", "", LEGEND]
    return "\n".join(lines)


def _examples_line(results: dict[str, Any]) -> str:
    per = results.get("examples", {}).get("per_family", {})
    return ", ".join(f"{k} {v}" for k, v in per.items()) or "-"


def _family_table(rows: list[dict[str, Any]], groups: list[str]) -> list[str]:
    fams = [f for f in FAMILIES + STRESS_FAMILIES + (CODE,) if any(f in r.get("families", {}) for r in rows)]
    if not fams:
        return []
    head = [f for f in fams if f != CODE]
    has_code = CODE in fams
    lines = ["## Accuracy per task family", ""]
    cols = head + (["code exact vs ref", "code token agreement", "code parses"] if has_code else [])
    multi = len(groups) > 1
    lines.append("| configuration | " + ("group | " if multi else "") + " | ".join(cols) + " |")
    lines.append("|---|" + ("---|" if multi else "") + "---|" * len(cols))
    for r in rows:
        if r["status"] != "ok":
            continue
        f = r["families"]
        cells = [_num(f[x]["accuracy"], ".3f") if x in f else "-" for x in head]
        if has_code:
            c = f.get(CODE, {})
            cells += [_num(c.get("exact_match_vs_reference"), ".3f"), _num(c.get("token_agreement"), ".3f"),
                      _num(c.get("parse_rate"), ".3f")]
        lines.append(f"| {_md(r['name'])} | " + (f"{r['group']} | " if multi else "") + " | ".join(cells) + " |")
    lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------ writing
def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_report(results: dict[str, Any], out: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (``plots``) the PNGs into ``out``; return the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        written.update(write_plots(results, out))
    results["files"] = {k: p.name for k, p in written.items()}
    results["files"].update(json=FILES["json"], markdown=FILES["markdown"])
    md = out / FILES["markdown"]
    md.write_text(markdown(results))
    js = out / FILES["json"]
    js.write_text(json.dumps(_jsonable(results), indent=1))
    written.update(json=js, markdown=md)
    return written
