"""gamma="auto": the planner's model (adaptive.py) and the driver running a different gamma every iteration."""

from __future__ import annotations

import argparse
import copy
import itertools

import pytest
import torch

import dustin
from dustin.adaptive import ACCEPT_DECAY, PROBE_EVERY, GammaPlanner, context_bucket
from dustin.flags import add_config_arguments, config_overrides
from helpers import always_wrong_draft, left_padded, random_prompts, tiny_model

OPTS = dict(budget=16, n_sink=2, window=4, backend="eager", exact_every=3)


def _expected_by_enumeration(alphas: list[float], gamma: int) -> float:
    """E[committed tokens] by enumerating every accept/reject pattern of gamma independent drafts (float64)."""
    total = 0.0
    for pattern in itertools.product((True, False), repeat=gamma):
        p, accepted = 1.0, 0
        for ok, alpha in zip(pattern, alphas):
            p *= alpha if ok else 1 - alpha
        for ok in pattern:
            if not ok:
                break
            accepted += 1
        total += p * (accepted + 1)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_expected_tokens_equal_enumeration(seed):
    g = torch.Generator().manual_seed(seed)
    planner = GammaPlanner(5)
    alphas = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    planner.tried, planner.accepted = [1.0] * 5, alphas
    for gamma in range(6):
        assert planner.expected_tokens(gamma) == pytest.approx(_expected_by_enumeration(alphas, gamma))


def _measured(planner: GammaPlanner, context: int, verify, draft_step: float, other: float = 0.0) -> None:
    for gamma in range(planner.gamma_max + 1):
        planner.record_cost("verify", gamma + 1, context, verify(gamma + 1))
        if gamma:
            planner.record_cost("draft", gamma, context, gamma * draft_step)
    planner.record_cost("other", 1, context, other)


def test_choice_is_the_argmax_of_expected_tokens_per_second():
    planner = GammaPlanner(4)
    context = 3000
    order = [planner.choose(context)[0] for _ in range(1)]
    assert order == [4]  # nothing measured: gamma_max is explored first
    _measured(planner, context, verify=lambda rows: 0.1 + 0.01 * rows, draft_step=0.02)
    for accepted_rate, expected in ((0.95, 4), (0.0, 0)):
        planner.tried, planner.accepted = [1.0] * 4, [accepted_rate] * 4
        gamma, rate = planner.choose(context)
        rates = {g: planner.expected_tokens(g) / planner.iteration_time(g, context) for g in range(5)}
        assert gamma == expected == max(rates, key=rates.get)
        assert rate == pytest.approx(rates[gamma])
    # A verification whose cost doubles past 2 rows (the skinny-GEMM cliff): the best gamma is 1.
    planner = GammaPlanner(4)
    _measured(planner, context, verify=lambda rows: 0.1 if rows <= 2 else 0.2, draft_step=0.01)
    planner.tried, planner.accepted = [1.0] * 4, [0.7] * 4
    assert planner.choose(context)[0] == 1


def test_exploration_then_interpolation_and_nearest_bucket():
    planner = GammaPlanner(3)
    seen = []
    for _ in range(4):
        gamma, rate = planner.choose(1000)
        assert rate is None
        seen.append(gamma)
        planner.record_cost("verify", gamma + 1, 1000, 0.1 * (gamma + 1))
    assert seen == [3, 0, 2, 1]  # the ends first, then downwards
    assert planner.choose(1000)[1] is not None
    assert planner.cost("verify", 3, 1000) == pytest.approx(0.3)
    del planner.costs[("verify", 3, context_bucket(1000))]
    assert planner.cost("verify", 3, 1000) == pytest.approx(0.3)  # interpolated between 2 and 4 rows
    assert planner.cost("verify", 2, 5000) == pytest.approx(0.2)  # another bucket borrows the nearest one's
    assert planner.cost("draft", 2, 1000) is None


def test_acceptance_counts_per_position():
    planner = GammaPlanner(3)
    planner.tried, planner.accepted = [0.0] * 3, [0.0] * 3
    planner.record_acceptance(3, [3, 1, 0, 0])  # row 0 all; row 1 first only; rows 2-3 none
    tried = [t / ACCEPT_DECAY for t in planner.tried]
    accepted = [a / ACCEPT_DECAY for a in planner.accepted]
    assert tried == pytest.approx([4, 2, 1]) and accepted == pytest.approx([2, 1, 1])


def test_probes_keep_a_gamma_zero_streak_learning():
    planner = GammaPlanner(4)
    _measured(planner, 3000, verify=lambda rows: 0.1 * rows, draft_step=0.05)
    planner.tried, planner.accepted = [1.0] * 4, [0.0] * 4  # a useless draft: 0 is best
    picks = [planner.choose(3000)[0] for _ in range(4 * PROBE_EVERY)]
    assert picks.count(0) == 4 * PROBE_EVERY - 4 and picks.count(1) == 4  # one probe of gamma = 1 per period
    planner.tried, planner.accepted = [1.0] * 4, [1.0] * 4  # the draft became perfect (as the probes measure)
    planner.costs.clear()
    _measured(planner, 3000, verify=lambda rows: 0.1, draft_step=0.01)
    picks = [planner.choose(3000)[0] for _ in range(2 * PROBE_EVERY)]
    assert picks.count(4) == 2 * PROBE_EVERY - 2 and picks.count(3) == 2


