"""The package version (one place; pyproject reads its own)."""

__version__ = "0.1.0"
