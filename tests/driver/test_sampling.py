"""Speculative sampling must reproduce the target's distribution (chi-square on a tiny vocabulary)."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import dustin
from helpers import tiny_model

VOCAB, N, GAMMA = 8, 4000, 2
PROMPT = [1, 5, 3]


def _peaked(seed: int, scale: float):
    model = tiny_model("llama", seed=seed, vocab_size=VOCAB)
    model.lm_head.weight.data *= scale  # sharpen so target and draft distributions differ clearly
    return model


def _warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Independent oracle: transformers' own logits warpers."""
    scores = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)


def _marginals(model, steps: int, prompt: list[int] = PROMPT, **warp) -> list[torch.Tensor]:
    """Exact marginal distribution of each of the first ``steps`` sampled tokens, by enumerating prefixes."""
    out, joint = [], {(): 1.0}
    with torch.no_grad():
        for _ in range(steps):
            prefixes = list(joint)
            ids = torch.tensor([prompt + list(p) for p in prefixes])
            probs = _warp(model(ids).logits[:, -1].double(), **warp)
            marginal = torch.zeros(VOCAB, dtype=torch.float64)
            new_joint = {}
            for i, prefix in enumerate(prefixes):
                marginal += joint[prefix] * probs[i]
                for tok in range(VOCAB):
                    new_joint[prefix + (tok,)] = joint[prefix] * float(probs[i, tok])
            out.append(marginal)
            joint = new_joint
    return out


def _chi2_pvalue(samples: torch.Tensor, expected: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=VOCAB).double()
    keep = expected * len(samples) >= 5  # pool the cells too small for the chi-square approximation
    obs = torch.cat([counts[keep], counts[~keep].sum()[None]]).numpy()
    exp = torch.cat([expected[keep], expected[~keep].sum()[None]]).numpy() * len(samples)
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0  # sampled a token the distribution gives probability 0
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)


@pytest.mark.parametrize("warp", [dict(temperature=1.0, top_k=0, top_p=1.0),
                                  dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_tokens_follow_the_target_distribution(warp):
    target, draft = _peaked(0, 25.0), _peaked(1, 25.0)
    model = dustin.compile(target, draft, gamma=GAMMA, backend="eager", max_length=16)
    ids = torch.tensor([PROMPT] * N)
    out = model.generate(ids, max_new_tokens=3, do_sample=True, eos_token_id=[],
                         generator=torch.Generator().manual_seed(1234), **warp)
    samples = out.sequences[:, len(PROMPT):]
    assert out.stats.accepted and 0 < sum(out.stats.accepted) < 3 * N  # both accept and reject paths ran
    expected = _marginals(target, 3, **warp)
    for k in range(3):
        assert _chi2_pvalue(samples[:, k], expected[k]) > 1e-3, f"token {k + 1} does not follow the target"
    # Power: the draft's own distribution (what an accept-everything rule would give) is clearly rejected.
    draft_first = _marginals(draft, 1, **warp)[0]
    assert _chi2_pvalue(samples[:, 0], draft_first) < 1e-6


def test_sampling_is_reproducible_with_a_generator():
    target, draft = _peaked(0, 25.0), _peaked(1, 25.0)
    model = dustin.compile(target, draft, gamma=GAMMA, backend="eager", max_length=32)
    ids = torch.tensor([PROMPT] * 4)
    runs = [model.generate(ids, max_new_tokens=9, do_sample=True, eos_token_id=[],
                           generator=torch.Generator().manual_seed(7)).sequences for _ in range(2)]
    assert torch.equal(*runs)


def test_warp_probs_matches_transformers_warpers():
    from dustin.sampling import Sampling, warp_probs

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for t, k, p in itertools.product([0.5, 1.3], [0, 7], [1.0, 0.8]):
        ours = warp_probs(logits, Sampling(True, t, k, p))
        theirs = _warp(logits, temperature=t, top_k=k, top_p=p)
        torch.testing.assert_close(ours, theirs.float(), atol=1e-6, rtol=1e-5)


def test_exact_mode_sampling_follows_the_target_distribution():
    """Sparse verification with a budget far below the context, made lossless by the dense check."""
    target, draft = _peaked(0, 25.0), _peaked(1, 25.0)
    prompt = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    model = dustin.compile(target, draft, mode="exact", gamma=GAMMA, budget=6, n_sink=1, window=2, exact_every=2,
                           backend="eager", max_length=64)
    ids = torch.tensor([prompt] * N)
    out = model.generate(ids, max_new_tokens=3, do_sample=True, eos_token_id=[],
                         generator=torch.Generator().manual_seed(99))
    samples = out.sequences[:, len(prompt):]
    assert out.stats.sparse_passes > 0 and out.stats.rolled_back > 0  # the check really corrected tokens
    expected = _marginals(target, 3, prompt, temperature=1.0, top_k=0, top_p=1.0)
    for k in range(3):
        assert _chi2_pvalue(samples[:, k], expected[k]) > 1e-3, f"token {k + 1} does not follow the target"