class Scripted:
    """A planner that plays a fixed gamma sequence (cycled): drives the loop through every transition."""

    def __init__(self, gammas: list[int]) -> None:
        self.gammas, self.i = gammas, 0

    def choose(self, context: int):
        gamma = self.gammas[self.i % len(self.gammas)]
        self.i += 1
        return gamma, None

    def record_cost(self, *args) -> None:
        pass

    def record_acceptance(self, *args) -> None:
        pass


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_any_gamma_sequence_decodes_the_targets_greedy_tokens(mode):
    """Runs of gamma = 0 leave the draft behind by up to 21 tokens; it catches up in pieces of 8 rows, the last one
    rounded up to 1, 2, 4 or 8 rows (re-running committed positions), and must then hold exactly the K/V a fresh
    prefill computes."""
    target = tiny_model("llama", num_hidden_layers=3, seed=11)
    draft = copy.deepcopy(target)  # always right: any stale draft K/V shows up as a rejected token
    ids, mask = left_padded(random_prompts([29, 18, 40], seed=12))
    model = dustin.compile(target, draft, mode=mode, gamma_max=4, max_length=256, **OPTS)
    expected = model.generate(ids, mask, max_new_tokens=45, use_draft=False).sequences
    model.planner = Scripted([0] * 19 + [3, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 2, 4, 4])
    out = model.generate(ids, mask, max_new_tokens=45)
    assert torch.equal(out.sequences, expected)
    assert out.stats.accepted and sum(out.stats.accepted) > 0
    # The draft's cache after the call equals a fresh dense prefill of the final text, at every position it has
    # processed (it never ran its own last proposals).
    draft_cache = model._state.caches.draft
    prompts = [row[m.bool()] for row, m in zip(ids, mask)]
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            text = out.sequences[b, ids.shape[1] - len(prompt):]
            text = text[: len(prompt) + 45]
            ref = draft(text[None], use_cache=True)
            done = len(text) - 25  # positions the draft surely processed (it may lag by a gamma=0 run at the end)
            for layer, kv in enumerate(ref.past_key_values.layers):
                got = draft_cache.layers[layer].keys[b, :, :done]
                torch.testing.assert_close(got, kv.keys[0, :, :done], rtol=1e-4, atol=1e-4)


def test_auto_follows_the_draft_quality():
    target = tiny_model("qwen2", num_hidden_layers=2, seed=21)
    ids, mask = left_padded(random_prompts([33], seed=22))
    good = dustin.compile(target, copy.deepcopy(target), **OPTS)
    assert good.config.gamma == "auto" and good.config.max_draft == 4
    expected = good.generate(ids, mask, max_new_tokens=60, use_draft=False).sequences
    for _ in range(2):  # the second call starts from what the first learnt
        out = good.generate(ids, mask, max_new_tokens=60)
    assert torch.equal(out.sequences, expected)
    assert max(out.stats.gammas, key=out.stats.gammas.get) > 0 and out.stats.predicted
    bad = dustin.compile(target, always_wrong_draft(target), **OPTS)
    for _ in range(2):
        out = bad.generate(ids, mask, max_new_tokens=60)
    assert torch.equal(out.sequences, expected)
    assert max(out.stats.gammas, key=out.stats.gammas.get) == 0  # a draft that is never right is not run
    assert "gamma chosen" in out.stats.table()


def test_sampling_with_auto_gamma_runs_and_respects_top_k():
    target = tiny_model("llama", num_hidden_layers=2, seed=31)
    ids, mask = left_padded(random_prompts([20, 26], seed=32))
    model = dustin.compile(target, copy.deepcopy(target), mode="exact", **OPTS)
    model.planner = Scripted([0, 2, 0, 0, 4, 1])
    g = torch.Generator().manual_seed(0)
    out = model.generate(ids, mask, max_new_tokens=30, do_sample=True, top_k=1, generator=g)
    assert torch.equal(out.sequences, model.generate(ids, mask, max_new_tokens=30, use_draft=False).sequences)


def test_config_and_flags():
    cfg = dustin.DustinConfig()
    assert cfg.gamma == "auto" and cfg.adaptive and cfg.max_draft == cfg.gamma_max == 4
    assert dustin.DustinConfig(gamma=3).max_draft == 3 and not dustin.DustinConfig(gamma=3).adaptive
    assert dustin.DustinConfig(gamma_max=6, mode="exact", exact_every=5).positions_ahead == 7 + 5 + 6
    for bad in ("fast", 0, -1, 2.5):
        with pytest.raises(ValueError, match="gamma"):
            dustin.DustinConfig(gamma=bad)
    with pytest.raises(ValueError, match="gamma_max"):
        dustin.DustinConfig(gamma_max=0)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ("gamma", "gamma_max"))
    assert config_overrides(parser.parse_args(["--gamma", "auto"])) == {"gamma": "auto"}
    assert config_overrides(parser.parse_args(["--gamma", "3", "--gamma-max", "6"])) == {"gamma": 3, "gamma_max": 6}
