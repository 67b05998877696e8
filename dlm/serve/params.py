"""From an OpenAI request body to what the engine runs: prompts as token ids and one :class:`AnswerSpec` per
choice.

Rules (docs/serving.md):

* ``max_tokens`` caps the answer's tokens. The canvas is ``max_tokens`` rounded UP to whole blocks
  (``gen_length = ceil(max_tokens / block_length) * block_length``, block_length 32 unless the body sets it or
  the model's format fixes it); positions past ``max_tokens`` are decoded (they condition the others) but never
  returned. Unset: 128.
* ``n`` > 1 (and several prompts) make one engine request per choice; choice j of a prompt is seeded
  ``seed + j``. ``seed`` defaults to 0 and ``temperature`` to 0 (dlm's defaults), so a request is reproducible.
* ``stop`` strings cut the text before the earliest one; one that is a single token also ends the decoding
  (it joins ``stop_token_ids``, which default to the model's end-of-text tokens).
* dlm's settings go through :class:`GenerationConfig` one field at a time, so its error names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import GenerationConfig
from ..errors import ConfigError, DlmError
from .errors import bad_request
from .schemas import CONFIG_FIELDS, ChatCompletionRequest, CommonFields, CompletionRequest

DEFAULT_MAX_TOKENS = 128
DEFAULT_BLOCK = 32
MAX_STOP = 16


@dataclass(frozen=True)
class AnswerSpec:
    """One choice: ``index`` in the response, the prompt it answers (``prompt_index``, ``prompt_ids``), the
    engine's ``config``, at most ``max_tokens`` answer tokens returned, and the ``stop`` strings."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    config: GenerationConfig
    max_tokens: int
    stop: tuple[str, ...]


