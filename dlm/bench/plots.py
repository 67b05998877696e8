"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

* ``accuracy_vs_nfe.png``: accuracy and exact match with the reference against NFE per generated token, one
  point per configuration (marker per shape group; the reference drawn as a star).
* ``tokens_per_s.png``: tokens/s per configuration, annotated with the ratio to the reference of its group.
* ``stress.png`` (suites with ``breakdown``): accuracy and NFE per token of every configuration by answer-length
  and dependency bucket: where each rule starts to fail.
* ``trajectory.png``: for one example, which answer position was committed at which step, under the reference
  and one fast configuration (``GenerationOutput.trace.commit_step``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKERS = "osD^vP*Xh<>"
PLOT_FILES = {"accuracy_vs_nfe": "accuracy_vs_nfe.png", "tokens_per_s": "tokens_per_s.png",
              "trajectory": "trajectory.png", "stress": "stress.png"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["status"] == "ok"]


def _groups(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["group"] for r in rows))


def accuracy_vs_nfe(results: dict[str, Any], path: Path) -> Path:
    """One row of panels per shape group: accuracy, and exact match with the reference, against NFE per token.
    Up to 12 configurations are named next to their points; more are numbered, with the key beside the panel."""
    plt = _plt()
    rows = _ok(results)
    groups = _groups(rows) or ["-"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    numbered = len(names) > 12
    height = max(4.8 * len(groups), 0.1 * len(names) + 1.5 if numbered else 0.0)
    fig, axes = plt.subplots(len(groups), 2, figsize=(15 if numbered else 13, height), squeeze=False)
    panels = [("accuracy", "accuracy (exact match with the task's answer)"),
              ("exact_match_vs_reference", "exact match with the reference's answer")]
    cmap = plt.get_cmap("tab20")
    xs = [r["metrics"]["nfe_per_token"] for r in rows if r["metrics"].get("nfe_per_token")]
    log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 8
    for gi, group in enumerate(groups):
        grows = [r for r in rows if r["group"] == group]
        for ax, (key, title) in zip(axes[gi], panels):
            points: list[tuple[float, float, str]] = []
            for r in grows:
                x, y = r["metrics"].get("nfe_per_token"), r["metrics"].get(key)
                if x is None or y is None:
                    continue
                i = names.index(r["name"])
                ax.scatter([x], [y], marker="*" if r["is_reference"] else MARKERS[i // 20 % len(MARKERS)],
                           s=180 if r["is_reference"] else 60, color=cmap(i % 20), edgecolors="black",
                           linewidths=0.5, zorder=3)
                points.append((x, y, str(i + 1) if numbered else r["name"]))
            for x, y, text in _cluster_labels(points, log_x):
                ax.annotate(text, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel("NFE per generated token (lower is faster)")
            ax.set_ylabel(key.replace("_", " "))
            ax.set_title(f"{title}\n{group}", fontsize=9)
            ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
    if numbered:
        key_text = "\n".join(f"{i + 1}: {n}" for i, n in enumerate(names))
        fig.text(0.80, 0.98, key_text, fontsize=6, va="top", family="monospace")
    model = results.get("model", {})
    fig.suptitle(f"accuracy vs NFE per token ({model.get('model_type', '')} {model.get('parameters', 0) / 1e6:.1f}M, "
                 f"{results['environment'].get('device')}); star: the reference")
    fig.tight_layout(rect=(0, 0, 0.79 if numbered else 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cluster_labels(points: list[tuple[float, float, str]], log_x: bool, near_x: float = 0.08,
                    near_y: float = 0.04) -> list[tuple[float, float, str]]:
    """One label per cluster of points closer than ``near_x`` (fraction of the x span) and ``near_y`` (y runs
    0..1), so that names of neighbouring points are written once, joined by commas, instead of over each other."""
    import math

    if not points:
        return []
    fx = (lambda v: math.log(v)) if log_x else (lambda v: v)
    xs = [fx(x) for x, _, _ in points]
    span = (max(xs) - min(xs)) or 1.0
    clusters: list[list[Any]] = []  # [x, y, nx, [names]]
    for (x, y, name), nx in zip(points, xs):
        for c in clusters:
            if abs(c[2] - nx) / span < near_x and abs(c[1] - y) < near_y:
                c[3].append(name)
                break
        else:
            clusters.append([x, y, nx, [name]])
    return [(c[0], c[1], ", ".join(c[3])) for c in clusters]


def tokens_per_s(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows = [r for r in _ok(results) if r["metrics"].get("tokens_per_s") is not None]
    groups = _groups(rows)
    labels = [r["name"] if len(groups) == 1 else f"{r['name']} [{r['group']}]" for r in rows]
    vals = [r["metrics"]["tokens_per_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.6))
    colors = ["tab:gray" if r["is_reference"] else "tab:blue" for r in rows]
    y = list(range(len(rows)))[::-1]
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    top = max(vals) if vals else 1.0
    for yi, v, r in zip(y, vals, rows):
        ratio = r["ratios"].get("tokens_per_s")
        ax.text(v + 0.01 * top, yi, f"{v:.1f}" + (f"  ({ratio:.2f}x)" if ratio is not None else ""), va="center",
                fontsize=7)
    ax.set_xlim(0, top * 1.25 if top > 0 else 1)
    ax.set_xlabel("generated tokens per second (ratio to the reference of the same group)")
    ax.set_title(f"tokens/s per configuration ({results['environment'].get('device')}, "
                 f"batch size {', '.join(str(s) for s in results['suite']['batch_size'])})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def printable(s: str) -> str:
    """``s`` with newlines, tabs and other unprintable characters escaped (fonts have no glyph for them)."""
    out = []
    for ch in s:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() or ch == "\ufffd":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else "?")
        else:
            out.append(ch)
    return "".join(out)


def _short(s: str, n: int = 6) -> str:
    s = printable(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def trajectory(results: dict[str, Any], path: Path) -> Path | None:
    """Answer positions (x) by steps (y): a cell is coloured from the step its position was committed at on
    (colour = that step); white is still masked; grey columns were filled with EOS when the answer stopped."""
    trajs = results.get("trajectories") or []
    if not trajs:
        return None
    plt = _plt()
    import numpy as np

    width = max(min(len(t["commit_step"]), max(t["n_gen"] for t in trajs) + 2) for t in trajs)
    width = min(width, max(len(t["commit_step"]) for t in trajs))
    fig, axes = plt.subplots(1, len(trajs), figsize=(max(6.0, 0.32 * width) * len(trajs) / 1.3 + 1, 6.2),
                             squeeze=False)
    vmax = max(max(t["commit_step"][:width] + [0]) for t in trajs)
    rows = max(vmax + 1, 1)  # every panel spans the longest trajectory, so fewer steps look shorter
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = None
    for ax, t in zip(axes[0], trajs):
        cs = np.array(t["commit_step"][:width], dtype=float)
        grid = np.full((rows, len(cs)), np.nan)
        for p, c in enumerate(cs):
            if c >= 0:
                grid[int(c):, p] = c
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=max(vmax, 1), origin="upper",
                       interpolation="nearest")
        for p, c in enumerate(cs):
            if c < 0:
                ax.axvspan(p - 0.5, p + 0.5, color="0.85", zorder=0)
        ax.set_xticks(range(len(cs)))
        ax.set_xticklabels([_short(s) for s in t["token_strs"][:width]], rotation=90, fontsize=7)
        ax.set_xlabel("answer position (final token)")
        ax.set_ylabel("step (forward pass)")
        ax.axvline(t["n_gen"] - 0.5, color="red", lw=0.8, ls="--")
        ax.set_title(f"{t['name']}: {t['steps']} steps\n{t['label']}\nanswer: {_short(t['text'], 40)}", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label="commit step", shrink=0.8)
    t0 = trajs[0]
    fig.suptitle(f"decoding trajectory of one {t0['family']} example: {_short(t0['prompt'], 50)}"
                 + (f" (answer: {printable(t0['answer'])})" if t0.get("answer") else "")
                 + "; red line: end of the answer (first stop token)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def stress_buckets(results: dict[str, Any], path: Path) -> Path | None:
    """Accuracy (top) and NFE per token (bottom) of every configuration per answer-length bucket (left) and
    per dependency bucket (right), over the families the model can do, first shape group: where each rule starts
    to fail. The reference is the thick black line."""
    from .breakdown import bucket_order, capable_families, pooled

    group = results["rows"][0]["group"]
    rows = [r for r in _ok(results) if r["group"] == group and "breakdown" in r]
    if not rows or not rows[0]["is_reference"]:
        return None
    families, _ = capable_families(rows[0])
    if not families:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(15, 9), sharex="col")
    cmap = plt.get_cmap("tab20")
    for col, axis in enumerate(("length", "dependency")):
        buckets = [b for b in bucket_order(axis) if b in pooled(rows[0], axis, families)]
        for i, r in enumerate(rows):
            cells = pooled(r, axis, families)
            xs = [j for j, b in enumerate(buckets) if b in cells]
            style = dict(color="black", lw=3, zorder=5) if r["is_reference"] else dict(
                color=cmap(i % 20), lw=1.3, ls=("-", "--", ":")[i // 20 % 3], marker=MARKERS[i % len(MARKERS)], ms=4)
            for row_ax, key in ((0, "accuracy"), (1, "nfe_per_token")):
                ys = [cells[buckets[j]][key] for j in xs]
                axes[row_ax][col].plot(xs, ys, label=r["name"] if col == 0 and row_ax == 0 else None, **style)
        for row_ax, label in ((0, "accuracy"), (1, "NFE per generated token (log)")):
            ax = axes[row_ax][col]
            ax.set_xticks(range(len(buckets)))
            ax.set_xticklabels(buckets)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("answer length (units)" if axis == "length" else
                                "dependency (answer units that change together)")
    fig.legend(loc="center right", fontsize=7)
    fig.suptitle(f"where each rule starts to fail ({group}; families the model can do: {', '.join(families)})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.74, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Every plot into ``out``; returns {kind: path} of those written."""
    written = {"accuracy_vs_nfe": accuracy_vs_nfe(results, out / PLOT_FILES["accuracy_vs_nfe"]),
               "tokens_per_s": tokens_per_s(results, out / PLOT_FILES["tokens_per_s"])}
    if results["suite"].get("breakdown"):
        s = stress_buckets(results, out / PLOT_FILES["stress"])
        if s is not None:
            written["stress"] = s
    t = trajectory(results, out / PLOT_FILES["trajectory"])
    if t is not None:
        written["trajectory"] = t
    return written
