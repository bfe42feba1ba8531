"""The speculative loop driven and timed from outside, for benchmarks that isolate one of its costs: a stand-in for the
planner's choice that takes a scripted gamma sequence, and a timer around one phase of ``dustin.driver.Generation``
(the driver keeps only totals per phase)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

from dustin import driver


def scripted(planner, gammas: Iterable[int], real: Callable | None = None):
    """A stand-in for ``planner.choose``: the next gamma of ``gammas``; with ``real`` (the planner's own ``choose``,
    bound), after the planner's real choice is made (so that its per-iteration work is paid)."""
    gammas = iter(gammas)

    def choose(*args, **kwargs):
        if real is not None:
            real(*args, **kwargs)
        planner.last = {"why": "scripted", "rates": {}}
        return next(gammas), None

    return choose


@contextlib.contextmanager
def timed(phase: str, record: Callable):
    """While open, every call of ``Generation.<phase>`` (``"verify"``, ``"draft"``) is timed: ``record(generation,
    seconds)`` after each, with the generation as the call left it (its ``gamma`` is this iteration's)."""
    method = getattr(driver.Generation, phase)

    def timed_call(self, *args, **kwargs):
        began = time.perf_counter()
        out = method(self, *args, **kwargs)
        record(self, time.perf_counter() - began)
        return out

    setattr(driver.Generation, phase, timed_call)
    try:
        yield
    finally:
        setattr(driver.Generation, phase, method)
