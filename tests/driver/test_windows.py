"""Sliding-window attention is honoured in every role: output equals transformers' own generate.

Real checkpoints carry windows (Mistral-7B-v0.1: 4096, Phi-3-mini: 2047, Qwen2 with ``use_sliding_window``:
per-layer ``layer_types``); here the window (8) is far smaller than the prompts, so ignoring it changes the output
from the first token.
"""

from __future__ import annotations

import pytest
import torch

import dustin
from helpers import hf_greedy, left_padded, random_prompts, tiny_model

WINDOW = 8
WINDOWED = {  # family -> config giving it a window smaller than the prompts
    "mistral": dict(sliding_window=WINDOW),  # every layer sliding
    "phi3": dict(sliding_window=WINDOW),  # every layer sliding
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),  # layer 0 full, 1 sliding
    "qwen3": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
}
PROMPTS = [30, 17, 5]


@pytest.fixture(scope="module", params=sorted(WINDOWED))
def pair(request):
    family, extra = request.param, WINDOWED[request.param]
    target = tiny_model(family, seed=0, **extra)
    draft = tiny_model(family, seed=1, num_hidden_layers=1, **extra)
    ids, mask = left_padded(random_prompts(PROMPTS, seed=61))
    return family, target, draft, ids, mask, hf_greedy(target, ids, mask, 12, eos_token_id=[])


def test_the_window_matters_here(pair):
    """The oracle itself: without its window the target decodes differently (else these tests prove nothing)."""
    family, target, _, ids, mask, expected = pair
    unwindowed = tiny_model(family, seed=0, **{**WINDOWED[family], "sliding_window": None, "use_sliding_window": False})
    assert not torch.equal(hf_greedy(unwindowed, ids, mask, 12, eos_token_id=[]), expected)


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_lossless_modes_equal_target_generate(pair, mode):
    family, target, draft, ids, mask, expected = pair
    model = dustin.compile(target, draft, mode=mode, budget=12, n_sink=2, window=4, gamma=3, exact_every=4,
                           backend="eager")
    out = model.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(out.sequences, expected), f"{family} {mode}: first mismatch {(out.sequences != expected).nonzero()[:3]}"
    windowed = [r for r in model.reports["verify"].records if "sliding window" in r.reason]
    assert windowed and all(r.reason == f"sliding window {WINDOW}" for r in windowed)
    if mode == "exact":
        assert out.stats.sparse_passes > 0


def test_sparse_with_budget_covering_the_context_equals_dense(pair):
    _, target, draft, ids, mask, expected = pair
    model = dustin.compile(target, draft, mode="sparse", budget=128, gamma=2, backend="eager")
    assert torch.equal(model.generate(ids, mask, max_new_tokens=12, eos_token_id=[]).sequences, expected)


def test_draft_window_intersects_the_models_window(pair):
    """draft_kv="window" on a sliding-window draft: both windows apply; exact output stays the target's."""
    _, target, draft, ids, mask, expected = pair
    model = dustin.compile(target, draft, mode="exact", draft_kv="window", draft_window=6, budget=12, n_sink=2,
                           window=4, gamma=2, exact_every=4, backend="eager")
    assert torch.equal(model.generate(ids, mask, max_new_tokens=12, eos_token_id=[]).sequences, expected)


def test_unsupported_layer_kinds_are_refused_naming_the_layer():
    target = tiny_model("qwen2", seed=0)
    odd = tiny_model("qwen2", seed=1, num_hidden_layers=2, layer_types=["full_attention", "chunked_attention"])
    with pytest.raises(dustin.ModelPairError, match=r"`draft` layer 1 is a 'chunked_attention' layer"):
        dustin.compile(target, odd)
