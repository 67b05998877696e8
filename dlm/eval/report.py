"""What an evaluation reports beside lm-eval's accuracy: speed, the exact generation config, the model.

Speed of ``generate_until`` (same definitions as ``dlm bench``):

* ``generated_tokens``: per answer, the tokens up to and including its first stop token, else gen_length (the
  EOS padding after an answer is not output);
* ``nfe``: forward passes each request took part in (``GenerationOutput.nfe``; a classifier-free-guidance step
  counts 2); ``nfe_per_token`` = nfe / generated_tokens;
* ``wall_s``: seconds spent in ``model.generate`` (tokenisation and lm-eval's own work excluded; CUDA synchronised);
  ``tokens_per_s`` = generated_tokens / wall_s.

Likelihood requests report their forward passes, rows (Monte Carlo samples, doubled under CFG) and seconds.
"""

from __future__ import annotations

from typing import Any

from .args import EvalSettings
from .generation import GenerationCounters
from .likelihood import LikelihoodCounters


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def generation_summary(c: GenerationCounters) -> dict[str, Any]:
    return {
        "requests": c.requests, "generated_tokens": c.generated_tokens, "nfe": c.nfe,
        "nfe_per_token": _ratio(c.nfe, c.generated_tokens), "tokens_per_s": _ratio(c.generated_tokens, c.seconds),
        "wall_s": c.seconds, "truncated_prompts": c.truncated_prompts,
        "gen_lengths": {str(k): v for k, v in sorted(c.gen_lengths.items())},
    }


def speed_report(per_task: dict[str, GenerationCounters], ll: LikelihoodCounters,
                 settings: EvalSettings) -> dict[str, Any]:
    """``{"generate_until": totals, "generate_until_per_task": {task: ...}, "loglikelihood": ...}`` (sections
    without requests are omitted)."""
    out: dict[str, Any] = {}
    if per_task:
        total = GenerationCounters()
        for c in per_task.values():
            total.add(c)
        out["generate_until"] = generation_summary(total)
        out["generate_until_per_task"] = {t: generation_summary(c) for t, c in sorted(per_task.items())}
    if ll.forwards:
        out["loglikelihood"] = {"forwards": ll.forwards, "rows": ll.rows, "wall_s": ll.seconds,
                                "mc_num": settings.mc_num, "mc_batch_size": min(settings.mc_batch_size,
                                                                                 settings.mc_num)}
    return out


def generation_config(settings: EvalSettings) -> dict[str, Any]:
    """The GenerationConfig as a JSON object that ``dlm eval --config`` accepts: every field, resolved defaults
    included; without ``gen_length`` when it was not fixed (each task's max_gen_toks then decides it again)."""
    d = settings.config(settings.gen_length_for(1)).to_dict()
    if settings.fixed_gen_length is None:
        d.pop("gen_length")
    return d


def model_info(lm, settings: EvalSettings, speed: dict[str, Any]) -> dict[str, Any]:
    """The ``dlm`` section lm-eval stores in ``results["config"]``."""
    import dlm

    return {
        "dlm_version": dlm.__version__,
        "model": str(lm.path) if lm.path is not None else None,
        "model_type": lm.model_type,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "device": str(lm.device),
        "generation_config": generation_config(settings),
        "gen_length_rule": ("fixed by the gen_length model_arg" if settings.fixed_gen_length is not None else
                            "each task's max_gen_toks rounded up to a multiple of the block length"),
        "batch_size": settings.batch_size,
        "likelihood": {"mc_num": settings.mc_num, "mc_batch_size": settings.mc_batch_size,
                       "check_greedy": settings.check_greedy},
        "prompts": {"add_bos_token": settings.add_bos_token, "stop_strings_as_tokens": settings.stop_strings_as_tokens,
                    "ignore_until": settings.ignore_until},
        "speed": speed,
    }


__all__ = ["generation_config", "generation_summary", "model_info", "speed_report"]
