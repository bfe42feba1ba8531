"""Errors a user can act on: each names the argument, what was expected, what came, and the fix."""

from __future__ import annotations


class DustinError(Exception):
    """Base class of dustin's own errors."""


class ModelPairError(DustinError, ValueError):
    """The target/draft pair cannot be used together (vocabulary, tokenizer, dtype, device, model kind)."""


class PassError(DustinError, RuntimeError):
    """A graph pass could not rewrite or verify a captured graph."""


class ProfileError(DustinError, ValueError):
    """A calibration profile does not fit the models it is used with."""
