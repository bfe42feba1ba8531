"""Calibration: the choice logic finds planted signals; profiles round-trip through JSON and refuse other models."""

from __future__ import annotations

import pytest
import torch

import dustin
from dustin.calibrate import choose
from dustin.recording import WindowRecord
from helpers import random_prompts, tiny_model

S, T_LAYERS, T_HEADS, D_LAYERS, D_HEADS = 200, 4, 6, 3, 5


def _planted(seed: int) -> WindowRecord:
    """Truth concentrated on a random set of positions. Only target layer 2 heads {1, 2} (KV group 0 of heads
    {0, 1, 2}) and draft layer 1 head 3 see it (their score = truth + noise); every other head scores noise. Layer 3's truth is diffuse (worst)."""
    g = torch.Generator().manual_seed(seed)
    hot = torch.randperm(S - 20, generator=g)[:30] + 4
    peak = torch.full((S,), 1e-3)
    peak[hot] = 1.0
    peak /= peak.sum()
    truth = peak.repeat(T_LAYERS, 1, 1).clone()
    truth[3] = torch.full((1, S), 1.0 / S)

    def noise(*shape):
        return torch.rand(*shape, 1, S, generator=g) * peak.max()

    hist, draft = noise(T_LAYERS, T_HEADS), noise(D_LAYERS, D_HEADS)
    hist[2, [1, 2]] = peak + 0.1 * noise(2)
    draft[1, 3] = peak + 0.1 * noise(1)[0]
    return WindowRecord(torch.tensor([S]), truth, hist, draft)


def test_choose_finds_the_planted_heads_and_keeps_the_worst_layer_dense():
    records = [_planted(seed) for seed in range(4)]
    choice = choose(records, T_LAYERS, D_LAYERS, budget=48, n_sink=2, window=6, history_heads=2, draft_layers=2,
                    draft_heads=1, max_dense_layers=1, worst_weight=0.5, group_size=3)
    assert choice["history_layer"] == 2 and choice["history_heads"] == (1, 2)
    assert choice["draft_layers"][0] == (1, (3,))
    assert choice["dense_layers"] == (3,)
    recovery = choice["recovery"]
    assert min(recovery[:3]) > 0.8 and recovery[3] < 0.3  # planted layers recovered; the diffuse one is not


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", num_hidden_layers=3), tiny_model("llama", seed=1, num_hidden_layers=2)


@pytest.fixture(scope="module")
def profile(pair):
    texts = random_prompts([120, 90], seed=5)
    return dustin.calibrate(*pair, texts, budget=24, n_sink=2, window=4, gamma=2, windows=2, progress=False)


def test_calibrated_profile_is_well_formed(pair, profile):
    assert 0 <= profile.history_layer < 3 and len(profile.history_heads) == 2  # one KV group of 4 q / 2 kv heads
    assert len({h // 2 for h in profile.history_heads}) == 1
    assert 1 <= len(profile.draft_layers) <= 2 and all(0 <= layer < 2 for layer, _ in profile.draft_layers)
    assert profile.m_fraction in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert len(profile.dense_layers) == 2 and len(profile.recovery) == 3
    assert all(0.0 < r <= 1.0 for r in profile.recovery)
    # Token ids by frequency in the calibration texts (what draft_vocab reads): every vocabulary id once, the
    # counts of the texts' ids non-increasing along the list.
    counts = torch.bincount(torch.tensor(sum(random_prompts([120, 90], seed=5), [])), minlength=128)
    assert sorted(profile.frequent_tokens) == list(range(128))
    ordered = counts[list(profile.frequent_tokens)]
    assert bool((ordered[:-1] >= ordered[1:]).all())


def test_profile_json_round_trip_and_use(pair, profile, tmp_path):
    path = str(tmp_path / "profile.json")
    profile.save(path)
    assert dustin.DustinProfile.load(path) == profile
    model = dustin.compile(*pair, profile=path, mode="sparse", budget=24, n_sink=2, window=4, backend="eager")
    model.generate(torch.tensor([random_prompts([60], seed=6)[0]]), max_new_tokens=6, eos_token_id=[])
    taps = [r for r in model.report.records if r.action == "query tap"]
    assert [r.layer for r in taps] == [profile.history_layer]
    dense = {r.layer for r in model.report.records if r.action == "dense (dense_layers)"}
    assert dense == set(profile.dense_layers)
    score_taps = {r.layer for r in model.reports["draft_1"].records if r.action == "score tap"}
    assert score_taps == {layer for layer, _ in profile.draft_layers}


def test_profile_for_other_models_is_refused(pair, profile):
    other = tiny_model("llama", seed=2, num_hidden_layers=4)
    with pytest.raises(dustin.ProfileError, match=r"calibrated for target .* run dustin.calibrate"):
        dustin.compile(other, pair[1], profile=profile)


def test_calibrate_input_errors(pair):
    with pytest.raises(ValueError, match=r"`texts` is empty"):
        dustin.calibrate(*pair, [])
    with pytest.raises(ValueError, match=r"pass tokenizer="):
        dustin.calibrate(*pair, ["some text"])
    with pytest.raises(ValueError, match=r"budget \(8\) must exceed n_sink \+ window"):
        dustin.calibrate(*pair, [[1, 2, 3]], budget=8, n_sink=4, window=4)
