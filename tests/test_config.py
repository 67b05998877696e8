"""GenerationConfig validation: misspelt fields name the closest one, values out of range are ConfigErrors."""

from __future__ import annotations

import pytest
import torch

from dlm import GenerationConfig
from dlm.config import MAX_SEED
from dlm.errors import ConfigError


def test_misspelt_override_names_the_closest_field(llada):
    with pytest.raises(ConfigError, match=r"unknown GenerationConfig field\(s\): 'gen_lenght' \(did you mean "
                                          r"'gen_length'\?\)"):
        GenerationConfig().replace(gen_lenght=8)
    with pytest.raises(ConfigError, match=r"'temprature' \(did you mean 'temperature'\?\)"):
        llada.generate([[1, 2]], gen_length=8, temprature=0.5)  # keyword overrides go through replace()
    with pytest.raises(ConfigError, match=r"'shceduler' \(did you mean 'scheduler'\?\), 'zzz'; known: "):
        GenerationConfig.from_dict({"shceduler": "x", "zzz": 1})


def test_files_that_are_not_objects():
    with pytest.raises(ConfigError, match="read from a JSON object of fields; got list"):
        GenerationConfig.from_dict([1, 2])
    with pytest.raises(ConfigError, match="must be a JSON object of fields"):
        GenerationConfig.from_json("{oops")


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 2**64}, r"seed must be <= 2\*\*64 - 1"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"temperature": float("inf")}, "temperature must be a finite number, got inf"),
    ({"cfg_scale": float("inf")}, "cfg_scale must be a finite number, got inf"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"top_p": float("inf")}, "top_p must be a finite number"),
])
def test_values_out_of_range(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GenerationConfig(**kwargs)


def test_edges_that_are_allowed():
    assert GenerationConfig(top_k=0).top_k == 0  # explicitly off (None: unset, resolved per model)
    torch.Generator().manual_seed(GenerationConfig(seed=MAX_SEED).seed)  # the largest seed torch accepts
