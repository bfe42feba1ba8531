"""The passes' own error (``dustin`` re-exports it)."""

from __future__ import annotations


class PassError(RuntimeError):
    """A graph pass could not rewrite or verify a captured graph; the message holds the pass report."""
