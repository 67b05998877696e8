"""What the built-in verifiers share: parameter handling, the exact-cache check, and the counters they report.

A verifier is a class registered with ``@register_verifier("name")``. It is built from the generation config's
``verify_kwargs`` and its :meth:`Verifier.run` replaces the engine's denoising loop for that generation::

    out = dlm.verify.get(config.verify)(**config.verify_kwargs).run(lm, prompts, config, stream=stream)

Parameters are a frozen dataclass ``Params`` (like schedulers and caches) so unknown or bad values fail with the
name of the parameter and the allowed ones.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from .. import cache as cache_mod
from ..config import GenerationConfig
from ..errors import ConfigError
from ..registry import Configurable


class Verifier(Configurable):
    """Base class of verifiers: ``Params`` validation and a :meth:`run` to implement."""

    kind: ClassVar[str] = "verifier"

    def run(self, lm, prompts: Sequence[Sequence[int]], config: GenerationConfig, stream=None):
        raise NotImplementedError


def positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def is_exact_cache(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether the cache policy ``name`` with ``kwargs`` gives the logits of the no-cache forward at every step:
    the ``none`` policy (``exact``), or any policy that refreshes every step (``refresh_every=1``)."""
    policy = cache_mod.create(name, kwargs)
    return bool(policy.exact) or getattr(policy.params, "refresh_every", None) == 1


def require_exact_cache(config: GenerationConfig, verifier: str) -> None:
    if not is_exact_cache(config.cache, dict(config.cache_kwargs)):
        raise ConfigError(
            f"verify={verifier!r} needs an exact cache, but cache={config.cache!r} with cache_kwargs="
            f"{dict(config.cache_kwargs)} reuses keys/values computed before later commits, so its logits differ "
            "from the reference decode's and the output would not be guaranteed; use cache='none', or keep the "
            "policy and set cache_kwargs={'refresh_every': 1} (exact)"
        )
