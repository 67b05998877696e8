"""The models the recipe trains, one :class:`Phase` each, in order: the recipe's loop (:mod:`.run`) runs every entry
of :data:`PHASES` the same way (build, train within its budget, export with its card, evaluate).

A new model is one more entry: a builder, an objective, a saver, an evaluation and the text of its card, plus its
budget fields in :class:`~dlm.train.recipe.config.RecipeConfig` (``minutes_X``, ``steps_X``, ``lr_X``,
``compile_X``, with ``X`` added to :data:`~dlm.train.recipe.config.BUDGETS`). ``--only NAMES`` runs some of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import builders
from ..block_decode import evaluate_block
from ..evaluate import evaluate_causal, evaluate_diffusion, load_causal
from ..objectives import CausalObjective, DiffusionObjective
from ..objectives_block import BlockDiffusionObjective
from .config import RecipeConfig
from .prepare import Prepared

Files = dict[str, str | bytes]  # extra files of a model folder (the card, the loss curve)


@dataclass(frozen=True)
class Card:
    """A phase's own text in its model card (the rest is the shared template, ``model_card.md``).

    ``objective``, ``attention`` and ``decode`` (how the evaluation decodes it) may name ``$mask_eps``,
    ``$block_size``, ``$gen_length`` and ``$code_gen_length``."""

    intro: str
    usage: str
    objective: str
    attention: str
    decode: str


@dataclass(frozen=True)
class Phase:
    """One model of the recipe.

    Attributes:
        name: the model's folder under ``--out`` and the prefix of its logs.
        budget: its key in :data:`~dlm.train.recipe.config.BUDGETS` (its ``minutes_``, ``steps_``, ``lr_`` and
            ``compile_`` settings).
        build: (config, prepared data) -> the untrained model (float32, on the CPU).
        objective: (config, prepared data) -> the training objective (``prepare`` and ``loss``, see the Trainer).
        save: (config, model, prepared data, folder, extra files) -> the exported model folder.
        evaluate: (config, prepared data, exported folder, device) -> the evaluation results.
        card: its text in the model card.
    """

    name: str
    budget: str
    build: Callable[[RecipeConfig, Prepared], torch.nn.Module]
    objective: Callable[[RecipeConfig, Prepared], Any]
    save: Callable[[RecipeConfig, torch.nn.Module, Prepared, Path, Files], Any]
    evaluate: Callable[[RecipeConfig, Prepared, Path, torch.device], dict[str, Any]]
    card: Card

    def minutes(self, cfg: RecipeConfig) -> float | None:
        return getattr(cfg, f"minutes_{self.budget}")

    def steps(self, cfg: RecipeConfig) -> int | None:
        return getattr(cfg, f"steps_{self.budget}")

    def lr(self, cfg: RecipeConfig) -> float:
        return getattr(cfg, f"lr_{self.budget}")

    def compile(self, cfg: RecipeConfig) -> bool:
        return getattr(cfg, f"compile_{self.budget}")


def _evaluate_loaded(evaluate_lm: Callable[..., dict[str, Any]]):
    """A phase's evaluation that loads the exported checkpoint through the public loader and runs
    ``evaluate_lm(lm, test examples, code examples, ...)``."""

    def run(cfg: RecipeConfig, prep: Prepared, folder: Path, device: torch.device) -> dict[str, Any]:
        from ...api import load

        return evaluate_lm(load(folder, device=device), prep.splits["test"], prep.code_eval,
                           gen_length=cfg.eval_gen_length, code_gen_length=cfg.eval_code_gen_length,
                           batch_size=cfg.eval_batch)

    return run


def _initial(model: torch.nn.Module, cfg: RecipeConfig) -> torch.nn.Module:
    """dlm-tiny's starting point: its random weights, or those of ``cfg.init_from`` (fine-tuning)."""
    return model if cfg.init_from is None else builders.load_initial(model, cfg.init_from)


# ------------------------------------------------------------------------------------------------ dlm-tiny
DLM_TINY = Phase(
    name="dlm-tiny", budget="diffusion",
    build=lambda cfg, prep: _initial(builders.build_diffusion(cfg.size, prep.n_tokens, seed=cfg.seed), cfg),
    objective=lambda cfg, prep: DiffusionObjective(prep.ids.mask, eps=cfg.mask_eps),
    save=lambda cfg, model, prep, folder, files: builders.save_diffusion(model, prep.ids, prep.tokenizer_dir,
                                                                          folder, files),
    evaluate=_evaluate_loaded(evaluate_diffusion),
    card=Card(
        intro="A small masked-diffusion language model (LLaDA / MDLM objective) in the genuine LLaDA checkpoint "
              "format: `config.json` with `model_type: \"llada\"` and OLMo-style fields, LLaDA weight names "
              "(`model.transformer.blocks.N.q_proj.weight`, ...), bf16 safetensors shards with an index.",
        usage="```python\nimport dlm\nlm = dlm.load(\"dlm-tiny\")\n"
              "out = lm.generate([\"reverse: c a f b =\"], dlm.GenerationConfig(gen_length=32, steps=32))\n"
              "print(out.texts[0])   # b f a c\n```",
        objective="masked diffusion: t ~ U($mask_eps, 1) per row (stratified over the batch), each answer token (EOS "
                  "padding included) or plain-text token masked with probability t, cross-entropy on the masked "
                  "positions weighted by 1/t and divided by the row's number of maskable tokens; prompt tokens never "
                  "masked. Each prompt/answer row has a random canvas length between the answer + one EOS and the row "
                  "length, so answers are followed by varying amounts of EOS padding.",
        attention="bidirectional",
        decode="dlm engine, `low_confidence`, one token per step (steps = gen_length = $gen_length, code "
               "$code_gen_length)"),
)


