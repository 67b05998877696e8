"""A small, budget-aware training loop shared by the diffusion and the causal model.

AdamW (decoupled weight decay on matrices only), linear warm-up then cosine decay to ``min_lr_ratio * lr``,
gradient clipping, bf16 autocast on CUDA (float32 on the CPU), periodic validation on fixed batches with fixed
noise, periodic export of the model (so a run killed at any point leaves recent weights), a resumable training
state in safetensors + JSON (no pickle), a tqdm progress bar, a JSONL metrics log and a loss-curve PNG.

The schedule runs on *progress*, ``max(step / max_steps, elapsed / budget)``: with a wall-clock budget
(``max_minutes``) the learning rate reaches its floor exactly when the time is up, whatever the speed of the
machine; with only ``max_steps`` the run is deterministic. Compilation (``compile``) counts against the budget.

A step whose gradient is not finite (a rare bf16 overflow) is skipped instead of corrupting the weights; the
number of skipped steps is logged, and ``MAX_BAD_STEPS`` of them in a row end the run with an error.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from .data import Batch, Mixture

MAX_BAD_STEPS = 25


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one model.

    ``max_minutes`` and ``max_steps`` bound the run (at least one is required); the run ends at whichever comes
    first. ``val_every`` and ``log_every`` count steps; ``export_every_minutes`` and ``state_every_minutes`` are
    wall-clock intervals (0 disables them; the end of the run always exports and writes the state).
    """

    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None
    val_every: int = 500
    log_every: int = 50
    export_every_minutes: float = 2.0
    state_every_minutes: float = 0.0
    seed: int = 0
    compile: bool = False
    bf16: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_minutes is None:
            raise ConfigError("give max_steps or max_minutes (or both) to bound the training run")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")


@dataclass
class TrainResult:
    """What a run did: steps, tokens (all row positions fed) and targets (positions with a loss), seconds, the
    train loss of the last logging window (weighted total), the last validation losses, the steps skipped for
    non-finite gradients, and the metrics history."""

    name: str
    steps: int
    tokens: int
    targets: int
    seconds: float
    train_loss: float | None
    val_loss: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str = ""
    curve: str | None = None
    skipped_steps: int = 0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Learning rate: linear warm-up over ``warmup_steps``, then cosine from lr to lr * min_lr_ratio on progress."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    p = min(max(progress, 0.0), 1.0)
    cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return cfg.lr * warm * cosine


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, projections, head) and none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2)}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


