"""The models the recipe trains, one :class:`Phase` each, in order: the recipe's loop (:mod:`.run`) runs every entry
of :data:`PHASES` the same way (build, train within its budget, export with its card, evaluate).

A new model is one more entry: a builder, an objective, a saver, an evaluation and the text of its card, plus its
budget fields in :class:`~dlm.train.recipe.config.RecipeConfig` (``minutes_X``, ``steps_X``, ``lr_X``,
``compile_X``, with ``X`` added to :data:`~dlm.train.recipe.config.BUDGETS`). A block-diffusion ``dlm-tiny-block``
in the SDAR format would give a block-causal builder, a block-wise masking objective and an SDAR saver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import builders
from ..evaluate import evaluate_causal, evaluate_diffusion, load_causal
from ..objectives import CausalObjective, DiffusionObjective
from .config import RecipeConfig
from .prepare import Prepared

Files = dict[str, str | bytes]  # extra files of a model folder (the card, the loss curve)


@dataclass(frozen=True)
class Card:
    """A phase's own text in its model card (the rest is the shared template, ``model_card.md``).

    ``objective`` may name ``$mask_eps``; ``decode`` (how the evaluation decodes it) ``$gen_length`` and
    ``$code_gen_length``."""

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
        save: (model, prepared data, folder, extra files) -> the exported model folder.
        evaluate: (config, prepared data, exported folder, device) -> the evaluation results.
        card: its text in the model card.
    """

    name: str
    budget: str
    build: Callable[[RecipeConfig, Prepared], torch.nn.Module]
    objective: Callable[[RecipeConfig, Prepared], Any]
    save: Callable[[torch.nn.Module, Prepared, Path, Files], Any]
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


# ------------------------------------------------------------------------------------------------ dlm-tiny
def _evaluate_diffusion(cfg: RecipeConfig, prep: Prepared, folder: Path, device: torch.device) -> dict[str, Any]:
    from ...api import load

    lm = load(folder, device=device)  # the exported checkpoint, through the public loader
    return evaluate_diffusion(lm, prep.splits["test"], prep.code_eval, gen_length=cfg.eval_gen_length,
                              code_gen_length=cfg.eval_code_gen_length, batch_size=cfg.eval_batch)


DLM_TINY = Phase(
    name="dlm-tiny", budget="diffusion",
    build=lambda cfg, prep: builders.build_diffusion(cfg.size, prep.n_tokens, seed=cfg.seed),
    objective=lambda cfg, prep: DiffusionObjective(prep.ids.mask, eps=cfg.mask_eps),
    save=lambda model, prep, folder, files: builders.save_diffusion(model, prep.ids, prep.tokenizer_dir, folder,
                                                                     files),
    evaluate=_evaluate_diffusion,
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
    save=lambda model, prep, folder, files: builders.save_causal(model, prep.tokenizer_dir, folder, files),
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

#: the models of the recipe, trained in this order (later phases' budgets are reserved while earlier ones train)
PHASES: tuple[Phase, ...] = (DLM_TINY, DLM_TINY_AR)
