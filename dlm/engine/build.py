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
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        rid, self._next_id = self._next_id, self._next_id + 1
        return Request(
            id=rid, prompt_ids=list(prompt_ids), config=config, layout=Layout.semi_autoregressive(len(prompt_ids), config),
            scheduler=scheduler, policy=cache_mod.create(config.cache, dict(config.cache_kwargs)),
            mode=scheduler.sampling if config.sampling == "auto" else config.sampling,
            measures=frozenset(scheduler.measures),
            stop_ids=tuple(config.stop_token_ids) if config.stop_token_ids is not None else lm.ids.stop_ids,
            full_region=bool(scheduler.full_region or (config.eotp and config.eotp_threshold is not None)),
            scheduler_key=key, copies=2 if config.cfg_scale > 0 else 1, tag=tag,
            generator=torch.Generator(device=lm.device).manual_seed(seed % 2**64), mask_id=lm.ids.mask_id,
            driver=driver,
        )


def check_prompt(lm, p: list[int], config: GenerationConfig, name: str = "the prompt") -> None:
    if lm.logits_shift and len(p) == 0:
        raise ConfigError(f"{name} is empty; {lm.model_type} predicts token i from position i-1, so a prompt "
                          "needs at least one token (e.g. BOS)")
    if len(p) + config.gen_length > lm.max_length:
        raise ConfigError(f"{name} has {len(p)} tokens; with gen_length={config.gen_length} the canvas needs "
                          f"{len(p) + config.gen_length} positions but the model's context is {lm.max_length}")
