"""benchmarks/verify_switch.py: its scripted planner takes the sequence's gammas over and over, whatever the planner
would have chosen, and says so in the decision log."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from verify_switch import SEQUENCES, cycling  # noqa: E402

from dustin.adaptive import GammaPlanner  # noqa: E402


def test_sequences_repeat_and_replace_the_choice():
    planner = GammaPlanner(4)
    choose = cycling(planner, SEQUENCES["gamma 1 x 7, then 4"])
    picks = [choose(4096, "verify", 0, 48)[0] for _ in range(17)]
    assert picks == ([1] * 7 + [4]) * 2 + [1]
    assert planner.last == {"why": "scripted", "rates": {}} and planner.choices == 0  # no informed choice was made
    assert all(max(p) <= planner.gamma_max for p in SEQUENCES.values())
