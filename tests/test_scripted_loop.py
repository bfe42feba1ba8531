"""benchmarks/scripted_loop.py (what plain_in_loop.py and verify_switch.py drive the loop with): the scripted planner
takes the script's gammas, and (where asked) makes the planner's real choice first, so that the arm pays the planner's
per-iteration work; the phase timer sees every call of its phase and puts the driver back as it was."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from scripted_loop import scripted, timed  # noqa: E402
from verify_switch import SEQUENCES  # noqa: E402

import dustin  # noqa: E402
from dustin import driver  # noqa: E402
from dustin.adaptive import GammaPlanner  # noqa: E402
from helpers import random_prompts, tiny_model  # noqa: E402


def _planner() -> GammaPlanner:
    planner = GammaPlanner(2)
    for rows, seconds in ((1, 0.3), (2, 0.35), (3, 0.4)):
        planner.record_cost("verify", rows, 2048, seconds)
    planner.record_cost("draft", 1, 2048, 0.1)
    planner.record_cost("draft", 2, 2048, 0.2)
    planner.record_cost("other", 1, 2048, 0.0)
    return planner


def test_the_script_then_plain_decoding():
    """plain_in_loop.py's arms: the script's gammas, then 0."""
    for compute in (False, True):
        planner = _planner()
        choose = scripted(planner, itertools.chain([2, 1], itertools.repeat(0)),
                          planner.choose if compute else None)
        picks = [choose(2048)[0] for _ in range(5)]
        assert picks == [2, 1, 0, 0, 0]
        assert planner.last["why"] == "scripted"
        # the real choice ran (an informed choice is counted) only where asked
        assert planner.choices == (5 if compute else 0)


def test_sequences_repeat_and_replace_the_choice():
    """verify_switch.py's sequences: over and over, whatever the planner would have chosen."""
    planner = GammaPlanner(4)
    choose = scripted(planner, itertools.cycle(SEQUENCES["gamma 1 x 7, then 4"]))
    picks = [choose(4096, "verify", 0, 48)[0] for _ in range(17)]
    assert picks == ([1] * 7 + [4]) * 2 + [1]
    assert planner.last == {"why": "scripted", "rates": {}} and planner.choices == 0  # no informed choice was made
    assert all(max(p) <= planner.gamma_max for p in SEQUENCES.values())


@pytest.mark.filterwarnings("ignore:dustin. no calibration profile")
def test_the_phase_timer_sees_every_verification_and_restores_the_driver():
    model = dustin.compile(tiny_model("llama", num_hidden_layers=2), tiny_model("llama", seed=1, num_hidden_layers=1),
                           mode="dense", backend="eager")
    ids = torch.tensor(random_prompts([40], seed=2))
    model.planner.choose = scripted(model.planner, itertools.cycle([2, 0, 1]))
    original, seen = driver.Generation.verify, []
    with timed("verify", lambda generation, seconds: seen.append((generation.gamma, seconds))):
        out = model.generate(ids, max_new_tokens=12, eos_token_id=[])
    assert driver.Generation.verify is original
    assert len(seen) == out.stats.target_passes and all(s > 0 for _, s in seen)
    assert [g for g, _ in seen] == [[2, 0, 1][i % 3] for i in range(len(seen))]
