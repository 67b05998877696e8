"""Architecture specs and their registry.

An :class:`Architecture` turns a checkpoint's ``config.json`` into an :class:`ArchConfig`, maps checkpoint
weight names onto the internal names of :class:`~dlm.models.transformer.Transformer`, and knows the special
token ids and the logit shift of its family. A new architecture is one file with one subclass and one
``@register_model("model_type")`` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import CheckpointError
from ..registry import Registry
from .transformer import ArchConfig, Transformer


def _check_architecture(cls: type) -> None:
    from ..errors import RegistryError

    if not (isinstance(cls, type) and issubclass(cls, Architecture)):
        raise RegistryError(f"{cls!r} is not a subclass of dlm.models.Architecture")


MODELS: Registry = Registry("model architecture", group=None, check=_check_architecture)


def register_model(model_type: str, *, override: bool = False):
    """Class decorator registering an :class:`Architecture` for ``config.json``'s ``model_type``."""
    return MODELS.register(model_type, override=override)


@dataclass(frozen=True)
class SpecialIds:
    """Token ids generation needs. ``stop_ids`` end an answer (EOS and the chat end-of-turn token)."""

    mask_id: int
    eos_id: int
    pad_id: int
    bos_id: int | None = None
    stop_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.pad_id == self.mask_id:
            raise CheckpointError(
                f"pad token id equals the mask token id ({self.mask_id}); padding would be read as masks to fill"
            )


class Architecture:
    """Base class of a checkpoint format. Subclasses set ``model_type`` and implement the hooks."""

    model_type: ClassVar[str]
    logits_shift: ClassVar[int] = 0  # 1 when the logit at position i-1 predicts token i (Dream)
    # tokenizer classes that exist only as remote code, mapped to the transformers class they copy
    tokenizer_fallbacks: ClassVar[dict[str, str]] = {}
    end_of_turn_tokens: ClassVar[tuple[str, ...]] = ()
    # the mask token's text, looked up in the tokenizer when config.json has no mask_token_id
    mask_token: ClassVar[str | None] = None
    # the module built for this format (a family with other layers subclasses Transformer)
    model_class: ClassVar[type[Transformer]] = Transformer

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        raise NotImplementedError

    @classmethod
    def name_map(cls, arch: ArchConfig, cfg: dict[str, Any]) -> dict[str, str]:
        """Checkpoint weight name -> internal parameter name, for every weight the checkpoint must hold."""
        raise NotImplementedError

    @classmethod
    def special_ids(cls, cfg: dict[str, Any], tokenizer: Any | None) -> SpecialIds:
        """Mask, EOS, pad and BOS ids from ``config.json``, falling back on the tokenizer (the mask token by its
        text, :attr:`mask_token`; EOS as the tokenizer's); pad defaults to EOS; stop ids are EOS and the family's
        end-of-turn tokens the tokenizer knows."""
        mask = cfg.get("mask_token_id")
        if mask is None and cls.mask_token is not None:
            mask = token_id(tokenizer, cls.mask_token)
        if mask is None:
            raise CheckpointError(f"cannot find the mask token id: config.json has no 'mask_token_id' and the "
                                  f"tokenizer has no {cls.mask_token!r} token")
        eos = cfg.get("eos_token_id")
        more_eos = []
        if isinstance(eos, list):  # several end tokens (Hugging Face style): the first is EOS, all stop
            eos, more_eos = (eos[0], eos[1:]) if eos else (None, [])
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id
        if eos is None:
            raise CheckpointError("cannot find the EOS token id in config.json ('eos_token_id') or the tokenizer")
        pad = cfg.get("pad_token_id")
        if pad is None:
            pad = eos
        stops = [eos, *more_eos] + [i for t in cls.end_of_turn_tokens if (i := token_id(tokenizer, t)) is not None]
        return SpecialIds(mask_id=int(mask), eos_id=int(eos), pad_id=int(pad),
                          bos_id=cfg.get("bos_token_id"), stop_ids=tuple(dict.fromkeys(stops)))

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        raise NotImplementedError

    @classmethod
    def generation_defaults(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """The format's official sampling defaults for GenerationConfig fields left unset (``None``), as its
        reference sampler applies them; a checkpoint's ``generation_config.json`` overrides them (see
        :func:`dlm.api.defaults.effective_config`). None by default."""
        return {}

    @classmethod
    def claims(cls, cfg: dict[str, Any]) -> bool:
        """Whether a config.json whose ``model_type`` names another format is this one's (LLaDA-MoE's says
        ``"llada"``, LLaDA-8B's); :func:`dlm.models.loading.format_name` asks every registered format first. False
        by default: the ``model_type`` names the format."""
        return False

    @classmethod
    def block_size(cls, cfg: dict[str, Any]) -> int | None:
        """Block-diffusion families (attention causal across blocks, bidirectional inside one): the block size
        their attention is built on. ``None`` (the default): fully bidirectional attention (LLaDA, Dream)."""
        return None

    @classmethod
    def build_config(cls, arch: ArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        """A ``config.json`` dict in this format for ``arch`` (used to write checkpoints)."""
        raise NotImplementedError


def make_arch(**fields: Any) -> ArchConfig:
    """An ArchConfig read from a checkpoint; its consistency errors (heads not a multiple of the key/value
    heads, an odd head size) become CheckpointErrors naming config.json."""
    try:
        return ArchConfig(**fields)
    except ValueError as exc:
        raise CheckpointError(f"config.json describes a model that cannot be built: {exc}") from exc


def token_id(tokenizer: Any | None, token: str) -> int | None:
    """Id of ``token`` in the tokenizer's vocabulary, or None."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    return vocab.get(token)
