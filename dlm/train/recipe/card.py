"""The MODEL_CARD.md of a phase's model: ``model_card.md`` (package data) filled in from the run.

The template holds the text every card shares; each phase gives its own introduction, usage, objective and
attention (:class:`~dlm.train.recipe.phases.Card`); the run gives the figures. Placeholders are
:class:`string.Template` names (``$name``), so the braces of code examples need no escaping.
"""

from __future__ import annotations

from importlib import resources
from string import Template
from typing import Any

from ..builders import padded_vocab
from ..evaluate import format_table
from ..trainer import TrainResult
from .config import RecipeConfig
from .phases import PHASES, Phase
from .prepare import Prepared

EVALUATION = Template(
    "Held-out test split of each task family (exact match) and held-out standard-library functions ($n_code, from "
    "files never trained on): a completion counts when header + body parses with `ast` as one function with at "
    "least one statement besides its docstring (body = generated text up to EOS or the first non-indented line; a "
    "body cut off by the generation length loses its last unfinished line). $decodes\n\n$table\n\n")
NOT_EVALUATED = "Not evaluated yet (the run was still going when this card was written).\n\n"


def template() -> Template:
    return Template(resources.files(__package__).joinpath("model_card.md").read_text(encoding="utf-8"))


def model_card(phase: Phase, cfg: RecipeConfig, prep: Prepared, result: TrainResult | None, params: int,
               evals: dict[str, Any] | None, command: str, device_name: str) -> str:
    """The MODEL_CARD.md of ``phase``'s model; ``result`` None: not trained yet, ``evals`` None: not evaluated."""
    size = cfg.size
    settings = card_settings(cfg)
    m = prep.corpus.manifest()["counts"]
    s = prep.stats
    return template().substitute(
        name=phase.name, intro=phase.card.intro, usage=phase.card.usage,
        parameters=f"{params:,} ({params / 1e6:.1f}M)", n_layers=size.n_layers, d_model=size.d_model,
        n_heads=size.n_heads, mlp_hidden=size.mlp_hidden, n_tokens=prep.n_tokens,
        embedding_rows=padded_vocab(prep.n_tokens), attention=Template(phase.card.attention).substitute(settings),
        rope_theta=f"{size.rope_theta:g}",
        task_len=cfg.task_len, code_len=cfg.code_len, max_seq_len=size.max_seq_len,
        tokenizer_origin=tokenizer_origin(cfg), bos=prep.ids.bos, eos=prep.ids.eos, eot=prep.ids.eot,
        mask=prep.ids.mask, python=s["python"], train_files=m["train_files"], train_mb=f"{m['train_bytes'] / 1e6:.1f}",
        train_code_tokens=f"{s['train_code_tokens'] / 1e6:.2f}M", heldout_files=m["heldout_files"],
        function_pairs=s["function_pairs"], families=", ".join(cfg.family_list), train_per_task=cfg.train_per_task,
        mixture=mixture_text(cfg), objective=Template(phase.card.objective).substitute(settings),
        lr=f"{phase.lr(cfg):g}", beta1=cfg.beta1, beta2=cfg.beta2, weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps, min_lr_ratio=f"{cfg.min_lr_ratio:g}", grad_clip=cfg.grad_clip,
        device=device_name, result=result_text(cfg, result), evaluation=evaluation_text(cfg, prep, evals),
        command=command, origin=(f"Fine-tuned from the weights of `{cfg.init_from}`" if cfg.init_from
                                 else "Trained from scratch"))


def tokenizer_origin(cfg: RecipeConfig) -> str:
    if cfg.tokenizer_from is not None:
        return f"The byte-level BPE tokenizer of `{cfg.tokenizer_from}`, reused as it is (`--tokenizer-from`)"
    return (f"Byte-level BPE trained with the `tokenizers` library on the training files and "
            f"{cfg.tokenizer_task_examples} training task texts")


def mixture_text(cfg: RecipeConfig) -> str:
    """What one training step holds, one line per group of the mixture."""
    fw = ", ".join(f"{f} {w:g}" for f, w in cfg.family_weight.items())
    lines = [f"- tasks: {cfg.task_batch} rows x {cfg.task_len} tokens per step, loss weight {cfg.task_weight}; "
             f"families sampled in proportion {fw}"]
    if cfg.code_weight > 0:
        lines.append(f"- code: {cfg.code_batch} rows x {cfg.code_len} tokens per step, loss weight {cfg.code_weight}; "
                     f"{100 * cfg.code_task_fraction:.0f}% task pairs with canvases up to {cfg.code_len} tokens; of "
                     f"the rest, {100 * cfg.code_fn_fraction:.0f}% function-completion pairs and "
                     f"{100 * (1 - cfg.code_fn_fraction):.0f}% windows of plain code")
    return "\n".join(lines)


def result_text(cfg: RecipeConfig, result: TrainResult | None) -> str:
    """The lines of the training section that need a finished (or exported) training; empty before."""
    if result is None:
        return ""
    val = ", ".join(f"{k} {v:.4f}" for k, v in result.val_loss.items())
    skipped = f"; {result.skipped_steps} steps skipped for non-finite gradients" if result.skipped_steps else ""
    start = f"- started from the weights of `{cfg.init_from}` (`--init-from`)\n" if cfg.init_from else ""
    return (f"{start}- {result.steps} steps, {result.tokens / 1e6:.1f}M tokens seen ({result.targets / 1e6:.1f}M loss "
            f"targets), {result.seconds / 60:.2f} minutes (stopped by {result.stopped_by})\n"
            f"- final train loss (weighted total, mean of the last {cfg.log_every} steps) "
            f"{fmt_loss(result.train_loss)}{skipped}\n"
            f"- validation loss: {val}\n\n![loss curve](loss_curve.png)\n")


def evaluation_text(cfg: RecipeConfig, prep: Prepared, evals: dict[str, Any] | None) -> str:
    """The evaluation section: how every phase's model was decoded and the accuracy table of those evaluated."""
    if not evals:
        return NOT_EVALUATED
    decodes = " ".join(f"{p.name}: {Template(p.card.decode).substitute(card_settings(cfg))}." for p in PHASES
                       if p.name in evals)
    return EVALUATION.substitute(n_code=len(prep.code_eval), decodes=decodes, table=format_table(evals))


def card_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """The settings a phase's own card text may name (see :class:`~dlm.train.recipe.phases.Card`)."""
    return {"mask_eps": cfg.mask_eps, "block_size": cfg.block_size, "gen_length": cfg.eval_gen_length,
            "code_gen_length": cfg.eval_code_gen_length}


def fmt_loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
