"""Shared by the dustin.assets tests."""

import pytest


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch):
    """A developer's own pair directory or cache must not leak into these tests."""
    monkeypatch.delenv("DUSTIN_PAIR_DIR", raising=False)
    monkeypatch.delenv("DUSTIN_CACHE", raising=False)
