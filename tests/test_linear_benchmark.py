"""benchmarks/linear.py: paired timing (the one-row and multi-row calls run back to back in every round) and the
ratio taken per round, so that a drift between rounds cannot pass for a multi-row cost."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from linear import median_ratio, paired_ms  # noqa: E402


def test_paired_ms_warms_each_call_then_runs_them_round_by_round():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("one", "plain_5", "packed_5")}
    times = paired_ms(fns, repeats=3)
    assert calls == ["one", "one", "plain_5", "plain_5", "packed_5", "packed_5"] + ["one", "plain_5", "packed_5"] * 3
    assert {name: len(t) for name, t in times.items()} == {"one": 3, "plain_5": 3, "packed_5": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)


def test_median_ratio_pairs_each_round_with_itself():
    # A slow spell (10x) in rounds 2 and 3 and one outlier round (3x in round 3): every other round's 5-row call costs
    # 1.2x its one-row call, and the median of the per-round ratios says so.
    times = {"one": [1.0, 10.0, 10.0, 1.0, 1.0], "plain_5": [1.2, 12.0, 30.0, 1.2, 1.2]}
    assert abs(median_ratio(times, "plain_5", "one") - 1.2) < 1e-12
    # Independent oracle: the ratios by hand.
    ratios = sorted(p / o for p, o in zip(times["plain_5"], times["one"]))
    assert abs(median_ratio(times, "plain_5", "one") - ratios[2]) < 1e-12
