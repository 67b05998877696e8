"""model_args of the lm-eval model ``dlm``: types, dotted parameters, and clear errors before anything loads."""

from __future__ import annotations

import pytest

from dlm.errors import ConfigError, DlmError
from dlm.eval.args import allowed_args, parse_model_args


def test_values_are_cast_to_the_field_types():
    s = parse_model_args({"gen_length": "64", "block_length": 32, "steps": "16", "temperature": "0.5",
                          "eotp": "true", "verify": "none", "stop_token_ids": "[0, 2]", "mc_num": "64",
                          "mc_batch_size": 16, "batch_size": "8", "check_greedy": "false"})
    c = s.config()
    assert (c.gen_length, c.block_length, c.steps, c.temperature, c.eotp, c.verify) == (64, 32, 16, 0.5, True, None)
    assert c.stop_token_ids == (0, 2)
    assert (s.mc_num, s.mc_batch_size, s.batch_size, s.check_greedy) == (64, 16, 8, False)


def test_dotted_parameters_and_json_mappings_reach_the_config():
    s = parse_model_args({"scheduler": "threshold", "scheduler.threshold": "0.8", "cache": "delayed",
                          "cache_kwargs": '{"refresh_every": 4}'})
    c = s.config(32)
    assert c.scheduler == "threshold" and dict(c.scheduler_kwargs) == {"threshold": 0.8}
    assert c.cache == "delayed" and dict(c.cache_kwargs) == {"refresh_every": 4}
    # a dotted key adds to a JSON mapping given beside it
    s = parse_model_args({"scheduler": "threshold", "scheduler_kwargs": {"threshold": 0.7},
                          "scheduler.threshold": 0.95})
    assert dict(s.config(32).scheduler_kwargs) == {"threshold": 0.95}


def test_loading_arguments_are_kept_apart():
    s = parse_model_args({"pretrained": "/some/path", "device": "cpu", "dtype": "float32", "fused_kernels": "false",
                          "max_batch_size": 64})
    assert s.load == {"path": "/some/path", "device": "cpu", "dtype": "float32", "fused_kernels": False}
    assert s.generation == {}


@pytest.mark.parametrize("gen_length, block, max_gen_toks, expected", [
    (None, None, 256, 256), (None, None, 100, 128), (None, 8, 100, 104), (None, None, 1, 32), (64, None, 1000, 64),
])
def test_answer_length_rule(gen_length, block, max_gen_toks, expected):
    args = {k: v for k, v in (("gen_length", gen_length), ("block_length", block)) if v is not None}
    s = parse_model_args(args)
    assert s.gen_length_for(max_gen_toks) == expected
    s.config(s.gen_length_for(max_gen_toks))  # always a valid config


@pytest.mark.parametrize("args, words", [
    ({"bogus": 1}, ["unknown model_arg 'bogus'", "allowed:", "scheduler", "mc_num", "pretrained"]),
    ({"schedular": "threshold"}, ["unknown model_arg 'schedular'"]),
    ({"gen_length": "long"}, ["gen_length", "'long'", "integer"]),
    ({"temperature": "hot"}, ["temperature", "number"]),
    ({"eotp": "maybe"}, ["eotp", "true or false"]),
    ({"scheduler_kwargs": "{bad json"}, ["scheduler_kwargs", "JSON", "scheduler.<param>"]),
    ({"batch_size": "auto"}, ["batch_size", "'auto' is not supported"]),
    ({"mc_num": 100, "mc_batch_size": 32}, ["mc_num=100", "multiple of mc_batch_size=32"]),
    ({"steps": 8}, ["steps", "gen_length"]),
    ({"gen_length": 40, "block_length": 32}, ["gen_length (40)", "block_length (32)"]),
    ({"scheduler": "no_such_scheduler"}, ["no_such_scheduler", "threshold"]),
    ({"scheduler": "threshold", "scheduler.no_such_param": 1}, ["no_such_param"]),
    ({"cache": "no_such_cache"}, ["no_such_cache", "dual"]),
    ({"verify": "no_such_verifier"}, ["no_such_verifier", "stepwise"]),
])
def test_bad_model_args_fail_with_a_clear_message(args, words):
    with pytest.raises(DlmError) as err:
        parse_model_args(args)
    for word in words:
        assert word in str(err.value)


def test_allowed_args_cover_every_config_field():
    import dataclasses

    from dlm.config import GenerationConfig

    names = set(allowed_args())
    assert {f.name for f in dataclasses.fields(GenerationConfig)} <= names
    assert {"pretrained", "batch_size", "mc_num", "mc_batch_size", "check_greedy", "scheduler.<param>"} <= names


def test_lm_eval_argument_string_fails_before_loading(tmp_path):
    """The path lm-eval's command takes (--model_args string): a bad argument is reported without loading the
    model (the path does not even exist)."""
    from dlm.eval.harness import DLMEvalLM

    with pytest.raises(ConfigError, match="unknown model_arg 'cach'"):
        DLMEvalLM.create_from_arg_string(f"pretrained={tmp_path}/missing,cach=dual", {"batch_size": 4})
