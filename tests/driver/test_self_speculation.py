"""Self-speculation (no draft model): the target drafts through a windowed, optionally layer-skipping view of
itself that shares its weights and KV cache. Lossless modes equal the target's own greedy decoding on every family."""

from __future__ import annotations

import pytest
import torch

import dustin
from helpers import FAMILIES, hf_greedy, left_padded, random_prompts, tiny_model

SETTINGS = dict(backend="eager", gamma=3, budget=24, n_sink=2, window=6, draft_window=8, exact_every=4)
NEW = 14


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lossless_self_speculation_equals_target_greedy(family):
    target = tiny_model(family, seed=2, num_hidden_layers=3)
    ids, mask = left_padded(random_prompts([40, 23], seed=1))
    want = hf_greedy(target, ids, mask, NEW, eos_token_id=[])
    for mode, layers in (("dense", ()), ("exact", (0, 2))):
        model = dustin.compile(target, mode=mode, draft_layers=layers, **SETTINGS)
        out = model.generate(ids, mask, max_new_tokens=NEW, eos_token_id=[], pad_token_id=0)
        assert torch.equal(out.sequences, want), (family, mode, layers)
        assert sum(out.stats.accepted) > 0  # drafted tokens were accepted: it did speculate


def test_one_cache_shared_weights_and_no_draft_prefill():
    target = tiny_model("llama", seed=3, num_hidden_layers=3)
    ids, mask = left_padded(random_prompts([33], seed=4))
    model = dustin.compile(target, "self", mode="sparse", draft_layers=(0, 1), **SETTINGS)
    model.generate(ids, mask, max_new_tokens=8)
    caches = model.state.caches
    assert caches.shared and caches.draft is caches.target
    assert model.draft.model.layers[1] is target.model.layers[1] and len(model.draft.model.layers) == 2
    assert len(target.model.layers) == 3 and target.config.num_hidden_layers == 3  # the target is untouched
    roles = {key[0] for key in model._graphs}
    assert "prefill_draft" not in roles and "draft_2" not in roles and "draft_1" in roles
    assert model.reports["draft_1"].count("window") == 2  # the StreamingLLM window, in the two kept layers
    assert model.reports["draft_1"].count("score tap") >= 1  # the lookahead signal comes from the self-draft


def test_self_speculation_arguments_are_checked():
    target = tiny_model("llama", seed=0)
    draft = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="`draft_layers` selects the layers of a self-draft"):
        dustin.compile(target, draft, draft_layers=(0,), **SETTINGS)
    with pytest.raises(dustin.ModelPairError, match="`draft` must be a Hugging Face causal LM .*got str"):
        dustin.compile(target, "tiny", **SETTINGS)
    with pytest.raises(ValueError, match=r"draft_layers must be increasing, distinct target layers in \[0, 2\)"):
        dustin.compile(target, draft_layers=(0, 5), **SETTINGS)
    model = dustin.compile(target, draft_layers=(1,), **SETTINGS)
    with pytest.raises(ValueError, match="another model"):
        model.with_config(draft_layers=(0,))
