"""benchmarks/gamma_selection.py against an independent oracle: plain transformers forwards of both models over the
text. Each row's draft token and dense target token must be the models' own argmax at that row's position, whatever
gamma the window had, and a budget covering the whole text must select losslessly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from gamma_selection import measure, summary  # noqa: E402

import dustin  # noqa: E402
from helpers import random_prompts, tiny_model  # noqa: E402

CONTEXT, WINDOWS, GAMMAS, LENGTH = 64, 2, [1, 3, 2], 100
pytestmark = pytest.mark.filterwarnings("ignore:dustin. no calibration profile")


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", num_hidden_layers=3), tiny_model("llama", seed=1, num_hidden_layers=2)


@pytest.mark.parametrize("budget", [LENGTH, 12])
def test_rows_are_the_models_own_tokens_at_their_positions(pair, budget):
    passages = torch.tensor(random_prompts([LENGTH], seed=5))
    model = dustin.compile(*pair, mode="sparse", backend="eager", gamma="auto", gamma_max=max(GAMMAS),
                           budget=budget, n_sink=2, window=4)
    rows = measure(model, passages, CONTEXT, GAMMAS, WINDOWS)
    with torch.no_grad():
        target = pair[0](passages).logits[0].argmax(-1)  # [L]: the token each position predicts next
        draft = pair[1](passages).logits[0].argmax(-1)
    # the gammas take turns on consecutive text: each window starts where the last one's gamma + 1 tokens ended
    windows = sorted({(r["turn"], r["position"] - r["row"], r["gamma"]) for r in rows})
    assert [g for _, _, g in windows] == GAMMAS * WINDOWS
    for (_, start, gamma), (_, following, _) in zip(windows, windows[1:]):
        assert following == start + gamma + 1
    for r in rows:
        p = r["position"]
        if r["row"] < r["gamma"]:
            assert r["draft_equals_dense"] == int(draft[p] == target[p])
        else:
            assert r["draft_equals_dense"] == ""  # the last row judges no draft
        if budget >= LENGTH:  # every position selected: sparse is dense
            assert r["sparse_equals_dense"] == 1 and r["recovery"] == pytest.approx(1.0, abs=1e-5)
            if r["row"] < r["gamma"]:
                assert r["draft_equals_sparse"] == r["draft_equals_dense"]
    table = summary(rows, GAMMAS)
    assert [(t["gamma"], t["row"]) for t in table] == [(g, i) for g in GAMMAS for i in range(g + 1)]
    assert all(t["n"] == WINDOWS for t in table)
