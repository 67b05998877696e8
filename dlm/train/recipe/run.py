"""The recipe's loop: prepare the data once, then run every phase of :data:`~dlm.train.recipe.phases.PHASES` the
same way (train within its budget, export with its card, evaluate, pack), then write the summary."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ...errors import ConfigError
from .. import builders
from ..curves import plot_curve
from ..evaluate import format_table, write_results
from ..trainer import TrainConfig, Trainer, TrainResult
from .card import fmt_loss, model_card
from .config import RecipeConfig
from .packing import Packer
from .phases import PHASES, Phase
from .prepare import Prepared, prepare
from .runlog import RunLog, git_commit


@dataclass
class Run:
    """What the phases of one run share: settings, where things go, the data, and what each phase produced."""

    cfg: RecipeConfig
    out: Path
    log: RunLog
    command: str
    device: torch.device
    device_name: str
    packer: Packer
    prep: Prepared | None = None
    results: dict[str, TrainResult] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    evals: dict[str, Any] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.out / "logs"


def run_recipe(cfg: RecipeConfig, command: str | None = None) -> dict[str, Any]:
    """Run every step of the recipe; returns the evaluation results (and writes everything under ``cfg.out``)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # shard writing/loading bars would drown the run's own log
    threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        # tiny models gain nothing from more threads, and spinning threads on a busy machine can stall for seconds
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _run(cfg, command)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()


def _run(cfg: RecipeConfig, command: str | None) -> dict[str, Any]:
    phases = selected_phases(cfg)
    run = start(cfg, command)
    run.prep = prepare(cfg, run.out, run.log, run.device)
    run.packer.report()
    for i, phase in enumerate(phases):
        train_phase(run, phase, reserve_s=reserve_seconds(cfg, phases[i:]))
        if not cfg.skip_eval:
            evaluate_phase(run, phase, done=phases[: i + 1])
        run.packer.report()
    return finish(run)


def selected_phases(cfg: RecipeConfig) -> tuple[Phase, ...]:
    """The phases ``cfg.only`` names, in the recipe's order (all of them without ``only``)."""
    names = cfg.phase_names
    if names is None:
        return PHASES
    known = [p.name for p in PHASES]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"--only {cfg.only!r} must name phases of the recipe, comma-separated; unknown: "
                          f"{unknown}; known: {', '.join(known)}")
    return tuple(p for p in PHASES if p.name in names)


def start(cfg: RecipeConfig, command: str | None) -> Run:
    """The output folder, the log (restarted unless resuming), the device and ``recipe.json``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and (out / "logs" / "recipe.log").exists():
        (out / "logs" / "recipe.log").unlink()
    log = RunLog(out / "logs" / "recipe.log", cfg.deadline_minutes)
    command = command or f"PYTHONPATH=. python3 -m dlm.train recipe --out {cfg.out}"
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    (out / "recipe.json").write_text(json.dumps({"config": cfg.to_dict(), "command": command, "git": git_commit(),
                                                 "torch": torch.__version__, "device": device_name}, indent=1))
    log(f"recipe on {device_name}: torch {torch.__version__}, out {out}")
    packer = Packer(Path(cfg.pack_dir) if cfg.pack_dir else None, out, log)
    return Run(cfg, out, log, command, device, device_name, packer)


def reserve_seconds(cfg: RecipeConfig, remaining: Sequence[Phase]) -> float:
    """Time kept back while ``remaining[0]`` trains: every remaining phase's evaluation and the later phases'
    training budgets."""
    later = sum((p.minutes(cfg) or 0) * 60 for p in remaining[1:])
    return len(remaining) * cfg.eval_reserve_minutes * 60 + later


def train_config(run: Run, phase: Phase, reserve_s: float) -> TrainConfig:
    """The phase's optimisation settings; its minutes shortened to what the deadline leaves after ``reserve_s``."""
    cfg, minutes = run.cfg, phase.minutes(run.cfg)
    if minutes is not None:
        left = (run.log.remaining() - reserve_s) / 60
        if left < minutes:
            run.log(f"only {max(left, 0):.2f} minutes left for this model (asked {minutes}); shortening the budget")
            minutes = max(left, 0.25)
    return TrainConfig(lr=phase.lr(cfg), min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                       weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, grad_clip=cfg.grad_clip,
                       max_steps=phase.steps(cfg), max_minutes=minutes, val_every=cfg.val_every,
                       log_every=cfg.log_every, export_every_minutes=cfg.export_every_minutes,
                       state_every_minutes=cfg.state_every_minutes, seed=cfg.seed, compile=phase.compile(cfg),
                       progress=cfg.progress)


