"""Methods: their fields are validated, and the text specs of grids parse."""

from __future__ import annotations

import pytest

from dlm.bench import methods
from dlm.bench.methods import Method
from dlm.errors import ConfigError


def test_method_fields_are_validated():
    with pytest.raises(ConfigError, match="gen_length"):
        Method("m", {"gen_length": 32})
    with pytest.raises(ConfigError, match="unknown field"):
        Method("m", {"schedular": "threshold"})
    m = Method("m", {"scheduler": "low_confidence", "tokens_per_step": 4})
    assert m.config(64, 32, 0).effective_steps == 16
    with pytest.raises(ConfigError, match="tokens_per_step"):
        m.config(30, None, 0)


def test_component_specs():
    pc = methods.parse_component
    assert pc("threshold", "s") == ("threshold", {}, {})
    assert pc("threshold:threshold=0.8", "s") == ("threshold", {"threshold": 0.8}, {})
    assert pc('early_commit:{"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}', "s") == (
        "early_commit", {"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}, {})
    assert pc({"name": "low_confidence", "tokens_per_step": 2}, "s") == ("low_confidence", {}, {"tokens_per_step": 2})
    assert pc(None, "v") == (None, {}, {})
    with pytest.raises(ConfigError):
        pc("threshold:threshold", "s")
