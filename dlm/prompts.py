"""Prompts as :meth:`DiffusionLM.generate` takes them: checked, then turned into token ids.

Accepted, exactly:

* a string, or a list (or tuple) of strings: tokenised by the model's tokenizer;
* a list of token-id lists (each a list or tuple of Python or NumPy integers), which may be mixed with strings
  (as lines of a ``dlm generate --input`` file are); a single flat list of ids is one prompt, like a 1-D tensor;
* a 1-D (one prompt) or 2-D (B, P) tensor of an integer dtype.

Everything else is a :class:`~dlm.errors.ConfigError` naming the type found, never a guess: bytes are not
decoded (which encoding?), floats are never truncated to ids, a dict is not read as its keys, ``None`` is not an
empty batch. Ids must lie in the model's vocabulary and may not be the mask token (dlm does not infill).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch

from .errors import ConfigError

ACCEPTED = "a string, a list of strings, a list of token-id lists, or a 1-D/2-D integer tensor"


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _is_id(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _hint(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return "; decode bytes to str first (e.g. data.decode('utf-8'))"
    if isinstance(value, dict):
        return "; pass the text itself (e.g. item['prompt']), not a dict"
    if isinstance(value, float):
        return "; token ids must be integers, floats are never rounded to ids"
    if type(value).__module__ == "numpy":
        return "; pass array.tolist() or a torch tensor"
    return ""


def _reject(what: str, value: Any, allowed: str = ACCEPTED) -> ConfigError:
    return ConfigError(f"{what} must be {allowed}; got {_type_name(value)}{_hint(value)}")


def _from_tensor(t: torch.Tensor) -> list[list[int]]:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"a prompt tensor must hold integer token ids; got dtype {t.dtype}"
                          + ("; floats are never rounded to ids (use .long() if the values are ids)"
                             if t.is_floating_point() else ""))
    if t.dim() not in (1, 2):
        raise ConfigError(f"a prompt tensor must be 1-D (one prompt) or 2-D (batch, length); got {t.dim()}-D "
                          f"with shape {list(t.shape)}")
    return (t.unsqueeze(0) if t.dim() == 1 else t).tolist()


def _id_list(i: int, p: Sequence[Any]) -> list[int]:
    bad = next((t for t in p if not _is_id(t)), None)
    if bad is not None:
        raise ConfigError(f"prompt {i} must be a list of integer token ids; it holds {_type_name(bad)} "
                          f"{bad!r}{_hint(bad)}")
    return [int(t) for t in p]


def normalize(prompts: Any) -> list[str | list[int]]:
    """The batch as a list of prompts, each a ``str`` or a list of ``int`` ids; ConfigError for anything else."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        return _from_tensor(prompts)
    if not isinstance(prompts, (list, tuple)):
        raise _reject("prompts", prompts)
    if prompts and all(_is_id(t) for t in prompts):
        return [[int(t) for t in prompts]]  # one prompt of ids, as a 1-D tensor would be
    out: list[str | list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, (list, tuple)):
            out.append(_id_list(i, p))
        else:
            raise _reject(f"prompt {i}", p, "a string or a list of token ids")
    return out


def check_ids(ids: list[list[int]], vocab_size: int, mask_id: int, *, min_length: int = 0) -> None:
    """ConfigError unless every id is in ``[0, vocab_size)``, none is the mask token and every prompt has at
    least ``min_length`` tokens (1 for models whose logits are shifted: the first answer position is predicted
    from the token before it)."""
    for r, row in enumerate(ids):
        if len(row) < min_length:
            raise ConfigError(f"prompt {r} is empty; this model predicts each position from the one before it, so "
                              f"a prompt needs at least {min_length} token")
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(f"prompt {r} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab_size})")
        if mask_id in row:
            raise ConfigError(f"prompt {r} contains the mask token id {mask_id}; infilling is not supported")


def tokenize(texts: list[str], tokenizer: Any | None, chat_template: bool) -> list[list[int]]:
    """Token ids of each text, wrapped in the tokenizer's chat template (user turn + generation prompt) if asked."""
    if tokenizer is None:
        raise ConfigError("this model has no tokenizer; pass prompts as lists of token ids")
    if not chat_template:
        return [list(ids) for ids in tokenizer(texts)["input_ids"]]
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_template=True but the tokenizer has no chat template")
    wrapped = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                             tokenize=False) for t in texts]
    return [list(ids) for ids in tokenizer(wrapped, add_special_tokens=False)["input_ids"]]


def encode(prompts: Any, tokenizer: Any | None, *, vocab_size: int, mask_id: int, chat_template: bool = False,
           min_length: int = 0) -> list[list[int]]:
    """Check ``prompts`` (see the module doc) and return the token ids of each, checked against the model."""
    batch = normalize(prompts)
    texts = [p for p in batch if isinstance(p, str)]
    encoded = iter(tokenize(texts, tokenizer, chat_template) if texts else [])
    ids = [next(encoded) if isinstance(p, str) else p for p in batch]
    check_ids(ids, vocab_size, mask_id, min_length=min_length)
    return ids
