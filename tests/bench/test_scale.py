"""The scale runner on the CPU's tiny geometry: a cache given as NAME:key=value reaches the policy."""

from __future__ import annotations

import pytest
import torch

from dlm.bench.scale import random_lm, time_config
from dlm.errors import ConfigError


def test_cache_parameters_reach_the_policy():
    lm = random_lm("llada-tiny", device="cpu", dtype=torch.float32)
    kw = {"batch": 1, "gen_length": 256, "block_length": 32, "tokens_per_step": 8, "prompt_length": 16}
    exact = time_config(lm, cache="dual", **kw)
    cheap = time_config(lm, cache="dual:refresh_from=last_block", **kw)
    assert cheap.cache == "dual:refresh_from=last_block"
    assert cheap.fed_per_step < exact.fed_per_step  # the refreshes of the timed blocks feed less
    with pytest.raises(ConfigError, match="refresh_from must be one of"):
        time_config(lm, cache="dual:refresh_from=all", **kw)
