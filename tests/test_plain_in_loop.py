"""benchmarks/plain_in_loop.py: its scripted planner takes the script's gammas, then 0, and (where asked) makes the
planner's real choice first, so that the arm pays the planner's per-iteration work."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from plain_in_loop import scripted  # noqa: E402

from dustin.adaptive import GammaPlanner  # noqa: E402


def _planner() -> GammaPlanner:
    planner = GammaPlanner(2)
    for rows, seconds in ((1, 0.3), (2, 0.35), (3, 0.4)):
        planner.record_cost("verify", rows, 2048, seconds)
    planner.record_cost("draft", 1, 2048, 0.1)
    planner.record_cost("draft", 2, 2048, 0.2)
    planner.record_cost("other", 1, 2048, 0.0)
    return planner


def test_the_script_then_plain_decoding():
    for compute in (False, True):
        planner = _planner()
        choose = scripted(planner, planner.choose, [2, 1], compute)
        picks = [choose(2048)[0] for _ in range(5)]
        assert picks == [2, 1, 0, 0, 0]
        assert planner.last["why"] == "scripted"
        # the real choice ran (an informed choice is counted) only where asked
        assert planner.choices == (5 if compute else 0)
