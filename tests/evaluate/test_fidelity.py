"""Teacher-forced fidelity against independent oracles: a plain transformers forward, and the dense identity."""

from __future__ import annotations

import pytest
import torch

import dustin
from dustin.fidelity import fidelity, teacher_forced, window_metrics
from helpers import random_prompts, tiny_model

CONTEXT, WINDOWS, GAMMA, LENGTH = 96, 3, 3, 120
pytestmark = pytest.mark.filterwarnings("ignore:dustin. no calibration profile")


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", num_hidden_layers=3), tiny_model("llama", seed=1, num_hidden_layers=2)


@pytest.fixture(scope="module")
def passages():
    return torch.tensor(random_prompts([LENGTH, LENGTH], seed=3))


@pytest.fixture(scope="module")
def small(pair):
    """8 of ~100 positions; built with the dustin selector, so it serves every selector (one graph capture)."""
    return _model(pair, budget=8)


def _model(pair, budget, **overrides):
    config = dict(mode="sparse", backend="eager", gamma=GAMMA, budget=budget, n_sink=2, window=4)
    return dustin.compile(*pair, **{**config, **overrides})


def test_dense_verification_equals_a_plain_forward_at_the_same_positions(pair, passages):
    """Each window's dense logits are the target's own logits of the text: the right tokens at the right positions
    are committed, and the sparse pass before it leaves nothing behind in the cache."""
    windows = list(teacher_forced(_model(pair, budget=16), passages, CONTEXT, WINDOWS))
    assert len(windows) == WINDOWS + 1 and not windows[0].sparse and all(w.sparse for w in windows[1:])
    with torch.no_grad():
        reference = pair[0](passages).logits
    rows = GAMMA + 1
    for i, window in enumerate(windows):
        start = CONTEXT - 1 + i * rows
        assert window.start == start
        torch.testing.assert_close(window.dense_logits, reference[:, start : start + rows], atol=1e-4, rtol=1e-4)
        assert torch.equal(window.targets, passages[:, start + 1 : start + 1 + rows])


def test_a_budget_covering_the_context_is_lossless(pair, passages):
    result = fidelity(_model(pair, budget=LENGTH), passages, CONTEXT, WINDOWS)
    assert result.windows == WINDOWS and result.rows == WINDOWS * 2 * (GAMMA + 1)
    assert result.agreement == 1.0
    assert abs(result.kl) < 1e-8 and abs(result.ppl_ratio - 1.0) < 1e-6
    assert result.recovery == pytest.approx([1.0] * 3, abs=1e-5)


@pytest.mark.parametrize("selector", ["dustin", "streaming", "oracle"])
def test_a_small_budget_loses_something(small, passages, selector):
    """Not vacuous: at 8 of ~100 positions the sparse logits differ from the dense ones."""
    result = fidelity(small, passages, CONTEXT, WINDOWS, selector=selector)
    assert result.kl > 1e-4 and 0.0 <= result.agreement < 1.0
    assert all(0.0 < r <= 1.0 + 1e-6 for r in result.recovery)
    assert min(result.recovery) < 0.9


def test_no_selector_recovers_more_than_the_oracle(small, passages):
    """An identity, not a tendency: the oracle ranks positions by the very attention mass the recovery measures
    (summed over layers, heads and rows), so its total recovery is the largest any selection of that size has."""
    oracle = sum(fidelity(small, passages, CONTEXT, WINDOWS, selector="oracle").recovery)
    for selector in ("dustin", "history", "draft", "streaming", "snapkv", "quest"):
        assert sum(fidelity(small, passages, CONTEXT, WINDOWS, selector=selector).recovery) <= oracle + 1e-6


def test_window_metrics_by_hand():
    dense = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    sparse = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]])
    m = window_metrics(sparse, dense, torch.tensor([[0, 1]]))
    p = dense.double().softmax(-1)[0, 0]
    q = sparse.double().softmax(-1)[0, 0]
    assert m["agreement"].tolist() == [[0.0, 1.0]]
    assert m["kl"][0, 0].item() == pytest.approx(float((p * (p / q).log()).sum()))
    assert m["kl"][0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert m["nll_dense"][0, 0].item() == pytest.approx(-float(p[0].log()))
    assert m["nll_sparse"][0, 0].item() == pytest.approx(-float(q[0].log()))


def test_refusals_name_the_argument(pair, passages):
    with pytest.raises(ValueError, match="sparse-mode model"):
        teacher_forced(_model(pair, budget=16, mode="dense"), passages, CONTEXT, WINDOWS)
    with pytest.raises(ValueError, match="needs 136: use longer passages"):
        teacher_forced(_model(pair, budget=16), passages, 100, 8)
    with pytest.raises(ValueError, match="selector='dustin'"):
        teacher_forced(_model(pair, budget=16, selector="history"), passages, CONTEXT, WINDOWS, selector="draft")
    with pytest.raises(ValueError, match="outside the target's vocabulary"):
        teacher_forced(_model(pair, budget=16), passages + 128, CONTEXT, WINDOWS)
    with pytest.raises(ValueError, match="windows must be"):
        teacher_forced(_model(pair, budget=16), passages, CONTEXT, 0)
