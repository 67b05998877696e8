"""The verifier registry (lossless modes). Verifiers register like schedulers: ``@register_verifier("name")``
or the entry-point group ``dlm.verifiers``."""

from __future__ import annotations

from ..errors import RegistryError
from ..registry import Registry


def _check_verifier(cls: type) -> None:
    if not isinstance(cls, type) or not callable(getattr(cls, "driver", None)):
        raise RegistryError(f"{cls!r} is not a verifier class (it needs a driver() method, see dlm.engine.drivers)")


VERIFIERS: Registry = Registry("verifier", group="dlm.verifiers", check=_check_verifier)


def register_verifier(name: str, *, override: bool = False):
    return VERIFIERS.register(name, override=override)


def get(name: str) -> type:
    return VERIFIERS.get(name)


def names() -> list[str]:
    return VERIFIERS.names()
