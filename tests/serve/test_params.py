"""From a request body to engine requests: the max_tokens rule, seeds of n choices, stop strings, and errors
that name their field."""

from __future__ import annotations

import pytest

from dlm.serve.errors import APIError
from dlm.serve.params import answer_specs, gen_length_for
from dlm.serve.schemas import CompletionRequest


def specs(model, **body):
    req = CompletionRequest(prompt="x", **body)
    return answer_specs(req, model, model.encode("x"), slot_len=1024, prompt_param="prompt")


@pytest.mark.parametrize("max_tokens,block,gen", [(1, 32, 32), (32, 32, 32), (33, 32, 64), (10, 8, 16), (7, 7, 7)])
def test_max_tokens_rounds_up_to_whole_blocks(max_tokens, block, gen):
    assert gen_length_for(max_tokens, block) == gen


def test_defaults_are_dlms(model):
    (s,) = specs(model)
    c = s.config
    assert (c.gen_length, c.block_length, c.temperature, c.seed, c.scheduler) == (128, 32, 0.0, 0, "low_confidence")
    assert s.max_tokens == 128 and s.stop == ()


def test_n_choices_are_seeded_in_turn(model):
    assert [s.config.seed for s in specs(model, n=3, seed=10, temperature=0.5)] == [10, 11, 12]
    assert [s.config.seed for s in specs(model, n=2)] == [0, 1]
    assert [s.index for s in specs(model, n=2)] == [0, 1]


def test_dlm_fields_reach_the_config(model):
    (s,) = specs(model, max_tokens=40, block_length=8, steps=10, scheduler="threshold",
                 scheduler_kwargs={"threshold": 0.7}, cache="dual", top_p=0.9, top_k=5, eotp=True)
    c = s.config
    assert (c.gen_length, c.block_length, c.steps) == (40, 8, 10)
    assert (c.scheduler, dict(c.scheduler_kwargs), c.cache, c.top_p, c.top_k, c.eotp) == \
        ("threshold", {"threshold": 0.7}, "dual", 0.9, 5, True)


def test_single_token_stop_strings_end_the_decoding(model):
    tok = model.tokenizer
    single = next(w for w in ("\n", "return", " return") if len(tok(w, add_special_tokens=False)["input_ids"]) == 1)
    (s,) = specs(model, stop=[single, "a longer stop string"])
    (sid,) = tok(single, add_special_tokens=False)["input_ids"]
    assert set(s.config.stop_token_ids) == set(model.ids.stop_ids) | {sid}
    assert s.stop == (single, "a longer stop string")
    (plain,) = specs(model, stop="a longer stop string")
    assert plain.config.stop_token_ids is None


@pytest.mark.parametrize("body,param", [({"steps": 7, "max_tokens": 64}, "steps"), ({"scheduler": "x"}, "scheduler"),
                                        ({"top_p": 2.0}, "top_p"), ({"cache_kwargs": {"nope": 1}}, "cache_kwargs"),
                                        ({"seed": 2**64 - 1, "n": 2}, "seed"), ({"max_tokens": 2000}, "prompt")])
def test_errors_name_the_field(model, body, param):
    with pytest.raises(APIError) as exc:
        specs(model, **body)
    assert exc.value.status == 400 and exc.value.param == param
