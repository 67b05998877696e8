"""``dlm train-filter``'s pipeline: collected data is reused only when it fits, and every setting is checked
before the (long) collection starts."""

from __future__ import annotations

from unittest import mock

import pytest

import dlm
from dlm.train.filter import pipeline
from dlm.train.filter.collect import data_fingerprint
from dlm.train.filter.dataset import FilterData
from dlm.train.filter.fit import TrainSettings
from dlm.train.filter.prompts import Prompt


def test_data_dir_is_reused_only_for_the_same_model_prompts_and_block(tiny_llada, tmp_path):
    a = [Prompt(ids=(72, 105), gen_length=8), Prompt(ids=(33,), gen_length=8)]
    b = [Prompt(ids=(72, 105), gen_length=16), Prompt(ids=(34,), gen_length=16)]  # as many prompts as a
    fa = data_fingerprint(tiny_llada, a, 8)
    assert fa == data_fingerprint(tiny_llada, list(a), 8)
    assert fa != data_fingerprint(tiny_llada, b, 8) and fa != data_fingerprint(tiny_llada, a, 4)
    logs: list[str] = []
    kw = dict(features=("confidence",), hidden=(4,), block_length=8, settings=TrainSettings(epochs=1),
              threshold=0.9, data_dir=tmp_path / "d", log=logs.append)
    pipeline.run(tiny_llada, a, a, tmp_path / "f.safetensors", **kw)
    assert not any("reusing" in line for line in logs)
    pipeline.run(tiny_llada, a, a, tmp_path / "f.safetensors", **kw)
    assert sum("reusing" in line for line in logs) == 2  # train and val
    pipeline.run(tiny_llada, b, b, tmp_path / "f.safetensors", **kw)
    assert sum("collecting anew" in line for line in logs) == 2
    saved = FilterData.load(tmp_path / "d" / "train.safetensors")
    assert saved.fingerprint == data_fingerprint(tiny_llada, b, 8)
    assert len(saved.references[0]) == 16  # b's answers, not a's


@pytest.mark.parametrize("changes,match", [
    ({"threshold": 1.5}, "threshold must be"),
    ({"grid": (0.5, 2.0)}, "threshold must be"),
    ({"arch": "rnn"}, "arch must be"),
    ({"features": ("colour",)}, "features must be"),
    ({"settings": TrainSettings(epochs=0)}, "epochs must be"),
])
def test_bad_settings_fail_before_collection(tiny_llada, tmp_path, changes, match):
    logs: list[str] = []
    prompts = [Prompt(ids=(72, 105), gen_length=8)]
    with mock.patch.object(pipeline, "collect", side_effect=AssertionError("collection must not start")):
        with pytest.raises(dlm.ConfigError, match=match):
            pipeline.run(tiny_llada, prompts, prompts, tmp_path / "f.safetensors", block_length=8, log=logs.append,
                  **changes)
    assert logs == []