class Trainer:
    """Trains ``model`` with ``objective`` on ``mixture``.

    Args:
        name: used for file names (``{name}_metrics.jsonl``, ``{name}_loss.png``, the state folder).
        model: the model, on ``device``.
        objective: an object with ``prepare(model, compile)`` and ``loss(model, batch, generator)``.
        mixture: the training data (one batch per group per step).
        val: ``{name: [Batch, ...]}`` fixed validation batches (on ``device``).
        cfg: the optimisation settings.
        log_dir: where metrics, the curve and the resumable state go.
        export: called as ``export(model, result)`` every ``export_every_minutes`` and at the end.
        device: the training device.
        val_weights: weights of the validation losses in ``val_total`` (default: the mixture's group weights for
            the names that are groups, 1 for others); names left out are reported but not added.
    """

    def __init__(self, name: str, model: torch.nn.Module, objective, mixture: Mixture, val: dict[str, list[Batch]],
                 cfg: TrainConfig, log_dir: str | os.PathLike, export: Callable[[torch.nn.Module, TrainResult], None]
                 | None = None, device: torch.device | str = "cpu", val_weights: dict[str, float] | None = None):
        self.name, self.model, self.objective, self.mixture = name, model, objective, mixture
        self.val, self.cfg = val, cfg
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.export = export
        self.device = torch.device(device)
        self.weights = {g.name: g.weight for g in mixture.groups}
        self.val_weights = dict(val_weights) if val_weights is not None else {g: self.weights.get(g, 1.0) for g in val}
        self.state_dir = self.log_dir / f"{name}_state"
        self.metrics_file = self.log_dir / f"{name}_metrics.jsonl"
        self.curve_file = self.log_dir / f"{name}_loss.png"

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        enabled = self.cfg.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss of each validation set (fixed noise: the generator is reseeded) and their weighted total."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(1234)
        out: dict[str, float] = {}
        for group, batches in self.val.items():
            losses = []
            for b in batches:
                with self._autocast():
                    loss, _ = self.objective.loss(self.model, b, gen)
                losses.append(float(loss))
            out[group] = sum(losses) / max(1, len(losses))
        if any(g in out for g in self.val_weights):
            out["total"] = sum(w * out[g] for g, w in self.val_weights.items() if g in out)
        self.model.train()
        return out

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ state (resume)
    def save_state(self, optimizer: torch.optim.Optimizer, meta: dict[str, Any], generator: torch.Generator) -> None:
        """Model, optimizer moments and loop counters, as safetensors + JSON (written then renamed)."""
        from safetensors.torch import save_file

        tmp = self.state_dir.with_name(self.state_dir.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        names = {id(p): n for n, p in self.model.named_parameters()}
        save_file({n: p.detach().float().cpu().contiguous() for n, p in self.model.named_parameters()},
                  str(tmp / "model.safetensors"))
        moments: dict[str, torch.Tensor] = {}
        steps: dict[str, float] = {}
        for p, st in optimizer.state.items():
            n = names[id(p)]
            for key in ("exp_avg", "exp_avg_sq"):
                moments[f"{n}.{key}"] = st[key].detach().float().cpu().contiguous()
            steps[n] = float(st["step"])
        moments["__generator__"] = generator.get_state().cpu()
        save_file(moments, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer.json").write_text(json.dumps({**meta, "adam_steps": steps}, indent=1))
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        os.replace(tmp, self.state_dir)

    def load_state(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote into the model, ``optimizer`` and ``generator``; return the meta."""
        from safetensors.torch import load_file

        meta = json.loads((self.state_dir / "trainer.json").read_text())
        weights = load_file(str(self.state_dir / "model.safetensors"))
        params = dict(self.model.named_parameters())
        if set(weights) != set(params):
            raise ValueError(f"the training state in {self.state_dir} does not match the model "
                             f"({len(weights)} saved tensors vs {len(params)} parameters)")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(weights[n])
        moments = load_file(str(self.state_dir / "optimizer.safetensors"))
        step_device = self.device if self.device.type == "cuda" else "cpu"  # fused AdamW keeps steps on the GPU
        for n, p in params.items():
            if f"{n}.exp_avg" in moments:
                optimizer.state[p] = {
                    "step": torch.tensor(meta["adam_steps"][n], dtype=torch.float32, device=step_device),
                    "exp_avg": moments[f"{n}.exp_avg"].to(self.device),
                    "exp_avg_sq": moments[f"{n}.exp_avg_sq"].to(self.device),
                }
        generator.set_state(moments["__generator__"].to(torch.uint8))
        return meta

    def _check_compiled(self, gen: torch.Generator) -> None:
        """Compile now (one forward/backward per group shape); fall back to eager mode if compilation fails."""
        t0 = time.perf_counter()
        try:
            for _, batch, _ in self.mixture.sample(gen):
                with self._autocast():
                    loss, _ = self.objective.loss(self.model, batch, gen)
                loss.backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "run eagerly"
            print(f"[{self.name}] torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training eagerly",
                  file=sys.stderr)
            self.objective.prepare(self.model, compile=False)
        else:
            print(f"[{self.name}] compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        self.model.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``max_steps`` or ``max_minutes``; validate, plot, save the state and export at the end.

        With ``resume``, continue from the state in ``log_dir/{name}_state`` (step, tokens, elapsed time, AdamW
        moments, sampling generator) when there is one.
        """
        cfg, model = self.cfg, self.model
        torch.manual_seed(cfg.seed)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        model.train()
        t_begin = time.perf_counter()  # compilation counts against the budget
        self.objective.prepare(model, compile=cfg.compile)
        if cfg.compile:
            self._check_compiled(gen)
        optimizer = make_optimizer(model, cfg, self.device)
        budget = cfg.max_minutes * 60 if cfg.max_minutes is not None else None
        step, tokens, targets, elapsed0, skipped = 0, 0, 0, 0.0, 0
        history: list[dict[str, Any]] = []
        if resume and (self.state_dir / "trainer.json").is_file():
            meta = self.load_state(optimizer, gen)
            step, tokens, targets, elapsed0 = meta["step"], meta["tokens"], meta["targets"], meta["elapsed"]
            skipped = meta.get("skipped", 0)
            history = meta.get("history", [])
            print(f"[{self.name}] resumed from step {step} ({elapsed0:.0f} s already spent)", file=sys.stderr)
        elif not resume and self.metrics_file.exists():
            self.metrics_file.unlink()
        result = TrainResult(self.name, step, tokens, targets, elapsed0, None, history=history)
        window: dict[str, torch.Tensor] = {}  # sum of each group's loss since the last log line (on the device)
        window_steps = bad_in_a_row = 0
        last_train: float | None = next((h["train_loss"] for h in reversed(history) if "train_loss" in h), None)
        t_start = t_begin - elapsed0
        last_export = last_state = time.perf_counter()

        def progress_of(s: int, seconds: float) -> float:
            p = 0.0
            if cfg.max_steps:
                p = max(p, s / cfg.max_steps)
            if budget:
                p = max(p, seconds / budget)
            return p

        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=step, desc=self.name, unit="step", mininterval=2.0,
                       file=sys.stderr, dynamic_ncols=True)
        stopped_by = "max_steps"
        while True:
            seconds = time.perf_counter() - t_start
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped_by = "max_steps"
                break
            if budget is not None and seconds >= budget:
                stopped_by = "max_minutes"
                break
            lr = lr_at(cfg, step, progress_of(step, seconds))
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss: dict[str, torch.Tensor] = {}
            for group, batch, weight in self.mixture.sample(gen):
                with self._autocast():
                    loss, n_targets = self.objective.loss(model, batch, gen)
                (loss * weight).backward()
                step_loss[group] = loss.detach()
                tokens += batch.ids.numel()
                targets += n_targets
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                       cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            if bool(torch.isfinite(grad_norm)):
                optimizer.step()
                for group, value in step_loss.items():
                    window[group] = window[group] + value if group in window else value
                window_steps += 1
                bad_in_a_row = 0
            else:
                # a non-finite loss or gradient (a bf16 overflow): skip the update rather than poison the weights
                skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_BAD_STEPS:
                    raise FloatingPointError(f"[{self.name}] {bad_in_a_row} steps in a row had non-finite gradients "
                                             f"(up to step {step}); lower the learning rate (lr={cfg.lr})")
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if bar is not None:
                bar.update(1)
            if (step % cfg.log_every == 0 or step == 1) and window_steps:
                values = {g: float(v) / window_steps for g, v in window.items()}
                total = sum(self.weights[g] * v for g, v in values.items())
                window, window_steps = {}, 0
                last_train = total
                seconds = time.perf_counter() - t_start
                record = {"step": step, "seconds": round(seconds, 2), "tokens": tokens, "lr": lr,
                          "train_loss": total, **{f"train_{g}": v for g, v in values.items()}}
                if math.isfinite(norm := float(grad_norm)):
                    record["grad_norm"] = norm
                if skipped:
                    record["skipped_steps"] = skipped
                if step % cfg.val_every == 0:
                    record.update({f"val_{g}": v for g, v in self.validate().items()})
                history.append(record)
                self._log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.1e}", t=f"{seconds:.0f}s", refresh=False)
            elif step % cfg.val_every == 0:
                record = {"step": step, "seconds": round(time.perf_counter() - t_start, 2), "tokens": tokens,
                          **{f"val_{g}": v for g, v in self.validate().items()}}
                history.append(record)
                self._log(record)
            now = time.perf_counter()
            export_due = cfg.export_every_minutes > 0 and now - last_export >= cfg.export_every_minutes * 60
            if self.export is not None and export_due:
                self._update(result, step, tokens, targets, now - t_start, last_train, history, "running", skipped)
                self.export(model, result)
                last_export = time.perf_counter()
            if cfg.state_every_minutes > 0 and now - last_state >= cfg.state_every_minutes * 60:
                self.save_state(optimizer, self._meta(step, tokens, targets, now - t_start, history, skipped), gen)
                last_state = time.perf_counter()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t_start
        val = self.validate()
        final = {"step": step, "seconds": round(seconds, 2), "tokens": tokens,
                 **{f"val_{g}": v for g, v in val.items()}}
        history.append(final)
        self._log(final)
        self._update(result, step, tokens, targets, seconds, last_train, history, stopped_by, skipped)
        result.val_loss = val
        result.curve = str(plot_curve(history, self.curve_file, self.name))
        self.save_state(optimizer, self._meta(step, tokens, targets, seconds, history, skipped), gen)
        if self.export is not None:
            self.export(model, result)
        return result

    @staticmethod
    def _meta(step, tokens, targets, seconds, history, skipped) -> dict[str, Any]:
        return {"step": step, "tokens": tokens, "targets": targets, "elapsed": seconds, "skipped": skipped,
                "history": history}

    @staticmethod
    def _update(result: TrainResult, step, tokens, targets, seconds, train_loss, history, stopped_by,
                skipped) -> None:
        result.steps, result.tokens, result.targets, result.seconds = step, tokens, targets, seconds
        result.train_loss, result.history, result.stopped_by = train_loss, history, stopped_by
        result.skipped_steps = skipped
        vals = [h for h in history if any(k.startswith("val_") for k in h)]
        if vals:
            result.val_loss = {k[4:]: v for k, v in vals[-1].items() if k.startswith("val_")}


def plot_curve(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Train loss (mean per log window) and validation losses against tokens seen, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    tr = [(h["tokens"], h["train_loss"]) for h in history if "train_loss" in h]
    if tr:
        ax.plot([x / 1e6 for x, _ in tr], [y for _, y in tr], label="train (weighted total, mean per log window)",
                lw=1.4)
    keys = sorted({k for h in history for k in h if k.startswith("val_") and ":" not in k})
    for k in keys:
        pts = [(h["tokens"], h[k]) for h in history if k in h]
        ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], marker="o", ms=3, lw=1,
                label=k.replace("val_", "val ").replace("total", "(weighted total)"))
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
