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
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .curves import plot_curve
from .data import Batch, Mixture
from .optim import TrainConfig, lr_at, make_optimizer
from .state import load_state, save_state

MAX_BAD_STEPS = 25


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


@dataclass
class _Progress:
    """The counters of a run in progress: steps, tokens fed, loss targets, skipped steps, the metrics history, the
    train losses summed since the last log line (on the device) and the clocks."""

    step: int = 0
    tokens: int = 0
    targets: int = 0
    elapsed0: float = 0.0  # seconds spent before a resume
    skipped: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, torch.Tensor] = field(default_factory=dict)
    window_steps: int = 0
    bad_in_a_row: int = 0
    last_train: float | None = None
    t_start: float = 0.0
    last_export: float = 0.0
    last_state: float = 0.0


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

    def save_state(self, optimizer: torch.optim.Optimizer, meta: dict[str, Any], generator: torch.Generator) -> None:
        """Model, optimizer moments and loop counters into ``log_dir/{name}_state`` (:mod:`dlm.train.state`)."""
        save_state(self.state_dir, self.model, optimizer, meta, generator)

    def load_state(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, Any]:
        """Restore what :meth:`save_state` wrote into the model, ``optimizer`` and ``generator``; return the meta."""
        return load_state(self.state_dir, self.model, optimizer, generator, self.device)

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
        gen, optimizer, run = self._begin(resume)
        result = TrainResult(self.name, run.step, run.tokens, run.targets, run.elapsed0, None, history=run.history)
        bar = self._progress_bar(run.step)
        while True:
            seconds = time.perf_counter() - run.t_start
            stopped_by = self._stop_reason(run.step, seconds)
            if stopped_by is not None:
                break
            lr = lr_at(self.cfg, run.step, self._progress(run.step, seconds))
            for g in optimizer.param_groups:
                g["lr"] = lr
            grad_norm = self.step(optimizer, gen, run)
            run.step += 1
            if bar is not None:
                bar.update(1)
            self._record(run, lr, grad_norm, bar)
            self.checkpoint(optimizer, gen, run, result)
        if bar is not None:
            bar.close()
        return self._finish(optimizer, gen, run, result, stopped_by)

    def _begin(self, resume: bool) -> tuple[torch.Generator, torch.optim.Optimizer, _Progress]:
        """Seeds, compilation, the optimizer, and the counters (restored from the saved state with ``resume``)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.model.train()
        t_begin = time.perf_counter()  # compilation counts against the budget
        self.objective.prepare(self.model, compile=cfg.compile)
        if cfg.compile:
            self._check_compiled(gen)
        optimizer = make_optimizer(self.model, cfg, self.device)
        run = _Progress()
        if resume and (self.state_dir / "trainer.json").is_file():
            meta = self.load_state(optimizer, gen)
            run.step, run.tokens, run.targets, run.elapsed0 = meta["step"], meta["tokens"], meta["targets"], \
                meta["elapsed"]
            run.skipped, run.history = meta.get("skipped", 0), meta.get("history", [])
            print(f"[{self.name}] resumed from step {run.step} ({run.elapsed0:.0f} s already spent)", file=sys.stderr)
        elif not resume and self.metrics_file.exists():
            self.metrics_file.unlink()
        run.last_train = next((h["train_loss"] for h in reversed(run.history) if "train_loss" in h), None)
        run.t_start = t_begin - run.elapsed0
        run.last_export = run.last_state = time.perf_counter()
        return gen, optimizer, run

    def _progress_bar(self, initial: int):
        if not self.cfg.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=initial, desc=self.name, unit="step", mininterval=2.0,
                    file=sys.stderr, dynamic_ncols=True)

    def _progress(self, step: int, seconds: float) -> float:
        """How far the run is, in [0, 1]: the larger of the steps and the time budget used."""
        p = 0.0
        if self.cfg.max_steps:
            p = max(p, step / self.cfg.max_steps)
        if self.cfg.max_minutes is not None:
            p = max(p, seconds / (self.cfg.max_minutes * 60))
        return p

    def _stop_reason(self, step: int, seconds: float) -> str | None:
        if self.cfg.max_steps is not None and step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_minutes is not None and seconds >= self.cfg.max_minutes * 60:
            return "max_minutes"
        return None

    def step(self, optimizer: torch.optim.Optimizer, gen: torch.Generator, run: _Progress) -> torch.Tensor:
        """One optimisation step over one batch of every group; returns the gradient norm (before clipping). A
        non-finite gradient (a bf16 overflow) skips the update rather than poison the weights."""
        step_loss: dict[str, torch.Tensor] = {}
        for group, batch, weight in self.mixture.sample(gen):
            with self._autocast():
                loss, n_targets = self.objective.loss(self.model, batch, gen)
            (loss * weight).backward()
            step_loss[group] = loss.detach()
            run.tokens += batch.ids.numel()
            run.targets += n_targets
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if bool(torch.isfinite(grad_norm)):
            optimizer.step()
            for group, value in step_loss.items():
                run.window[group] = run.window[group] + value if group in run.window else value
            run.window_steps += 1
            run.bad_in_a_row = 0
        else:
            run.skipped += 1
            run.bad_in_a_row += 1
            if run.bad_in_a_row >= MAX_BAD_STEPS:
                raise FloatingPointError(f"[{self.name}] {run.bad_in_a_row} steps in a row had non-finite gradients "
                                         f"(up to step {run.step}); lower the learning rate (lr={self.cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _record(self, run: _Progress, lr: float, grad_norm: torch.Tensor, bar) -> None:
        """The metrics line of a logging step (mean train losses of the window, validation when due), or the
        validation line of a validation step."""
        cfg = self.cfg
        if (run.step % cfg.log_every == 0 or run.step == 1) and run.window_steps:
            values = {g: float(v) / run.window_steps for g, v in run.window.items()}
            total = sum(self.weights[g] * v for g, v in values.items())
            run.window, run.window_steps, run.last_train = {}, 0, total
            seconds = time.perf_counter() - run.t_start
            record = {"step": run.step, "seconds": round(seconds, 2), "tokens": run.tokens, "lr": lr,
                      "train_loss": total, **{f"train_{g}": v for g, v in values.items()}}
            if math.isfinite(norm := float(grad_norm)):
                record["grad_norm"] = norm
            if run.skipped:
                record["skipped_steps"] = run.skipped
            if run.step % cfg.val_every == 0:
                record.update({f"val_{g}": v for g, v in self.validate().items()})
            if bar is not None:
                bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.1e}", t=f"{seconds:.0f}s", refresh=False)
        elif run.step % cfg.val_every == 0:
            record = {"step": run.step, "seconds": round(time.perf_counter() - run.t_start, 2), "tokens": run.tokens,
                      **{f"val_{g}": v for g, v in self.validate().items()}}
        else:
            return
        run.history.append(record)
        self._log(record)

    def checkpoint(self, optimizer: torch.optim.Optimizer, gen: torch.Generator, run: _Progress,
                   result: TrainResult) -> None:
        """Export the model every ``export_every_minutes`` and save the state every ``state_every_minutes``."""
        cfg, now = self.cfg, time.perf_counter()
        export_due = cfg.export_every_minutes > 0 and now - run.last_export >= cfg.export_every_minutes * 60
        if self.export is not None and export_due:
            self._update(result, run, now - run.t_start, "running")
            self.export(self.model, result)
            run.last_export = time.perf_counter()
        if cfg.state_every_minutes > 0 and now - run.last_state >= cfg.state_every_minutes * 60:
            self.save_state(optimizer, self._meta(run, now - run.t_start), gen)
            run.last_state = time.perf_counter()

    def _finish(self, optimizer: torch.optim.Optimizer, gen: torch.Generator, run: _Progress, result: TrainResult,
                stopped_by: str) -> TrainResult:
        """The final validation, the curve, the state and the last export."""
        seconds = time.perf_counter() - run.t_start
        val = self.validate()
        final = {"step": run.step, "seconds": round(seconds, 2), "tokens": run.tokens,
                 **{f"val_{g}": v for g, v in val.items()}}
        run.history.append(final)
        self._log(final)
        self._update(result, run, seconds, stopped_by)
        result.val_loss = val
        result.curve = str(plot_curve(run.history, self.curve_file, self.name))
        self.save_state(optimizer, self._meta(run, seconds), gen)
        if self.export is not None:
            self.export(self.model, result)
        return result

    @staticmethod
    def _meta(run: _Progress, seconds: float) -> dict[str, Any]:
        return {"step": run.step, "tokens": run.tokens, "targets": run.targets, "elapsed": seconds,
                "skipped": run.skipped, "history": run.history}

    @staticmethod
    def _update(result: TrainResult, run: _Progress, seconds: float, stopped_by: str) -> None:
        result.steps, result.tokens, result.targets, result.seconds = run.step, run.tokens, run.targets, seconds
        result.train_loss, result.history, result.stopped_by = run.last_train, run.history, stopped_by
        result.skipped_steps = run.skipped
        vals = [h for h in run.history if any(k.startswith("val_") for k in h)]
        if vals:
            result.val_loss = {k[4:]: v for k, v in vals[-1].items() if k.startswith("val_")}
