"""What the built-in verifiers share: parameter handling, the exact-cache check, and the counters they report.

A verifier is a class registered with ``@register_verifier("name")``. It is built from the generation config's
``verify_kwargs``; :meth:`Verifier.check` refuses settings it cannot guarantee, :meth:`Verifier.reference_config`
names the decode whose output it reproduces, and :meth:`Verifier.driver` builds the
:class:`~dlm.engine.drivers.Driver` that runs its requests inside the engine, next to every other request::

    verifier = dlm.verify.get(config.verify)(**config.verify_kwargs)
    verifier.check(config)
    driver = verifier.driver(lm)   # one per verifier configuration; state per request

Parameters are a frozen dataclass ``Params`` (like schedulers and caches) so unknown or bad values fail with the
name of the parameter and the allowed ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .. import cache as cache_mod
from ..config import GenerationConfig
from ..errors import ConfigError
from ..outputs import GenerationOutput, merge_outputs
from ..registry import Configurable


class Verifier(Configurable):
    """Base class of verifiers: ``Params`` validation, and :meth:`check`, :meth:`reference_config`,
    :meth:`driver` to implement."""

    kind: ClassVar[str] = "verifier"

    def check(self, config: GenerationConfig) -> None:
        """Raise a ConfigError for settings whose output this verifier cannot guarantee."""

    def reference_config(self, config: GenerationConfig) -> GenerationConfig:
        """The config of the decode whose output the verifier reproduces (its request runs with it)."""
        return config.replace(verify=None, verify_kwargs={})

    def driver(self, lm):
        """The :class:`~dlm.engine.drivers.Driver` that runs this verifier's requests."""
        raise NotImplementedError

    def run(self, lm, prompts: list[list[int]], config: GenerationConfig, stream=None) -> GenerationOutput:
        """Decode token-id prompts with this verifier object, in an engine of their own (for parameters that
        cannot go through a GenerationConfig, such as a loaded model object)."""
        from ..engine.build import RequestBuilder
        from ..engine.core import EngineCore, generate_requests

        self.check(config)
        ref = self.reference_config(config)
        driver, builder = self.driver(lm), RequestBuilder(lm)
        reqs = []
        for i, p in enumerate(prompts):
            reqs.append(builder.build(list(p), ref, tag=i, driver=driver, name=f"prompt {i}"))
        core = EngineCore.build(lm, sum(r.copies for r in reqs), max(r.layout.length for r in reqs))
        generate_requests(core, reqs, stream)
        failed = next((r.error for r in reqs if r.error is not None), None)
        if failed is not None:
            raise failed
        return merge_outputs([r.output for r in reqs])


def positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def is_exact_cache(name: str, kwargs: dict[str, Any]) -> bool:
    """Whether the cache policy ``name`` with ``kwargs`` gives the logits of the no-cache forward at every step:
    the ``none`` policy (``exact``), or any policy that refreshes the whole canvas every step (``refresh_every=1``
    without shortened refreshes: :meth:`CachePolicy.refreshes_whole_canvas`)."""
    policy = cache_mod.create(name, kwargs)
    return bool(policy.exact) or (getattr(policy.params, "refresh_every", None) == 1
                                  and policy.refreshes_whole_canvas())


def require_exact_cache(config: GenerationConfig, verifier: str) -> None:
    if not is_exact_cache(config.cache, dict(config.cache_kwargs)):
        raise ConfigError(
            f"verify={verifier!r} needs an exact cache, but cache={config.cache!r} with cache_kwargs="
            f"{dict(config.cache_kwargs)} reuses keys/values computed before later commits, so its logits differ "
            "from the reference decode's and the output would not be guaranteed; use cache='none', or keep the "
            "policy and set cache_kwargs={'refresh_every': 1} (exact; for dual without refresh_from or refresh_to)"
        )
