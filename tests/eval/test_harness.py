"""The lm-eval model class on its own (requests built by hand): generate_until against direct generation, stop
strings, chat templates, rolling log-likelihood, speed counters."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance

from dlm.config import GenerationConfig
from dlm.data import get_task
from dlm.errors import ConfigError
from dlm.eval.generation import cut_at_stop, fit_prompt, single_token_ids
from dlm.eval.harness import DLMEvalLM
from dlm.eval.likelihood import mc_loglikelihood


def _request(kind, args, task="t", i=0):
    return Instance(kind, doc={}, arguments=args, idx=0, metadata=(task, i, 1))


def test_cut_at_stop_uses_the_earliest_stop_string():
    assert cut_at_stop("a b\n\nc d", ["c", "\n\n"]) == "a b"
    assert cut_at_stop("abc", ["x"]) == "abc"
    assert cut_at_stop("abc", []) == "abc"


def test_fit_prompt_keeps_the_last_tokens():
    assert fit_prompt([1, 2, 3, 4], 6, 8) == ([3, 4], True)
    assert fit_prompt([1, 2], 6, 8) == ([1, 2], False)
    with pytest.raises(ConfigError, match="no room"):
        fit_prompt([1], 8, 8)


@pytest.mark.slow
def test_generate_until_equals_direct_generation_cut_at_the_stop_strings(bundled):
    """Stop strings cut the text exactly where the full decode would be cut; the single-token ones also end a row
    once everything before them is committed (never more forward passes), without changing the text before."""
    prompts = [e.prompt for e in get_task("copy").generate("test", 3, 0)]
    config = GenerationConfig(gen_length=32)
    direct = bundled.generate(prompts, config)
    until = [" d", "zz"]
    assert single_token_ids(bundled.tokenizer, until) == tuple(bundled.tokenizer(" d", add_special_tokens=False)
                                                               ["input_ids"])
    assert any(" d" in t for t in direct.texts)  # the stop string matters for these answers
    m = DLMEvalLM(lm=bundled, batch_size=2)
    reqs = [_request("generate_until", (p, {"until": until, "max_gen_toks": 20}), i=i) for i, p in enumerate(prompts)]
    got = m.generate_until(reqs)
    assert got == [cut_at_stop(t, until) for t in direct.texts]
    speed = m.speed()["generate_until"]
    assert speed["requests"] == 3 and speed["gen_lengths"] == {"32": 3}  # 20 rounded up to the block of 32
    assert 0 < speed["nfe"] <= int(direct.nfe.sum())
    # without the stop token the decoder runs as the direct call did
    m2 = DLMEvalLM(lm=bundled, stop_strings_as_tokens=False)
    assert m2.generate_until(reqs) == got
    assert m2.speed()["generate_until"]["nfe"] == int(direct.nfe.sum())
    # ignore_until (Dream's escape_until): the whole answer
    assert DLMEvalLM(lm=bundled, ignore_until=True).generate_until(reqs) == direct.texts


def test_task_sampling_settings_are_ignored_and_model_args_decide(bundled, caplog):
    prompts = [e.prompt for e in get_task("add").generate("test", 2, 0)]
    m = DLMEvalLM(lm=bundled, gen_length=32, scheduler="threshold", **{"scheduler.threshold": 0.5})
    reqs = [_request("generate_until", (p, {"until": [], "temperature": 0.7, "do_sample": True}), i=i)
            for i, p in enumerate(prompts)]
    got = m.generate_until(reqs)
    direct = bundled.generate(prompts, GenerationConfig(gen_length=32, scheduler="threshold",
                                                        scheduler_kwargs={"threshold": 0.5}))
    assert got == direct.texts
    assert m.speed()["generate_until"]["nfe"] == int(direct.nfe.sum())
    assert "temperature" in caplog.text and "ignored" in caplog.text


def test_chat_template_from_lm_eval_or_model_arg(llada):
    text = "hello there"
    m = DLMEvalLM(lm=llada)
    rendered = m.apply_chat_template([{"role": "user", "content": text}])
    assert m._encode(rendered) == llada.encode([text], chat_template=True)[0]
    own = DLMEvalLM(lm=llada, chat_template=True)
    assert own._encode(text) == llada.encode([text], chat_template=True)[0]
    with pytest.raises(ConfigError, match="twice"):
        own.apply_chat_template([{"role": "user", "content": text}])


def test_loglikelihood_and_rolling_use_the_monte_carlo_estimate(bundled):
    m = DLMEvalLM(lm=bundled, mc_num=8, mc_batch_size=4, seed=5)
    (ll, greedy), = m.loglikelihood([_request("loglikelihood", ("add: 1+2 =", "3"))])
    prefix, target = m._encode_pair("add: 1+2 =", "3")
    assert target == bundled.tokenizer("3", add_special_tokens=False)["input_ids"]
    assert ll == mc_loglikelihood(bundled, prefix, target, mc_num=8, mc_batch_size=4, seed=5) and greedy is False
    # trailing spaces of the context move to the continuation, as lm-eval and LLaDA do
    assert m._encode_pair("copy: a b = ", "a b") == m._encode_pair("copy: a b =", " a b")
    text = "copy: a b = a b"
    (rolled,) = m.loglikelihood_rolling([_request("loglikelihood_rolling", (text,))])
    tokens = bundled.tokenizer(text, add_special_tokens=False)["input_ids"]
    start = bundled.ids.bos_id
    assert rolled == mc_loglikelihood(bundled, [start], tokens, mc_num=8, mc_batch_size=4, seed=5)
    ll_speed = m.speed()["loglikelihood"]
    assert ll_speed["forwards"] == 4 and ll_speed["rows"] == 16


def test_check_greedy_reports_whether_the_greedy_decode_gives_the_target(bundled):
    m = DLMEvalLM(lm=bundled, mc_num=1, mc_batch_size=1, check_greedy=True)
    right, wrong = m.loglikelihood([_request("loglikelihood", ("add: 1+2 =", "3")),
                                    _request("loglikelihood", ("add: 1+2 =", "7"))])
    assert right[1] is True and wrong[1] is False


def test_add_bos_token_starts_prompts_with_bos_once(dream, bundled):
    bos = dream.ids.bos_id
    assert bos is not None and dream.encode(["hi"])[0][0] != bos  # the Dream tokenizer adds none
    m = DLMEvalLM(lm=dream, add_bos_token=True)
    assert m._encode("hi") == [bos, *dream.encode(["hi"])[0]]
    prefix, target = m._encode_pair("hi", " there")
    assert prefix[0] == bos and prefix[1:] + target == dream.tokenizer("hi there")["input_ids"]
    # the bundled tokenizer adds BOS itself: not twice
    assert DLMEvalLM(lm=bundled, add_bos_token=True)._encode("x") == bundled.encode(["x"])[0]


def test_a_loaded_model_and_loading_arguments_are_exclusive(bundled):
    with pytest.raises(ConfigError, match="not both"):
        DLMEvalLM(lm=bundled, dtype="float32")


@pytest.mark.slow
def test_data_parallel_replicas_give_the_answers_and_counts_of_one_process(bundled):
    """model_arg data_parallel=2 on the CPU: two replica processes decode the prompts (split between them, merged in
    order); texts and NFE equal the single-process run's."""
    prompts = [e.prompt for e in get_task("add").generate("test", 5, 0)]
    reqs = [_request("generate_until", (p, {"until": ["\n"], "max_gen_toks": 20}), i=i) for i, p in enumerate(prompts)]
    one = DLMEvalLM(lm=bundled, batch_size=2)
    want = one.generate_until(reqs)
    m = DLMEvalLM(device="cpu", data_parallel=2, batch_size=2)
    try:
        assert m.pool is not None and len(m.pool) == 2
        assert m.generate_until(reqs) == want
        assert m.speed()["generate_until"]["nfe"] == one.speed()["generate_until"]["nfe"]
    finally:
        m.pool.close()
    with pytest.raises(ConfigError, match="pretrained=PATH"):
        DLMEvalLM(lm=bundled, data_parallel=2)
    with pytest.raises(ConfigError, match="data_parallel"):
        DLMEvalLM(lm=bundled, data_parallel=0)
