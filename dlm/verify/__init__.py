"""Lossless modes: outputs that are token for token those of a reference decode."""

from .base import VERIFIERS, get, names, register_verifier

__all__ = ["VERIFIERS", "get", "names", "register_verifier"]