def gen_length_for(max_tokens: int, block_length: int) -> int:
    """The canvas of an answer of at most ``max_tokens`` tokens: whole blocks."""
    return -(-max_tokens // block_length) * block_length


def check_neutral(body: CommonFields) -> None:
    """OpenAI parameters dlm does not implement are accepted only at their neutral value."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise bad_request(f"{name} is not supported by dlm serve (only 0)", name, "unsupported_parameter")
    if body.logit_bias:
        raise bad_request("logit_bias is not supported by dlm serve", "logit_bias", "unsupported_parameter")
    if isinstance(body, CompletionRequest):
        for name, neutral in (("echo", (False,)), ("best_of", (None, 1)), ("suffix", (None,)), ("logprobs", (None,))):
            if getattr(body, name) not in neutral:
                raise bad_request(f"{name} is not supported by dlm serve", name, "unsupported_parameter")
    if isinstance(body, ChatCompletionRequest):
        if body.logprobs or body.top_logprobs is not None:
            raise bad_request("logprobs are not supported by dlm serve", "logprobs", "unsupported_parameter")
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", "stream_options")


def max_tokens_of(body: CommonFields) -> int:
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        if body.max_tokens is not None and body.max_tokens != body.max_completion_tokens:
            raise bad_request(f"max_tokens ({body.max_tokens}) and max_completion_tokens "
                              f"({body.max_completion_tokens}) disagree; set one", "max_completion_tokens")
        return body.max_completion_tokens
    return body.max_tokens if body.max_tokens is not None else DEFAULT_MAX_TOKENS


def stop_strings(body: CommonFields) -> tuple[str, ...]:
    stop = body.stop
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    if len(items) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} strings, got {len(items)}", "stop")
    if any(s == "" for s in items):
        raise bad_request("stop strings must not be empty", "stop")
    return tuple(dict.fromkeys(items))


def single_token_stops(tokenizer, strings: tuple[str, ...]) -> list[int]:
    """Ids of the stop strings that are exactly one token (which then also end the decoding)."""
    if tokenizer is None:
        return []
    ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings]
    return sorted({int(i[0]) for i in ids if len(i) == 1})


def _apply(config: GenerationConfig, param: str, **changes: Any) -> GenerationConfig:
    try:
        return config.replace(**changes)
    except (DlmError, ValueError, TypeError) as exc:  # ConfigError, RegistryError, a Params check
        raise bad_request(str(exc), param, "invalid_value") from None


def check_body(body: CommonFields) -> None:
    """What can be checked without the model: neutral-only fields, max_tokens, stop strings."""
    check_neutral(body)
    max_tokens_of(body)
    stop_strings(body)


def base_config(body: CommonFields, lm, gen_length: int, block: int) -> GenerationConfig:
    """The GenerationConfig of the body's first choice. Fields are applied one at a time in an order where each
    depends only on earlier ones, so an error names its field."""
    config = _apply(GenerationConfig(), "max_tokens", gen_length=gen_length, block_length=block)
    stops = stop_strings(body)
    for name in CONFIG_FIELDS:
        value = getattr(body, name)
        if name == "stop_token_ids" and stops:
            extra = single_token_stops(lm.tokenizer, stops)
            if extra:
                value = sorted(set(value if value is not None else lm.ids.stop_ids) | set(extra))
        if name == "block_length" or value is None:
            continue
        config = _apply(config, name, **{name: value})
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            config = _apply(config, name, **{name: getattr(body, name)})
    return config


def answer_specs(body: CommonFields, lm, prompts: list[list[int]], *, slot_len: int,
                 prompt_param: str) -> list[AnswerSpec]:
    """One spec per (prompt, choice), checked against the context of the engine's rows (``slot_len``)."""
    check_body(body)
    max_tokens = max_tokens_of(body)
    block = body.block_length or getattr(lm, "block_size", None) or DEFAULT_BLOCK
    gen_length = gen_length_for(max_tokens, block)
    for p, ids in enumerate(prompts):
        if len(ids) + gen_length > slot_len:
            raise bad_request(
                f"{prompt_param} {p} has {len(ids)} tokens and max_tokens={max_tokens} needs a canvas of "
                f"{gen_length} positions (whole blocks of {block}); together {len(ids) + gen_length} > the "
                f"server's context of {slot_len} tokens per request", prompt_param, "context_length_exceeded")
    config = base_config(body, lm, gen_length, block)
    stops = stop_strings(body)
    seed = config.seed if config.seed is not None else 0
    specs = []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            cfg = _apply(config, "seed", seed=seed + j) if body.n > 1 else config
            specs.append(AnswerSpec(len(specs), p, ids, cfg, max_tokens, stops))
    return specs


def completion_prompts(lm, prompt: Any) -> list[list[int]]:
    """``prompt`` of /v1/completions as token ids: a string, a list of strings, a list of ids or a list of id
    lists (a batch). Ids are checked against the model's vocabulary."""
    if prompt is None or prompt == [] or prompt == "":
        raise bad_request("prompt must be a non-empty string, list of strings, list of token ids or list of "
                          "token-id lists", "prompt")
    if isinstance(prompt, list) and any(isinstance(p, list) and not p for p in prompt):
        raise bad_request("prompt holds an empty token-id list", "prompt")
    try:
        return lm.encode(prompt)
    except ConfigError as exc:
        raise bad_request(str(exc), "prompt") from None


def chat_prompt(lm, body: ChatCompletionRequest) -> list[int]:
    """The messages through the tokenizer's chat template (with the assistant's generation prompt), as ids."""
    tok = lm.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise bad_request("this model's tokenizer has no chat template, so /v1/chat/completions cannot format "
                          "messages; use /v1/completions with a prompt string", "messages", "no_chat_template")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in body.messages]
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - the template's own refusal (e.g. roles out of order)
        raise bad_request(f"the chat template refused the messages: {exc}", "messages") from None
    ids = [list(tok(text, add_special_tokens=False)["input_ids"])]
    try:
        return lm.encode(ids)[0]
    except ConfigError as exc:
        raise bad_request(str(exc), "messages") from None
