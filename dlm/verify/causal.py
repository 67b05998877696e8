"""``causal``: a causal LM verifies blocks drafted by the diffusion model; the output is the causal model's.

Speculative decoding with a diffusion drafter (Christopher et al., 2024, "Speculative Diffusion Decoding",
arXiv:2408.05636; DiffuSpec, arXiv:2510.02358), whose greedy form is blockwise parallel decoding (Stern et al.,
2018, arXiv:1811.03115) and whose sampling form is speculative sampling (Leviathan et al., 2023,
arXiv:2211.17192; Chen et al., 2023, arXiv:2302.01318).

Each *round*, for one request whose answer so far is ``y`` (every request verifying in an engine step is in the
same round; see :mod:`dlm.verify.causal_kv` for the batched verification):

1. Draft: the diffusion model decodes ``D`` tokens on the canvas ``prompt + y + D masks`` (``draft_steps`` = 1:
   every position from one forward, each token drawn from its own distribution ``q_i``; more steps: the
   configured scheduler, cache and sampling commit them over ``draft_steps`` steps, like any dlm decode).
2. Verify: ONE forward of the causal model over ``[last token] + draft`` of every request verifying now, each on
   top of its own KV cache of everything before, gives its next-token distribution ``p_i`` after every draft
   prefix (and one past the draft).
3. Greedy (temperature 0): accept the longest prefix of the draft equal to the causal model's argmax, then append
   the causal model's own argmax after it. The output is exactly ``model.generate(do_sample=False,
   max_new_tokens=gen_length)`` of the causal model (stopping at its EOS).
   Sampling (temperature > 0): accept draft token ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the
   first rejection emit a token drawn from ``normalize(max(0, p_i - q_i))`` and end the round; after a fully
   accepted draft emit a bonus token drawn from ``p_D``. Every emitted token is distributed exactly as
   ``p_i`` (see :func:`emitted_distribution`), so the output is distributed exactly as the causal model's samples:
   ``model.generate(do_sample=True, temperature=T, top_k=top_k or 0, top_p=top_p or 1.0)`` (no other logits
   processors).
4. The causal KV cache is cropped back to the accepted tokens (the rejected suffix is rolled back).

In the engine the one-step draft is a row of the step's ragged diffusion forward, beside every other request's
rows; the verification forward follows it in the same step. A multi-step draft (``draft_steps > 1``) is an
ordinary diffusion request of the engine (the configured scheduler, cache and sampling) that runs in the
verified request's slot; the round verifies when it finishes.

Why the rule needs a *proposal distribution that is the draw's true conditional*: the argument behind step 3
needs, at position ``i`` and given the accepted prefix, ``x_i`` to be distributed as ``q_i``. A one-step draft
satisfies this (positions are drawn independently from one forward). A multi-step diffusion draft does not: a
position committed at a later step depends on tokens committed earlier to its right, and confidence-based
schedulers choose *which* positions to commit by looking at the drawn tokens, so ``x_i`` is not distributed as
the ``q_i`` it was drawn from once the other draft tokens are known. With ``draft_steps > 1`` the verifier
therefore treats the draft as a given proposal, ``q_i = point mass at x_i``: accept with probability ``p_i(x_i)``,
else draw from ``p_i`` without ``x_i``. That rule is exact for any proposal however it was produced; it accepts
less often. (Greedy verification is exact either way.)

Parameters (``verify_kwargs``; ``verifier`` and ``tokenizer`` may also be objects when the class is built
directly, ``CausalVerifier(verifier=model, tokenizer=tok).run(lm, prompts, config)``):
    verifier: folder of a transformers causal LM (``AutoModelForCausalLM``, no remote code) sharing the diffusion
        model's tokenizer, or the model object. ``None``: the bundled ``dlm-tiny-ar``.
    tokenizer: the causal model's tokenizer (folder or object); default: the verifier folder's.
    draft_length: tokens drafted per round, D (default 8).
    draft_steps: diffusion steps per draft (default 1: all D positions from one forward).
    adaptive: grow D by 2 after a fully accepted draft, shrink it by 1 after a rejection (1..max_draft_length).
    max_draft_length: upper bound of the adaptive D (default 32).
    dtype: dtype to load the verifier in (``"float32"``, ``"float64"``, ``"bfloat16"``, ...; default: transformers').

Statistics: ``rounds`` (causal verification forwards), ``causal_forwards`` (plus one prefill per row),
``diffusion_nfe`` (drafting forwards), ``drafted_tokens``, ``accepted_draft_tokens``, ``emitted_tokens``,
``block_efficiency`` (tokens emitted per round: accepted drafts + the causal model's own token; the ratio of
the counters ``accepted_tokens`` and ``row_rounds``, which repeat ``emitted_tokens`` and ``rounds`` under the names
the stepwise verifier uses, so batches merge the same way),
``acceptance_rate`` (accepted / drafted). ``GenerationOutput.nfe`` counts each row's diffusion forwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import GenerationConfig
from ..errors import CheckpointError, ConfigError
from ..sampling import top_k_filter, top_p_filter
from .base import register_verifier
from .causal_model import load_causal, token_ids, tokenizer_differences
from .common import Verifier, positive_int

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_verifier("causal")
class CausalVerifier(Verifier):
    """A causal LM verifies diffusion drafts; greedy output identical, samples identically distributed."""

    @dataclass(frozen=True)
    class Params:
        verifier: Any = None
        tokenizer: Any = None
        draft_length: int = 8
        draft_steps: int = 1
        adaptive: bool = False
        max_draft_length: int = 32
        dtype: str | None = None

        def __post_init__(self):
            positive_int("draft_length", self.draft_length)
            positive_int("draft_steps", self.draft_steps)
            positive_int("max_draft_length", self.max_draft_length)
            if not isinstance(self.adaptive, bool):
                raise ValueError(f"adaptive must be True or False, got {self.adaptive!r}")
            if self.dtype is not None and self.dtype not in _DTYPES:
                raise ValueError(f"dtype must be None or one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    # ----------------------------------------------------------------- set-up
    def resolve(self, lm) -> tuple[Any, Any]:
        """The causal model and its tokenizer, checked against the diffusion model's tokenizer."""
        prm = self.params
        dtype = _DTYPES.get(prm.dtype) if prm.dtype else None
        target = prm.verifier
        if target is None:
            from ..assets import default_verifier_path

            try:
                target = default_verifier_path()
            except CheckpointError as exc:
                raise CheckpointError(f"verify='causal' needs a causal verifier model and none was given; the "
                                      f"default is the bundled dlm-tiny-ar, which is not available: {exc}. Pass "
                                      "verify_kwargs={'verifier': '/path/to/causal-lm'}") from exc
        if isinstance(target, (str, Path)):
            model, tok = load_causal(target, dtype, lm.device)
        else:
            model, tok = target, None
            if dtype is not None:
                model = model.to(dtype)
        if prm.tokenizer is not None:
            if isinstance(prm.tokenizer, (str, Path)):
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(prm.tokenizer), trust_remote_code=False)
            else:
                tok = prm.tokenizer
        if tok is None:
            raise ConfigError("verify='causal' with a model object needs its tokenizer too (tokenizer=...), so that "
                              "the two models' vocabularies can be compared")
        if lm.tokenizer is None:
            raise ConfigError("verify='causal' needs the diffusion model's tokenizer to check that both models "
                              "share it; load the diffusion model with a tokenizer")
        diffs = tokenizer_differences(lm.tokenizer, tok)
        if diffs:
            raise ConfigError("verify='causal' needs a verifier that shares the diffusion model's tokenizer; they "
                              "differ: " + "; ".join(diffs))
        if getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"the verifier {type(model).__name__} is an encoder-decoder; a decoder-only causal "
                              "LM is needed")
        return model.eval(), tok

    @staticmethod
    def stop_ids(model, tok, config: GenerationConfig) -> list[int]:
        """Tokens that end the causal model's answer: ``stop_token_ids`` if set, else the EOS ids its
        ``generate`` stops at (generation config, then model config, then tokenizer)."""
        if config.stop_token_ids is not None:
            return list(config.stop_token_ids)
        gc = getattr(model, "generation_config", None)
        for value in (getattr(gc, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                      getattr(tok, "eos_token_id", None)):
            if token_ids(value):
                return token_ids(value)
        return []

    def check(self, config: GenerationConfig) -> None:
        if config.eotp:
            raise ConfigError("verify='causal' does not support eotp=True; the causal model decides where the "
                              "answer ends (stop_at_eos)")

    def reference_config(self, config: GenerationConfig) -> GenerationConfig:
        """The request runs with the drafting config; its answer is the causal model's (see the module doc)."""
        return config.replace(verify=None, verify_kwargs={})

    def driver(self, lm):
        from .causal_driver import CausalDriver

        model, tok = self.resolve(lm)
        return CausalDriver(self, model, tok)

    # ----------------------------------------------------------------- drafting
    @staticmethod
    def greedy_drafts(logits: torch.Tensor, lm, eos_inf: torch.Tensor | None) -> torch.Tensor:
        """The temperature-0 drafts of many positions at once, (N,) long, from their logits (N, V): row i's
        ``draft_distribution(logits[i:i+1], lm, config_i).argmax(-1)`` for a config at temperature 0, whose
        ``logits_eos_inf`` is ``eos_inf[i]`` ((N,) bool on the logits' device; None: False everywhere). One
        argmax over every row instead of one distribution per request (the causal driver's batched path)."""
        raw = logits.index_fill(-1, torch.tensor([lm.ids.mask_id], device=logits.device), float("-inf"))
        if eos_inf is not None:
            raw[:, lm.ids.eos_id].masked_fill_(eos_inf, float("-inf"))
        return raw.argmax(-1)

    def draft_distribution(self, logits: torch.Tensor, lm, config: GenerationConfig,
                           mode: str = "gumbel") -> torch.Tensor:
        """The drafter's token distribution per position, (n, V) float64, from its logits (n, V): the
        generation's temperature, top-k/top-p (in the order of the sampling family ``mode``, see
        :mod:`dlm.sampling`), ``logits_eos_inf``, and never the mask token."""
        raw = logits.double().clone()
        if config.logits_eos_inf:
            raw[:, lm.ids.eos_id] = float("-inf")
        raw[:, lm.ids.mask_id] = float("-inf")
        T = config.temperature
        if T == 0:
            return torch.nn.functional.one_hot(raw.argmax(-1), raw.shape[-1]).double()
        if mode == "gumbel":  # LLaDA: filters read the untempered logits; argmax(l + T * gumbel) ~ softmax(l / T)
            if config.top_p is not None and config.top_p < 1:
                raw = top_p_filter(raw, config.top_p)
            if config.top_k is not None:
                raw = top_k_filter(raw, config.top_k)
            return torch.softmax(raw / T, -1)
        proc = raw / T
        if mode == "multinomial" and config.top_k is not None:  # the block samplers filter top-k first
            proc = top_k_filter(proc, config.top_k)
        if config.top_p is not None and config.top_p < 1:
            proc = top_p_filter(proc, config.top_p)
        if mode == "categorical" and config.top_k is not None:
            proc = top_k_filter(proc, config.top_k)
        return torch.softmax(proc, -1)
