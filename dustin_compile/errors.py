"""Errors a user can act on: each names the argument, what was expected, what came, and the fix.

``PassError`` (a graph pass could not rewrite a captured graph) belongs to ``dustin.passes`` and is re-exported by
``dustin``; it is a ``RuntimeError``, not a ``DustinError``: the passes sit below this package.
"""

from __future__ import annotations

from dustin.passes.errors import PassError

__all__ = ["AssetError", "DustinError", "ModelPairError", "PassError", "ProfileError"]


class DustinError(Exception):
    """Base class of dustin's own errors."""


class ModelPairError(DustinError, ValueError):
    """The target/draft pair cannot be used together (vocabulary, tokenizer, dtype, device, model kind)."""


class ProfileError(DustinError, ValueError):
    """A calibration profile does not fit the models it is used with."""


class AssetError(DustinError, RuntimeError):
    """An asset could not be fetched, verified or converted; the message names the file or package and the fix."""
