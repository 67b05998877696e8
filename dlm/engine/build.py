"""Building a request: its components (scheduler, cache policy, generator), geometry and checks."""

from __future__ import annotations

import json
from typing import Any

import torch

from .. import cache as cache_mod
from .. import schedulers as sched_mod
from ..config import GenerationConfig
from ..errors import ConfigError
from .request import Layout, Request


class RequestBuilder:
    """Builds :class:`Request` objects for one model; scheduler objects (stateless) are shared by configuration."""

    def __init__(self, lm):
        self.lm = lm
        self._schedulers: dict[str, Any] = {}
        self._next_id = 0

    def reset(self) -> None:
        """Build new scheduler objects from now on (request ids keep counting)."""
        self._schedulers.clear()

    def scheduler(self, config: GenerationConfig) -> tuple[str, Any]:
        key = json.dumps([config.scheduler, dict(config.scheduler_kwargs)], sort_keys=True)
        if key not in self._schedulers:
            self._schedulers[key] = sched_mod.create(config.scheduler, dict(config.scheduler_kwargs))
        return key, self._schedulers[key]

    def build(self, prompt_ids: list[int], config: GenerationConfig, *, tag: Any = None, driver=None,
              name: str = "the prompt") -> Request:
        """A checked request for ``prompt_ids`` decoded with ``config`` (a driver decides its steps if given);
        ``name`` is how error messages call the prompt (e.g. "prompt 3")."""
        lm = self.lm
        check_prompt(lm, prompt_ids, config, name)
        if driver is not None:
            driver.check_prompt(prompt_ids, config, name)
        key, scheduler = self.scheduler(config)
        if scheduler.edits and config.eotp:
            raise ConfigError(f"eotp=True does not combine with the editing scheduler {config.scheduler!r}: an edit "
                              "may change a token after end-of-text was predicted from it; use stop_at_eos")
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        rid, self._next_id = self._next_id, self._next_id + 1
        block = lm.block_size
        if block is None:
            layout = Layout.semi_autoregressive(len(prompt_ids), config)
        else:
            layout = Layout.block_aligned(len(prompt_ids), config, config.effective_block_length)
        return Request(
            id=rid, prompt_ids=list(prompt_ids), config=config, layout=layout,
            scheduler=scheduler, policy=cache_mod.create(config.cache, dict(config.cache_kwargs)),
            mode=scheduler.sampling if config.sampling == "auto" else config.sampling,
            measures=frozenset(scheduler.measures),
            stop_ids=tuple(config.stop_token_ids) if config.stop_token_ids is not None else lm.ids.stop_ids,
            full_region=bool(scheduler.full_region or (config.eotp and config.eotp_threshold is not None)),
            scheduler_key=key, copies=2 if config.cfg_scale > 0 else 1, tag=tag,
            generator=torch.Generator(device=lm.device).manual_seed(seed % 2**64), mask_id=lm.ids.mask_id,
            driver=driver,
        )


def canvas_length(lm, prompt_len: int, config: GenerationConfig) -> int:
    """Canvas positions a request needs: prompt + answer, up to the end of the answer's last block for a
    block-diffusion model."""
    need = prompt_len + config.gen_length
    if lm.block_size is not None:
        block = config.effective_block_length
        need = -(-need // block) * block
    return need


def check_prompt(lm, p: list[int], config: GenerationConfig, name: str = "the prompt") -> None:
    if lm.logits_shift and len(p) == 0:
        raise ConfigError(f"{name} is empty; {lm.model_type} predicts token i from position i-1, so a prompt "
                          "needs at least one token (e.g. BOS)")
    need = canvas_length(lm, len(p), config)
    if need > lm.max_length:
        raise ConfigError(f"{name} has {len(p)} tokens; with gen_length={config.gen_length} the canvas needs "
                          f"{need} positions but the model's context is {lm.max_length}")
    if lm.block_size is not None and config.cfg_scale > 0:
        raise ConfigError(f"cfg_scale={config.cfg_scale}: classifier-free guidance is not supported for the "
                          f"block-diffusion model {lm.model_type}; use cfg_scale=0")
