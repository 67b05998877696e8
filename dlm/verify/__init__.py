"""Lossless modes: outputs that are token for token those of a reference decode.

* ``stepwise`` (:mod:`dlm.verify.stepwise`): the model's own one-token-per-step greedy decode, reached with
  nested drafts verified by the model itself (FreeDave).
* ``causal`` (:mod:`dlm.verify.causal`): a causal LM sharing the tokenizer verifies blocks drafted by the
  diffusion model; greedy output identical to the causal model's, samples distributed as its samples.

Plugins register with ``@dlm.register_verifier("name")`` or the entry-point group ``dlm.verifiers``.
"""

from .base import VERIFIERS, get, names, register_verifier
from .common import Verifier
from . import stepwise, causal  # noqa: E402,F401  (registers the built-in verifiers)
from .stepwise import StepwiseVerifier
from .causal import CausalVerifier

__all__ = ["VERIFIERS", "CausalVerifier", "StepwiseVerifier", "Verifier", "get", "names", "register_verifier"]