def train_phase(run: Run, phase: Phase, reserve_s: float) -> None:
    """Build, train (exporting on the way) and export the phase's model."""
    prep, tcfg = run.prep, train_config(run, phase, reserve_s)
    model = phase.build(run.cfg, prep).to(run.device)
    run.params[phase.name] = builders.count_parameters(model)
    bounds = [f"{tcfg.max_minutes:.2f} min" if tcfg.max_minutes else "",
              f"{tcfg.max_steps} steps" if tcfg.max_steps else ""]
    run.log(f"{phase.name}: {run.params[phase.name]:,} parameters; training for "
            f"{' / '.join(b for b in bounds if b)}")
    trainer = Trainer(phase.name, model, phase.objective(run.cfg, prep), prep.mixture, prep.val, tcfg, run.logs,
                      export=lambda m, result: export(run, phase, m, result), device=run.device,
                      val_weights=prep.val_weights)
    result = run.results[phase.name] = trainer.fit(resume=run.cfg.resume)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.val_loss.items())
    run.log(f"{phase.name}: {result.steps} steps, {result.tokens / 1e6:.1f}M tokens, "
            f"train loss {fmt_loss(result.train_loss)}, val {losses}")
    del model, trainer
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def export(run: Run, phase: Phase, model: torch.nn.Module, result: TrainResult) -> None:
    """Write the phase's model folder with its card (called during training and at its end) and pack it."""
    if result.stopped_by == "running":
        result.curve = str(plot_curve(result.history, run.logs / f"{phase.name}_loss.png", phase.name))
    run.results[phase.name] = result
    files: dict[str, str | bytes] = {"MODEL_CARD.md": card(run, phase)}
    if result.curve and Path(result.curve).is_file():
        files["loss_curve.png"] = Path(result.curve).read_bytes()
    phase.save(run.cfg, model, run.prep, run.out / phase.name, files)
    run.packer.folder(run.out / phase.name, phase.name)
    run.log(f"exported {phase.name} at step {result.steps} ({result.stopped_by})")


def card(run: Run, phase: Phase) -> str:
    return model_card(phase, run.cfg, run.prep, run.results.get(phase.name), run.params[phase.name],
                      run.evals or None, run.command, run.device_name)


def evaluate_phase(run: Run, phase: Phase, done: Sequence[Phase]) -> None:
    """Evaluate the exported model; write ``eval.json`` / ``eval.md``; rewrite and repack the cards of the phases
    ``done`` so far (each card's table holds every model evaluated)."""
    r = run.evals[phase.name] = phase.evaluate(run.cfg, run.prep, run.out / phase.name, run.device)
    run.log(f"evaluated {phase.name} in {sum(r['seconds'].values()):.1f} s")
    write_results(run.evals, run.out)
    table = format_table(run.evals)
    print(table, flush=True)
    run.log("evaluation table:\n" + table)
    for p in done:
        if (run.out / p.name).is_dir():
            (run.out / p.name / "MODEL_CARD.md").write_text(card(run, p))
    for p in done:
        run.packer.folder(run.out / p.name, p.name)


def finish(run: Run) -> dict[str, Any]:
    """``summary.json``, the training states removed unless kept, the last pack of the report."""
    summary = {"params": run.params, "train": {k: r.summary() for k, r in run.results.items()},
               "data": run.prep.stats}
    (run.out / "summary.json").write_text(json.dumps(summary, indent=1))
    if not run.cfg.keep_state:
        for phase in PHASES:
            shutil.rmtree(run.logs / f"{phase.name}_state", ignore_errors=True)
    run.log(f"done in {run.log.elapsed() / 60:.2f} minutes")
    run.packer.report()
    return run.evals
