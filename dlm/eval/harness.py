"""The lm-eval model ``dlm``: a :class:`lm_eval.api.model.LM` over :func:`dlm.load` and ``DiffusionLM.generate``.

    lm_eval --model dlm --model_args pretrained=PATH,scheduler=threshold,scheduler.threshold=0.9 --tasks gsm8k
    python -m dlm.eval run --model dlm ...   (the same, for lm-eval releases that do not load entry points)
    dlm eval --model PATH --tasks gsm8k --scheduler threshold --cache dual

model_args: :mod:`dlm.eval.args`. generate_until: :mod:`dlm.eval.generation`. loglikelihood:
:mod:`dlm.eval.likelihood`. Speed (NFE per generated token, tokens/s, wall time) and the generation config are
returned by :meth:`DLMEvalLM.get_model_info`, which lm-eval stores under ``results["config"]["dlm"]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm.auto import tqdm

from ..errors import ConfigError
from .args import EvalSettings, parse_model_args
from .generation import (DEFAULT_MAX_GEN_TOKS, Request, fit_prompt, generate_all, single_token_ids, stop_strings,
                         warn_ignored)
from .likelihood import LikelihoodCounters, greedy_matches, mc_loglikelihood
from .report import speed_report

log = logging.getLogger("dlm.eval")


@register_model("dlm")
class DLMEvalLM(LM):
    """lm-eval model for masked-diffusion checkpoints loaded by dlm (LLaDA, Dream and their formats).

    Args:
        **model_args: see :mod:`dlm.eval.args` (``pretrained``, GenerationConfig fields, ``mc_num``, ...).
        lm: an already loaded :class:`~dlm.api.DiffusionLM` (Python API only; then ``pretrained`` and the other
            loading arguments must not be given).
    """

    def __init__(self, lm=None, **model_args: Any):
        super().__init__()
        self.settings: EvalSettings = parse_model_args(model_args)
        if lm is None:
            from ..api import load

            lm = load(**available_device(self.settings.load))
        elif any(v is not None for v in self.settings.load.values()):
            raise ConfigError("pass either a loaded model (lm=...) or loading model_args (pretrained, dtype, "
                              "device, ...), not both")
        elif self.settings.data_parallel is not None:
            raise ConfigError("data_parallel loads its replicas from a checkpoint folder: give pretrained=PATH "
                              "instead of a loaded model")
        if lm.tokenizer is None:
            raise ConfigError("lm-eval passes text; load the model with its tokenizer")
        self.lm = lm
        self.pool = replica_pool(self.settings)
        self._device = lm.device
        self._chat_applied = False
        self.generation = {}  # task -> GenerationCounters
        self.likelihood = LikelihoodCounters()
        self._ignored: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "DLMEvalLM":
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "DLMEvalLM":
        """lm-eval adds its own ``batch_size``, ``max_batch_size`` and ``device`` (``cuda:0`` by default) to the
        model_args; a model_arg of the same name wins."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # ----------------------------------------------------------------- chat templates (lm-eval's option)
    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.lm.tokenizer, "name_or_path", "") or self.lm.path or "dlm").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.lm.tokenizer, "chat_template", None) or None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template():
            raise ConfigError("--apply_chat_template needs a tokenizer with a chat template; this one has none")
        if self.settings.generation.get("chat_template"):
            raise ConfigError("the prompt would be wrapped in the chat template twice: use lm-eval's "
                              "--apply_chat_template or the chat_template model_arg, not both")
        self._chat_applied = True
        return self.lm.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt,
                                                     continue_final_message=not add_generation_prompt)

    def _encode(self, text: str) -> list[int]:
        """Prompt tokens: lm-eval's chat rendering already holds the special tokens; dlm's own ``chat_template``
        wraps the text as one user turn; otherwise the tokenizer's defaults (BOS)."""
        if self._chat_applied:
            return list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = self.lm.encode([text], chat_template=bool(self.settings.generation.get("chat_template")))[0]
        return self._bos(ids)

    def _bos(self, ids: list[int]) -> list[int]:
        """``ids`` starting with BOS when ``add_bos_token`` asks for it (Dream's tokenizer adds none)."""
        bos = self.lm.ids.bos_id
        if not self.settings.add_bos_token or (ids and ids[0] == bos):
            return ids
        if bos is None:
            raise ConfigError("add_bos_token=true but this model has no BOS token")
        return [bos, *ids]

    # ----------------------------------------------------------------- generate_until
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        reqs = []
        for i, inst in enumerate(requests):
            context, gen_kwargs = inst.args[0], dict(inst.args[1] or {})
            warn_ignored(gen_kwargs, self._ignored)
            until = [] if self.settings.ignore_until else stop_strings(gen_kwargs)
            gen_length = self.settings.gen_length_for(gen_kwargs.get("max_gen_toks") or DEFAULT_MAX_GEN_TOKS)
            ids, cut = fit_prompt(self._encode(context), gen_length, self.lm.max_length)
            stop_ids = single_token_ids(self.lm.tokenizer, until) if self.settings.stop_strings_as_tokens else ()
            reqs.append(Request(i, ids, until, gen_length, stop_ids, inst.task_name or "", cut))
        texts = generate_all(self.lm, self.settings, reqs, self.generation, self.pool)
        for inst, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", inst.args, text)
        return texts

    # ----------------------------------------------------------------- loglikelihood
    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(prefix, target) tokens the way lm-eval and LLaDA split them: trailing spaces of the context move to
        the continuation; the target is what encoding the joined text adds after the context's tokens."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        special = not self._chat_applied
        tok = self.lm.tokenizer
        whole = list(tok(context + continuation, add_special_tokens=special)["input_ids"])
        prefix = list(tok(context, add_special_tokens=special)["input_ids"])
        return self._with_start(self._bos(prefix) if special else prefix), whole[len(prefix):]

    def _with_start(self, prefix: list[int]) -> list[int]:
        """A shifted model (Dream) predicts token i from i-1, so an empty prefix gets a start token."""
        if prefix or not self.lm.logits_shift:
            return prefix
        start = self.lm.ids.bos_id if self.lm.ids.bos_id is not None else self.lm.ids.eos_id
        return [start]

    def _score(self, prefix: list[int], target: list[int]) -> float:
        if len(target) >= self.lm.max_length:
            raise ConfigError(f"a continuation of {len(target)} tokens does not fit the model's context of "
                              f"{self.lm.max_length}")
        prefix = prefix[max(0, len(prefix) + len(target) - self.lm.max_length):]
        s = self.settings
        cfg = float(s.generation.get("cfg_scale") or 0.0)
        seed = s.generation.get("seed")
        return mc_loglikelihood(self.lm, prefix, target, mc_num=s.mc_num, mc_batch_size=s.mc_batch_size,
                                cfg_scale=cfg, seed=0 if seed is None else seed, counters=self.likelihood)

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        t0 = time.perf_counter()
        for inst in tqdm(requests, desc="dlm loglikelihood", disable=disable_tqdm):
            prefix, target = self._encode_pair(*inst.args)
            ll = self._score(prefix, target)
            greedy = False
            if self.settings.check_greedy:
                cfg = float(self.settings.generation.get("cfg_scale") or 0.0)
                greedy = greedy_matches(self.lm, prefix, target, cfg)
            out.append((ll, greedy))
            self.cache_hook.add_partial("loglikelihood", inst.args, (ll, greedy))
        self.likelihood.seconds += time.perf_counter() - t0
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Sum of the Monte Carlo estimates over lm-eval's disjoint rolling windows (each window's tokens scored
        given the tokens before it, up to the model's context). An evidence lower bound in expectation: the
        perplexities it gives are upper bounds, like those reported for LLaDA."""
        ids = self.lm.ids
        start = ids.bos_id if ids.bos_id is not None else ids.eos_id
        out = []
        t0 = time.perf_counter()
        for inst in tqdm(requests, desc="dlm loglikelihood_rolling", disable=disable_tqdm):
            tokens = list(self.lm.tokenizer(inst.args[0], add_special_tokens=False)["input_ids"])
            windows = get_rolling_token_windows(tokens, start, self.lm.max_length, 1)
            total = sum(self._score(list(ctx), list(pred)) for ctx, pred in map(make_disjoint_window, windows))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", inst.args, total)
        self.likelihood.seconds += time.perf_counter() - t0
        return out

    # ----------------------------------------------------------------- what lm-eval stores with the results
    def speed(self) -> dict[str, Any]:
        return speed_report(self.generation, self.likelihood, self.settings)

    def get_model_info(self) -> dict[str, Any]:
        from .report import model_info

        return {"dlm": model_info(self.lm, self.settings, self.speed())}


def replica_pool(settings: EvalSettings):
    """The :class:`dlm.parallel.ReplicaPool` of ``settings.data_parallel`` (closed when the process exits), or
    None. Generation runs on the replicas; likelihoods on the model of this process."""
    if settings.data_parallel is None:
        return None
    import atexit

    from ..parallel.data import ReplicaPool, replica_devices

    load = dict(settings.load)
    path, device = load.pop("path", None), load.pop("device", None)
    pool = ReplicaPool.from_path(path, replica_devices(settings.data_parallel, device), **load)
    atexit.register(pool.close)
    return pool


def available_device(load_args: dict[str, Any]) -> dict[str, Any]:
    """``load_args`` with a CUDA device replaced by the CPU when no GPU is visible (lm-eval's command asks for
    ``cuda:0`` unless told otherwise), with a warning."""
    import torch

    device = load_args.get("device")
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("dlm: device %s asked for but no CUDA device is available; running on the CPU", device)
        return {**load_args, "device": "cpu"}
    return dict(load_args)


__all__ = ["DLMEvalLM", "available_device"]
