"""The causal verifier's model: loading a transformers causal LM (no remote code) and checking that it shares the
diffusion model's tokenizer."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

_LOADED: dict[tuple, tuple[Any, Any]] = {}


def _from_pretrained_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_causal(path: str | Path, dtype: torch.dtype | None, device: torch.device) -> tuple[Any, Any]:
    """The causal model and its tokenizer from a folder (no remote code), cached per (folder, dtype, device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"verifier folder {str(folder)!r} has no config.json; pass the folder of a transformers "
                              "causal LM (AutoModelForCausalLM) that shares the diffusion model's tokenizer")
    key = (str(folder.resolve()), str(dtype), str(device))
    if key not in _LOADED:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False,
                                                         **_from_pretrained_kwargs(dtype))
        except (ValueError, OSError, KeyError) as exc:
            raise CheckpointError(f"cannot load {str(folder)!r} as a causal LM with transformers' "
                                  f"AutoModelForCausalLM (no remote code): {exc}") from exc
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"verifier folder {str(folder)!r} has no loadable tokenizer ({exc}); pass "
                                  "tokenizer=<folder or tokenizer object>") from exc
        if len(_LOADED) >= 2:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = (model.to(device).eval(), tok)
    return _LOADED[key]


def tokenizer_differences(diffusion_tok: Any, causal_tok: Any) -> list[str]:
    """What differs between two tokenizers, in words (empty when they agree): tokens present in one vocabulary
    only, tokens with different ids, and the EOS / BOS tokens. Remembered per pair of tokenizer objects while
    both live and keep their sizes (reading two vocabularies costs about 10 ms, and ``generate`` checks the pair
    at every call)."""
    key = (id(diffusion_tok), id(causal_tok), _size(diffusion_tok), _size(causal_tok),
           str(getattr(diffusion_tok, "eos_token", None)), str(getattr(causal_tok, "eos_token", None)),
           str(getattr(diffusion_tok, "bos_token", None)), str(getattr(causal_tok, "bos_token", None)))
    seen = _CHECKED.get(key)
    if seen is not None and seen[0]() is diffusion_tok and seen[1]() is causal_tok:
        return list(seen[2])
    out = _differences(diffusion_tok, causal_tok)
    if len(_CHECKED) >= 64:
        _CHECKED.clear()
    try:
        _CHECKED[key] = (weakref.ref(diffusion_tok), weakref.ref(causal_tok), tuple(out))
    except TypeError:  # an object that takes no weak reference: checked every time
        pass
    return out


_CHECKED: dict[tuple, tuple] = {}


def _size(tokenizer: Any) -> int | None:
    """The tokenizer's size (transformers' tokenizers, added tokens included), None for one without ``len``."""
    try:
        return len(tokenizer)
    except TypeError:
        return None


def _differences(diffusion_tok: Any, causal_tok: Any) -> list[str]:
    va, vb = diffusion_tok.get_vocab(), causal_tok.get_vocab()
    out = []
    only_a = sorted(set(va) - set(vb), key=lambda t: va[t])
    only_b = sorted(set(vb) - set(va), key=lambda t: vb[t])
    moved = sorted((t for t in set(va) & set(vb) if va[t] != vb[t]), key=lambda t: va[t])
    if only_a:
        out.append(f"{len(only_a)} token(s) only in the diffusion model's tokenizer, e.g. "
                   + ", ".join(f"{t!r} (id {va[t]})" for t in only_a[:5]))
    if only_b:
        out.append(f"{len(only_b)} token(s) only in the causal model's tokenizer, e.g. "
                   + ", ".join(f"{t!r} (id {vb[t]})" for t in only_b[:5]))
    if moved:
        out.append(f"{len(moved)} token(s) with different ids, e.g. "
                   + ", ".join(f"{t!r} ({va[t]} vs {vb[t]})" for t in moved[:5]))
    for attr in ("eos_token", "bos_token"):
        a, b = getattr(diffusion_tok, attr, None), getattr(causal_tok, attr, None)
        if str(a) != str(b):
            out.append(f"{attr}: {a!r} (diffusion) vs {b!r} (causal)")
    return out


def token_ids(value: Any) -> list[int]:
    """An id or a list of ids (a config's ``eos_token_id``) as a list."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
