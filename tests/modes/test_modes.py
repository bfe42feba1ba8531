"""Verification modes and selectors on tiny random models (mechanics and exactness; not accuracy)."""

from __future__ import annotations

import pytest
import torch

import dustin
from dustin.config import SELECTORS
from helpers import hf_greedy, left_padded, random_prompts, tiny_model

PROMPTS = [40, 23, 57]  # ragged, longer than the budgets below
SMALL = dict(budget=16, n_sink=2, window=4, backend="eager", gamma=3)


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1, num_hidden_layers=1)


@pytest.fixture(scope="module")
def expected(pair):
    ids, mask = left_padded(random_prompts(PROMPTS, seed=21))
    return ids, mask, hf_greedy(pair[0], ids, mask, 20, eos_token_id=[])


@pytest.mark.parametrize("selector", SELECTORS)
def test_exact_greedy_equals_target_for_every_selector(pair, expected, selector):
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="exact", selector=selector, exact_every=6, **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    assert out.stats.sparse_passes > 0 and out.stats.dense_passes > 0


@pytest.mark.parametrize("budget", [8, 24])
def test_exact_greedy_several_budgets_and_eos(pair, budget):
    prompts = random_prompts(PROMPTS, seed=22)
    ids, mask = left_padded(prompts)
    free = hf_greedy(pair[0], ids, mask, 18, eos_token_id=[])
    eos = int(free[2, ids.shape[1] + 9])
    reference = hf_greedy(pair[0], ids, mask, 18, eos_token_id=eos)
    model = dustin.compile(*pair, mode="exact", **{**SMALL, "budget": budget, "window": 2})
    out = model.generate(ids, mask, max_new_tokens=18, eos_token_id=eos)
    assert torch.equal(out.sequences, reference)


def test_sparse_with_budget_covering_the_context_equals_dense(pair, expected):
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="sparse", **{**SMALL, "budget": 128})
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    assert out.stats.dense_passes == 1  # the first verification seeds the history signal
    assert out.stats.sparse_passes == out.stats.target_passes - 1
    assert model.report.rewritten == 2 and model.report.count("sparse") == 2


def test_guarded_with_full_recovery_required_is_dense(pair, expected):
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="guarded", min_recovery=1.0, refresh_every=0, **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    assert out.stats.sparse_passes == 0 and out.stats.dense_passes == out.stats.target_passes


def test_guarded_refreshes_every_r_iterations(pair, expected):
    ids, mask, _ = expected
    model = dustin.compile(*pair, mode="guarded", refresh_every=3, min_recovery=0.0, **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert out.stats.dense_passes == 1 + (out.stats.target_passes - 1) // 3  # the first, then every third
    assert out.stats.sparse_passes == out.stats.target_passes - out.stats.dense_passes


def test_sparse_small_budget_runs_and_reports(pair, expected):
    """Lossy mode: the output may differ from dense; it must be well-formed and the pass report complete."""
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="sparse", dense_layers=(1,), **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert out.sequences.shape == reference.shape
    assert model.report.count("sparse") == 1 and model.report.count("dense (dense_layers)") == 1
    assert out.stats.new_tokens == [20, 20, 20]


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_target_alone_through_the_same_graphs(pair, expected, mode):
    """use_draft=False: the autoregressive baselines (dense, and sparse made exact) still equal target greedy."""
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode=mode, exact_every=5, **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[], use_draft=False)
    assert torch.equal(out.sequences, reference)
    assert out.stats.draft_passes == 0 and out.stats.tau <= 1.0


def test_warmup_compiles_every_decode_graph_and_keeps_the_cache(pair, expected):
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="exact", exact_every=5, **SMALL)
    model.warmup(ids, mask, max_new_tokens=20)
    compiled = set(model.reports)
    assert {"prefill_target", "prefill_draft", "draft_1", "draft_2", "verify", "check"} <= compiled
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert set(model.reports) == compiled and out.stats.prefill_passes == 0
    assert torch.equal(out.sequences, reference)


def test_warmup_without_graphs_only_prefills_and_siblings_share_it(pair, expected):
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="dense", **SMALL)
    model.warmup(ids, mask, max_new_tokens=20, graphs=False)
    assert set(model.reports) == {"prefill_target", "prefill_draft"}
    out = model.with_config(mode="exact", exact_every=5).generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert out.stats.prefill_passes == 0 and torch.equal(out.sequences, reference)


def test_draft_window_attention(pair, expected):
    """draft_kv='window': the draft attends to sink + recent positions (its score taps still read the full cache);
    exact mode keeps the output equal to the target's."""
    ids, mask, reference = expected
    model = dustin.compile(*pair, mode="exact", draft_kv="window", draft_window=8, exact_every=5, **SMALL)
    out = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    draft_report = model.reports["draft_1"]
    assert draft_report.count("window") == 1 and draft_report.count("score tap") == 1


