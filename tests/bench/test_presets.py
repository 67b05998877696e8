"""Named methods and suites: what each preset decodes with, the reference always first."""

from __future__ import annotations

import pytest

from dlm.bench import presets
from dlm.bench.methods import REFERENCE
from dlm.bench.presets import BEST, NAMED, Suite
from dlm.errors import ConfigError


def test_named_presets_resolve():
    assert set(NAMED) == {REFERENCE, "fast-dllm", "dkv", "prophet", "learn2pd", "lossless-stepwise",
                          "lossless-causal", "best"}
    assert dict(presets.named("best").fields) == BEST
    cfg = NAMED[REFERENCE].config(32, 32, 0)
    assert (cfg.scheduler, cfg.cache, cfg.effective_steps, cfg.verify) == ("low_confidence", "none", 32, None)
    cfg = NAMED["fast-dllm"].config(64, 32, 0)
    assert (cfg.scheduler, dict(cfg.scheduler_kwargs), cfg.cache) == ("threshold", {"threshold": 0.9}, "dual")
    assert NAMED["dkv"].config(32, 32, 0).cache == "delayed"
    assert NAMED["prophet"].config(32, 32, 0).scheduler == "early_commit"
    assert NAMED["lossless-stepwise"].fields["verify"] == "stepwise"
    assert NAMED["lossless-causal"].fields["verify"] == "causal"
    with pytest.raises(ConfigError, match="known: llada-reference"):
        presets.named("nope")


def test_reference_always_first():
    s = Suite(methods=(NAMED["best"],))
    assert [m.name for m in s.with_reference()] == [REFERENCE, "best"]
    s = Suite(methods=(NAMED["best"], NAMED[REFERENCE]))
    assert [m.name for m in s.with_reference()] == [REFERENCE, "best"]
    assert set(presets.SUITES) == {"quick", "full", "stress"}
    assert {m.name for m in presets.SUITES["quick"].methods} == set(NAMED)
