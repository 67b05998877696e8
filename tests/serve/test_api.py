"""The OpenAI endpoints through the official openai client against a real server: answers equal
``model.generate`` of the same request; streaming chunks concatenate to the final text."""

from __future__ import annotations

import httpx

import dlm

PROMPT = "def add(a, b):"
LONG = {"logits_eos_inf": True}  # EOS is never predicted: the answer fills its whole canvas
FAST = {"steps": 8}  # low_confidence, 4 tokens per step over 32 positions: few forwards on a busy CPU


def reference(model, prompt, **fields):
    """The answer ``model.generate`` gives this request alone: (text, token ids up to the first stop, nfe)."""
    out = model.generate(prompt, dlm.GenerationConfig(**fields))
    row = out.sequences[0].tolist()
    stops = set(fields.get("stop_token_ids") or model.ids.stop_ids)
    cut = next((i for i, t in enumerate(row) if t in stops), len(row))
    return out.texts[0], row[:cut], int(out.nfe[0])


def test_models_health_and_options(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "dlm-tiny"
    assert models["data"][0]["dlm"]["chat_template"] is False
    opts = httpx.get(server.url + "/v1/dlm/options").json()
    names = {s["name"] for s in opts["schedulers"]}
    assert {"low_confidence", "threshold"} <= names
    assert {c["name"] for c in opts["caches"]} >= {"none", "dual"}
    assert next(s for s in opts["schedulers"] if s["name"] == "threshold")["params"] == {"threshold": 0.9}


def test_completion_equals_generate(client, model):
    resp = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32,
                                     extra_body={"scheduler": "threshold", "return_token_ids": True})
    text, ids, nfe = reference(model, PROMPT, gen_length=32, block_length=32, scheduler="threshold")
    choice = resp.choices[0]
    assert choice.text == text and choice.finish_reason == "stop"
    assert choice.model_extra["token_ids"] == ids
    assert resp.usage.prompt_tokens == len(model.encode(PROMPT)[0])
    assert resp.usage.completion_tokens == len(ids)
    assert resp.usage.model_extra["nfe"] == nfe


def test_stream_chunks_concatenate_to_the_final_text(client, model):
    body = dict(model="dlm-tiny", prompt=PROMPT, max_tokens=64, extra_body={"steps": 16, **LONG})
    whole = client.completions.create(**body).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **body))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len([t for t in texts if t]) > 2, "the answer should arrive in several pieces"
    assert "".join(texts) == whole == reference(model, PROMPT, gen_length=64, steps=16, **LONG)[0]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 64


def test_max_tokens_rounds_the_canvas_up_to_blocks_and_caps_the_answer(client, model):
    resp = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=5,
                                     extra_body={**FAST, "return_token_ids": True, **LONG})
    _, ids, _ = reference(model, PROMPT, gen_length=32, **FAST, **LONG)
    assert resp.choices[0].model_extra["token_ids"] == ids[:5]
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 5
    assert resp.choices[0].text == model.tokenizer.decode(ids[:5], skip_special_tokens=True)


def test_block_length_field_sets_the_rounding(client, model):
    resp = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=10,
                                     extra_body={"block_length": 8, "steps": 8, "return_token_ids": True, **LONG})
    _, ids, _ = reference(model, PROMPT, gen_length=16, block_length=8, steps=8, **LONG)
    assert resp.choices[0].model_extra["token_ids"] == ids[:10]


def test_n_choices_are_seeded_one_after_the_other(client, model):
    resp = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, n=3, temperature=1.0, seed=7,
                                      extra_body={**FAST, **LONG})
    texts = [c.text for c in sorted(resp.choices, key=lambda c: c.index)]
    for j, text in enumerate(texts):
        assert text == reference(model, PROMPT, gen_length=32, temperature=1.0, seed=7 + j, **FAST, **LONG)[0]
    again = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, temperature=1.0, seed=8,
                                      extra_body={**FAST, **LONG})
    assert again.choices[0].text == texts[1]
    assert len(set(texts)) > 1, "different seeds should give different samples here"


def test_stop_strings_cut_the_text(client, model):
    full = reference(model, PROMPT, gen_length=32, scheduler="threshold")[0]
    assert "return" in full
    resp = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, stop=["return", "zzz"],
                                     extra_body={"scheduler": "threshold"})
    assert resp.choices[0].text == full[: full.index("return")]
    assert resp.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, stop="return",
                                         stream=True, extra_body={"scheduler": "threshold"})
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index("return")]


def test_a_batch_of_prompts_and_token_ids(client, model):
    ids = model.encode("class Stack:\n")[0]
    resp = client.completions.create(model="dlm-tiny", prompt=[ids, PROMPT], max_tokens=32, n=2,
                                     extra_body={"scheduler": "threshold"})
    got = [c.text for c in sorted(resp.choices, key=lambda c: c.index)]
    a = reference(model, [ids], gen_length=32, scheduler="threshold")[0]
    b = reference(model, PROMPT, gen_length=32, scheduler="threshold")[0]
    assert got == [a, a, b, b]
    assert resp.usage.prompt_tokens == len(ids) + len(model.encode(PROMPT)[0])


def test_dlm_canvas_stream_reports_every_commit(client, model):
    stream = client.completions.create(model="dlm-tiny", prompt=PROMPT, max_tokens=32, stream=True,
                                       stream_options={"dlm_canvas": True},
                                       extra_body={**FAST, "return_token_ids": True, **LONG})
    chunks = [c.model_extra.get("dlm") for c in stream]
    head, steps = chunks[0], [c for c in chunks[1:] if c]
    assert head["gen_length"] == 32 and head["block_length"] == 32 and head["prompt_tokens"] == 8
    _, ids, nfe = reference(model, PROMPT, gen_length=32, **FAST, **LONG)
    seen = {}
    for s in steps:
        for pos, tok, piece in s["committed"]:
            assert pos not in seen and piece == model.tokenizer.decode([tok])
            seen[pos] = tok
    assert seen == dict(enumerate(ids)) and steps[-1]["nfe"] == nfe == 8
    assert all(len(s["committed"]) == 4 for s in steps)
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))


def test_chat_uses_the_template(chat_server, chat_path):
    from openai import OpenAI

    lm = dlm.load(chat_path, device="cpu")
    client = OpenAI(base_url=chat_server.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "hello there"}]
    resp = client.chat.completions.create(model=chat_path.name, messages=messages, max_tokens=16,
                                          extra_body={"block_length": 16, "return_token_ids": True, **LONG})
    text, ids, nfe = reference(lm, "hello there", gen_length=16, block_length=16, chat_template=True, **LONG)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == text
    assert resp.choices[0].model_extra["prompt_token_ids"] == lm.encode("hello there", chat_template=True)[0]
    chunks = list(client.chat.completions.create(model=chat_path.name, messages=messages, max_tokens=16,
                                                 stream=True, extra_body={"block_length": 16, **LONG}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_chat_with_a_system_message_and_text_parts(chat_server, chat_path):
    from openai import OpenAI

    lm = dlm.load(chat_path, device="cpu")
    client = OpenAI(base_url=chat_server.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    resp = client.chat.completions.create(model=chat_path.name, messages=messages, max_tokens=16,
                                          extra_body={"block_length": 16, "return_token_ids": True})
    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}],
                                   add_generation_prompt=True, tokenize=False)
    assert resp.choices[0].model_extra["prompt_token_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_chat_without_a_template_is_a_clear_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "messages" and "chat template" in err["message"]