@pytest.mark.parametrize("mode, draft_kv, expected_window", [
    ("dense", "auto", False), ("sparse", "auto", True), ("guarded", "auto", True), ("exact", "auto", True),
    ("sparse", "full", False), ("dense", "window", True),
])
def test_draft_kv_auto_resolves_per_mode(pair, mode, draft_kv, expected_window):
    """The default ``draft_kv="auto"`` gives the draft a KV window exactly in the sparse modes."""
    model = dustin.compile(*pair, mode=mode, draft_kv=draft_kv, **SMALL)
    assert model.config.draft_attention == ("window" if expected_window else "full")
    assert model.plan("draft_1").window_attention is expected_window
    assert model.plan("draft_2").window_attention is expected_window


def test_window_indices():
    from dustin.cache import window_indices

    out = torch.empty(3, 2 + 4, dtype=torch.long)
    window_indices(torch.tensor([3, 6, 20]), n_sink=2, window=4, out=out)
    assert out.tolist() == [[0, 1, 2, -1, -1, -1], [0, 1, 2, 3, 4, 5], [0, 1, 16, 17, 18, 19]]


@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_returns_valid_index_sets(pair, expected, selector, monkeypatch):
    """After every selection: exact size, sorted, unique, -1 only at the end, below each row's length, sink and
    recent window present."""
    from dustin.driver import Generation

    ids, mask, _ = expected
    seen = []
    original = Generation.select

    def checked(self, drafted):
        selection = original(self, drafted)
        if selection.role == "verify":
            seen.append((self.state.indices.clone(), (self.n - 1).clone(), self.active.clone()))
        return selection

    monkeypatch.setattr(Generation, "select", checked)
    cfg = {**SMALL, "budget": 20, "window": 5, "n_sink": 3}
    dustin.compile(*pair, mode="sparse", selector=selector, **cfg).generate(ids, mask, max_new_tokens=12,
                                                                           eos_token_id=[])
    assert seen
    for indices, lens, active in seen:
        assert indices.shape == (3, 20)
        for row, length, alive in zip(indices.tolist(), lens.tolist(), active.tolist()):
            valid = [i for i in row if i >= 0]
            if not alive:
                continue
            assert row[: len(valid)] == valid == sorted(set(valid)), row  # sorted, unique, padding at the end
            assert all(0 <= i < length for i in valid)
            assert len(valid) == min(20, length)
            assert set(range(3)) | set(range(length - 5, length)) <= set(valid)


def test_finished_rows_read_no_cached_keys(pair):
    """A row that hit eos keeps its batch slot (static shapes) but its selection is emptied: it reads no cache."""
    from dustin.driver import Generation

    prompts = random_prompts(PROMPTS, seed=23)
    ids, mask = left_padded(prompts)
    model = dustin.compile(*pair, mode="sparse", **SMALL)
    free = model.generate(ids, mask, max_new_tokens=16, eos_token_id=[]).sequences  # deterministic: rerun below
    eos = int(free[1, ids.shape[1] + 1])  # row 1 stops after 2 tokens
    snapshots = []
    original = Generation.select

    def spy(self, drafted):
        selection = original(self, drafted)
        if selection.role == "verify":
            snapshots.append((self.active.clone(), self.state.indices.clone()))
        return selection

    import unittest.mock as mock

    with mock.patch.object(Generation, "select", spy):
        model.generate(ids, mask, max_new_tokens=16, eos_token_id=eos)
    finished = [(active, indices) for active, indices in snapshots if not bool(active[1])]
    assert finished and all(bool((indices[1] == -1).all()) for _, indices in finished)


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_finished_rows_read_no_cache_in_any_role(pair, mode):
    """After a row stops, every forward (drafts, verifications, exact checks) gives it seq_lens 0, the draft's
    window and score taps nothing to read; rows with provisional tokens left are still read in full (exact)."""
    from dustin.driver import Generation

    prompts = random_prompts(PROMPTS, seed=24)
    ids, mask = left_padded(prompts)
    free = hf_greedy(pair[0], ids, mask, 16, eos_token_id=[])
    eos = int(free[1, ids.shape[1] + 1])  # row 1 stops after 2 tokens
    seen = []
    original = Generation.forward

    def spy(self, role, tokens, pos):
        out = original(self, role, tokens, pos)
        seen.append((role, self.settled().clone(), self.state.seq_lens.clone(), pos[:, 0].clone()))
        return out

    model = dustin.compile(*pair, mode=mode, draft_kv="window", draft_window=8, **{**SMALL, "exact_every": 4})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Generation, "forward", spy)
        out = model.generate(ids, mask, max_new_tokens=16, eos_token_id=eos)
    assert torch.equal(out.sequences, hf_greedy(pair[0], ids, mask, 16, eos_token_id=eos))
    roles = {role for role, settled, _, _ in seen if bool(settled.any())}
    assert {"draft_1", "verify"} <= roles and (mode == "dense" or "check" in roles or "verify" in roles)
    for role, settled, seq_lens, start in seen:
        assert bool((seq_lens[settled] == 0).all()), role
        assert torch.equal(seq_lens[~settled], start[~settled]), role
