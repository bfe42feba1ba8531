"""draft_vocab=K (draftvocab.py): the draft scores only K frequent ids; the output stays the target's."""

from __future__ import annotations


import pytest
import torch

import dustin
from dustin.draftvocab import expand_logits, restricted_draft
from helpers import assert_decodes_like, left_padded, random_prompts, tiny_model, twin_pair

OPTS = dict(backend="eager", budget=16, n_sink=2, window=4, exact_every=3)


def test_frequent_tokens_order():
    got = dustin.frequent_tokens([[5, 3, 5, 7], torch.tensor([3, 5, 9])], vocab_size=10)
    assert got == (5, 3, 7, 9, 0, 1, 2, 4, 6, 8)  # 5 x3, 3 x2, then 7 and 9 once (by id), then unseen ids
    assert dustin.frequent_tokens([[1]], vocab_size=10, keep=3) == (1, 0, 2)
    with pytest.raises(ValueError, match="token ids"):
        dustin.frequent_tokens([[10]], vocab_size=10)


def test_restricted_head_and_expanded_logits():
    draft = tiny_model("qwen2", tie_word_embeddings=True, seed=3)
    ids = torch.tensor([2, 5, 11, 64, 127])
    view = restricted_draft(draft, ids)
    assert view.lm_head.weight.shape == (5, 64) and torch.equal(view.lm_head.weight, draft.lm_head.weight[ids])
    assert draft.lm_head.weight.shape == (128, 64)  # the model itself is untouched
    assert view.model is draft.model  # the body is shared, not copied
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(view(x).logits, draft(x).logits[..., ids])
    logits = torch.randn(3, 5, dtype=torch.float64)
    full = expand_logits(logits, ids, 128)
    assert torch.equal(full[:, ids], logits) and bool(torch.isinf(full).sum() == 3 * 123)
    # Sampling sees the same q over the K ids (to float64 rounding: a softmax over 128 lanes with -inf and one over
    # 5 reduce in different orders; AVX2 hosts differ in the last bit).
    torch.testing.assert_close(full.softmax(-1)[:, ids], logits.softmax(-1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_restricted_draft_is_lossless(mode):
    target, draft, profile = twin_pair("llama", seed=41)
    ids, mask = left_padded(random_prompts([31, 19], seed=43))
    full = dustin.compile(target, draft, profile=profile, mode=mode, gamma=3, **OPTS)
    expected = full.generate(ids, mask, max_new_tokens=30, use_draft=False).sequences
    small = full.with_config(draft_vocab=24)
    out = assert_decodes_like(small, ids, mask, expected, max_new_tokens=30)
    assert sum(out.stats.accepted) < sum(full.generate(ids, mask, max_new_tokens=30).stats.accepted)
    assert small.reports["draft_1"] is not None and small.draft.lm_head.weight.shape == (128, 64)


def test_the_whole_vocabulary_in_frequency_order_changes_nothing():
    target, draft, profile = twin_pair("llama", seed=41)
    ids, mask = left_padded(random_prompts([25], seed=44))
    full = dustin.compile(target, draft, profile=profile, mode="dense", gamma=2, **OPTS)
    a = full.generate(ids, mask, max_new_tokens=20)
    b = full.with_config(draft_vocab=128).generate(ids, mask, max_new_tokens=20)
    assert torch.equal(a.sequences, b.sequences) and a.stats.accepted == b.stats.accepted


def test_draft_vocab_errors():
    target, draft, profile = twin_pair("llama", seed=41)
    with pytest.raises(ValueError, match="frequent_tokens"):
        dustin.compile(target, draft, draft_vocab=16, **OPTS)  # the default profile counts no text
    with pytest.raises(ValueError, match="exceeds the draft's vocabulary"):
        dustin.compile(target, draft, profile=profile, draft_vocab=129, **OPTS)
    with pytest.raises(ValueError, match="draft_vocab"):
        dustin.DustinConfig(draft_vocab=0)
    model = dustin.compile(target, draft, profile=profile, draft_vocab=16, **OPTS)
    with pytest.raises(ValueError, match="draft_vocab"):
        dustin.export(model, torch.tensor([[3, 4, 5]]))
