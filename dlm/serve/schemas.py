"""The request bodies of the OpenAI endpoints, as strict pydantic models.

Unknown fields are refused (``extra="forbid"``), types are not coerced (``"5"`` is not a number), and every
error names its field (:mod:`dlm.serve.errors`). Beside OpenAI's fields a body may carry dlm's own settings
(:class:`DlmFields`): the scheduler, the cache, the verifier and the rest of :class:`dlm.GenerationConfig`;
their values are checked by GenerationConfig itself (:mod:`dlm.serve.params`). See docs/serving.md.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Strict = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    """``stream_options``: OpenAI's ``include_usage`` and dlm's ``dlm_canvas`` (each step's newly committed
    (position, token) pairs ride along in every chunk, for visualisers such as the playground)."""

    model_config = Strict
    include_usage: bool = False
    include_obfuscation: Optional[bool] = None  # accepted and ignored: no obfuscation is added
    dlm_canvas: bool = False


class DlmFields(BaseModel):
    """dlm's settings, as extra body fields (``extra_body=`` of the openai client); names and meanings are those
    of :class:`dlm.GenerationConfig`. ``return_token_ids`` adds the prompt's and the answer's token ids to each
    choice (``prompt_token_ids``, ``token_ids``)."""

    model_config = Strict
    block_length: Optional[int] = Field(default=None, ge=1)
    steps: Optional[int] = None
    scheduler: Optional[str] = None
    scheduler_kwargs: Optional[dict[str, Any]] = None
    cache: Optional[str] = None
    cache_kwargs: Optional[dict[str, Any]] = None
    verify: Optional[str] = None
    verify_kwargs: Optional[dict[str, Any]] = None
    sampling: Optional[str] = None
    top_k: Optional[int] = None
    cfg_scale: Optional[float] = None
    stop_token_ids: Optional[list[int]] = None
    stop_at_eos: Optional[bool] = None
    logits_eos_inf: Optional[bool] = None
    confidence_eos_eot_inf: Optional[bool] = None
    eotp: Optional[bool] = None
    eotp_threshold: Optional[float] = None
    return_token_ids: bool = False


# GenerationConfig fields a body may set under their own name (the others come from OpenAI's fields)
CONFIG_FIELDS = tuple(f for f in DlmFields.model_fields if f != "return_token_ids")


class CommonFields(DlmFields):
    """Fields of both endpoints. ``temperature`` defaults to dlm's 0 (greedy), not OpenAI's 1; ``seed`` to 0."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0)
    top_p: Optional[float] = None
    seed: Optional[int] = Field(default=None, ge=0)
    stop: Optional[str | list[str]] = None
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # OpenAI parameters accepted at their neutral value only (clients send them with defaults)
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, Any]] = None


class CompletionRequest(CommonFields):
    """``POST /v1/completions``. ``prompt``: a string, a list of strings, a list of token ids or a list of
    token-id lists (checked in :func:`dlm.serve.params.completion_prompts`)."""

    prompt: Any
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    logprobs: Optional[int] = None


class TextPart(BaseModel):
    model_config = Strict
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant"]
    content: Optional[str | list[TextPart]] = None
    name: Optional[str] = None

    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ChatCompletionRequest(CommonFields):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
