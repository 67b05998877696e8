"""The scale runner on the CPU's tiny geometry: a cache given as NAME:key=value reaches the policy."""

from __future__ import annotations

import pytest
import torch

from dlm.bench import scale
from dlm.bench.scale import random_lm, sustained_matmul_rate, time_config
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


def test_defaults_table_compares_the_default_with_the_fastest():
    from dlm.bench.scale import defaults_table

    def row(cache, graphs, fused, ms, batch=1):
        return {"arch": "a", "batch": batch, "gen_length": 256, "cache": cache, "graphs": graphs, "fused": fused,
                "ms_per_step": ms}

    rows = [row("dual", True, True, 10.0), row("dual", True, False, 9.0), row("dual", False, False, 20.0),
            row("prefix", True, True, 30.0), row("prefix", False, True, 40.0),
            row("none", False, False, 5.0)]  # the default not measured: no line
    lines = defaults_table(rows).splitlines()[2:]
    assert lines == ["| a | 1 | 256 | dual | 10.00 | graphs 9.00 | 1.111 | 2.00 |",
                     "| a | 1 | 256 | prefix | 30.00 | graphs + fused 30.00 | 1.000 | - |"]


def test_warm_shapes_runs_each_option_set_once_untimed_in_the_engine_it_times(monkeypatch):
    import dlm.bench.scale as scale

    calls = []
    real = scale.time_config

    def counting(lm, **kw):
        out = real(lm, **kw)
        calls.append((kw["cache"], bool(lm.cuda_graphs), lm.model.ops.fused, kw.get("bandwidth", 1.0) != 1.0,
                      lm._engine))  # the engine the run used (kept alive here, so `is` compares objects)
        return out

    monkeypatch.setattr(scale, "time_config", counting)
    rows = scale.run(["llada-tiny"], [1], [256], ["prefix"], [True, False], None, tokens_per_step=8, device="cpu",
                     fused_modes=(False,), warm_shapes=True)
    assert len(rows) == 2
    # per option set: one untimed run, then the timed one with the same options in the same engine
    assert [c[1:4] for c in calls] == [(True, False, False), (True, False, True),
                                       (False, False, False), (False, False, True)]
    assert calls[0][4] is calls[1][4] and calls[2][4] is calls[3][4] and calls[0][4] is not calls[2][4]
    calls.clear()  # --warm-shapes 2: two untimed runs, then the timed one, all in one engine
    scale.run(["llada-tiny"], [1], [256], ["prefix"], [False], None, tokens_per_step=8, device="cpu",
              fused_modes=(False,), warm_shapes=2)
    assert [c[3] for c in calls] == [False, False, True] and calls[0][4] is calls[1][4] is calls[2][4]


def test_sustained_rate_is_the_flops_of_the_products_over_the_time_they_took(monkeypatch):
    clock = iter([10.0, 10.2, 10.5])  # two rounds of 8 products, the second ending past 0.4 s
    monkeypatch.setattr(scale.time, "perf_counter", lambda: next(clock))
    rate = sustained_matmul_rate("cpu", 0.4, n=16)
    assert rate == pytest.approx(2 * 16**3 * 16 / 0.5)