# ------------------------------------------------------------------------------------------------ dlm-tiny-ar
def _evaluate_causal(cfg: RecipeConfig, prep: Prepared, folder: Path, device: torch.device) -> dict[str, Any]:
    model, tok = load_causal(folder, device=device)
    return evaluate_causal(model, tok, prep.splits["test"], prep.code_eval, gen_length=cfg.eval_gen_length,
                           code_gen_length=cfg.eval_code_gen_length, batch_size=cfg.eval_batch)


DLM_TINY_AR = Phase(
    name="dlm-tiny-ar", budget="ar",
    build=lambda cfg, prep: builders.build_causal(cfg.size, prep.n_tokens, prep.ids, seed=cfg.seed),
    objective=lambda cfg, prep: CausalObjective(),
    save=lambda cfg, model, prep, folder, files: builders.save_causal(model, prep.tokenizer_dir, folder, files),
    evaluate=_evaluate_causal,
    card=Card(
        intro="A small causal language model (`LlamaForCausalLM`) with the same tokenizer and data as dlm-tiny, in "
              "the standard transformers format (no remote code): the verifier of dlm's causal lossless mode.",
        usage="```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
              "model = AutoModelForCausalLM.from_pretrained(\"dlm-tiny-ar\")\n"
              "tok = AutoTokenizer.from_pretrained(\"dlm-tiny-ar\")\n"
              "ids = tok(\"reverse: c a f b =\", return_tensors=\"pt\")\n"
              "out = model.generate(**ids, max_new_tokens=32, do_sample=False)\n"
              "print(tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))\n```",
        objective="next-token cross-entropy on the answer and its EOS for prompt/answer rows, on every token for plain "
                  "code",
        attention="causal",
        decode="greedy `generate`"),
)

# ------------------------------------------------------------------------------------------------ dlm-tiny-block
DLM_TINY_BLOCK = Phase(
    name="dlm-tiny-block", budget="block",
    build=lambda cfg, prep: builders.build_block(cfg.size, prep.n_tokens, seed=cfg.seed),
    objective=lambda cfg, prep: BlockDiffusionObjective(prep.ids.mask, cfg.block_size, eps=cfg.mask_eps),
    save=lambda cfg, model, prep, folder, files: builders.save_block(model, prep.ids, cfg.block_size,
                                                                      prep.tokenizer_dir, folder, files),
    evaluate=_evaluate_loaded(evaluate_block),
    card=Card(
        intro="A small block-diffusion language model (BD3-LM / SDAR objective) in the SDAR checkpoint format: "
              "`config.json` with `model_type: \"sdar\"` (Qwen3 layout), `block_size` and `mask_token_id` as in "
              "SDAR's training config, Qwen3 weight names (`model.layers.N.self_attn.q_proj.weight`, "
              "`self_attn.q_norm.weight`, ...), bf16 safetensors shards with an index. Attention is causal across "
              "blocks and bidirectional inside one, so committed blocks' keys and values never change. Same "
              "tokenizer and data as dlm-tiny; its mask token `<|mdm_mask|>` is the tokenizer's `mask_token`.",
        usage="```\ndlm generate --model dlm-tiny-block \"reverse: c a f b =\"\n```\n\n"
              "```python\nimport dlm\nlm = dlm.load(\"path/to/dlm-tiny-block\")\n"
              "print(lm.model_type, lm.block_size)\n```",
        objective="block diffusion: the canvas is cut into blocks of $block_size tokens from its first token; "
                  "each block draws its own t ~ U($mask_eps, 1) (stratified over the batch's blocks) and each "
                  "answer token (EOS padding included) or plain-text token in it is masked with probability t; "
                  "the noisy and the clean row are fed side by side (same position ids) under one mask: a noisy "
                  "block sees itself and the clean earlier blocks, a clean block the clean blocks up to itself; "
                  "cross-entropy on the masked positions weighted by 1/t of their block and divided by the row's "
                  "number of maskable tokens; prompt tokens never masked; canvases end on a block boundary.",
        attention="block-causal, blocks of $block_size (bidirectional inside a block, causal across blocks), "
                  "QK-norm",
        decode="the reference block decoder of `dlm.train` (prompt from position 0, canvas rounded up to a block "
               "boundary, full recomputation each step, one token per step: the most probable greedy token among "
               "the current block's masks; gen_length $gen_length, code $code_gen_length)"),
)

#: the models of the recipe, trained in this order (later phases' budgets are reserved while earlier ones train)
PHASES: tuple[Phase, ...] = (DLM_TINY, DLM_TINY_AR, DLM_TINY_BLOCK)
