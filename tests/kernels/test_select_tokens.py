"""dustin::select_tokens, judged by set properties and selected score mass against brute force (never index order)."""

from __future__ import annotations

import pytest
import torch

from dustin.kernels import select_tokens

BUDGET, SINK, WINDOW = 64, 4, 16
LENS = [1, BUDGET - 1, BUDGET, BUDGET + 1, 700, 3000]


def _scores(lens, width, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(len(lens), width, generator=g)
    beyond = torch.arange(width)[None, :] >= torch.tensor(lens)[:, None]
    return scores.masked_fill(beyond, 1e9).to(dtype)  # huge junk past L must never be chosen


def _check_set(row: torch.Tensor, length: int, budget: int, n_sink: int, window: int) -> set[int]:
    values = row.tolist()
    assert len(values) == budget
    kept = [v for v in values if v >= 0]
    assert values[len(kept):] == [-1] * (budget - len(kept)), "-1 padding only at the end"
    assert kept == sorted(kept) and len(set(kept)) == len(kept), "sorted, no duplicates"
    assert all(0 <= v < length for v in kept), "nothing at or past seq_len"
    if length <= budget:
        assert kept == list(range(length)), "short rows are dense"
    else:
        assert len(kept) == budget
        protected = set(range(n_sink)) | set(range(length - window, length))
        assert protected <= set(kept), "sink and window present"
    return set(kept)


def _top_mass(scores: torch.Tensor, candidates: list[int], count: int) -> float:
    return float(scores[candidates].double().sort(descending=True).values[:count].sum())


def _outside(chosen: set[int], length: int, n_sink: int, window: int) -> list[int]:
    return sorted(p for p in chosen if n_sink <= p < length - window)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("which", ["draft", "hist"])
def test_single_signal_takes_top_mass(which, dtype):
    scores = _scores(LENS, 3100, seed=1, dtype=dtype)
    args = (scores, None) if which == "draft" else (None, scores)
    out = select_tokens(*args, torch.tensor(LENS), budget=BUDGET, n_sink=SINK, window=WINDOW, m=7)
    assert out.dtype == torch.int64 and out.shape == (len(LENS), BUDGET)
    for b, length in enumerate(LENS):
        chosen = _check_set(out[b], length, BUDGET, SINK, WINDOW)
        if length > BUDGET:  # the whole remainder goes to the one signal (m is irrelevant)
            candidates = list(range(SINK, length - WINDOW))
            got = float(scores[b, _outside(chosen, length, SINK, WINDOW)].double().sum())
            assert got == _top_mass(scores[b], candidates, BUDGET - SINK - WINDOW)


@pytest.mark.parametrize("m", [0, 10, 44, 1000])
def test_draft_then_history(m):
    lens = [3000, 700, BUDGET + 1, 20]
    draft, hist = _scores(lens, 3000, seed=2), _scores(lens, 3000, seed=3)
    out = select_tokens(draft, hist, torch.tensor(lens, dtype=torch.int32), budget=BUDGET, n_sink=SINK,
                        window=WINDOW, m=m)
    rest = BUDGET - SINK - WINDOW
    for b, length in enumerate(lens):
        chosen = _check_set(out[b], length, BUDGET, SINK, WINDOW)
        if length <= BUDGET:
            continue
        free = _outside(chosen, length, SINK, WINDOW)
        candidates = list(range(SINK, length - WINDOW))
        take = min(m, rest)
        # The best `take` draft scores among the free picks are the best `take` of all candidates ...
        by_draft = sorted(free, key=lambda p: -float(draft[b, p]))
        assert _top_mass(draft[b], free, take) == _top_mass(draft[b], candidates, take)
        # ... and the others are the best history scores outside those.
        left = [p for p in candidates if p not in set(by_draft[:take])]
        assert float(hist[b, by_draft[take:]].double().sum()) == _top_mass(hist[b], left, rest - take)


def test_no_scores_grows_the_window():
    lens = [3000, 100, 30]
    out = select_tokens(None, None, torch.tensor(lens), budget=BUDGET, n_sink=SINK, window=WINDOW, m=5)
    for b, length in enumerate(lens):
        chosen = _check_set(out[b], length, BUDGET, SINK, WINDOW)
        if length > BUDGET:
            assert chosen == set(range(SINK)) | set(range(length - (BUDGET - SINK), length))


def test_ties_prefer_recent_positions():
    lens = [500, 200]
    flat = torch.zeros(2, 600)
    recent = select_tokens(None, None, torch.tensor(lens), budget=BUDGET, n_sink=SINK, window=WINDOW, m=0)
    for scores in ((flat, None), (None, flat), (flat, flat)):
        out = select_tokens(*scores, torch.tensor(lens), budget=BUDGET, n_sink=SINK, window=WINDOW, m=10)
        assert torch.equal(out, recent)


def test_nan_scores_rank_last():
    scores = torch.zeros(1, 500)
    scores[0, 470:480] = float("nan")  # inside the region a tie-break by recency would pick
    out = select_tokens(None, scores, torch.tensor([500]), budget=BUDGET, n_sink=SINK, window=WINDOW, m=0)
    assert set(out[0].tolist()) == set(range(SINK)) | set(range(430, 470)) | set(range(480, 500))


def test_no_sink_no_window_and_full_budget_protection():
    lens = [400]
    scores = _scores(lens, 400, seed=4)
    out = select_tokens(None, scores, torch.tensor(lens), budget=BUDGET, n_sink=0, window=0, m=0)
    chosen = _check_set(out[0], 400, BUDGET, 0, 0)
    assert float(scores[0, sorted(chosen)].double().sum()) == _top_mass(scores[0], list(range(400)), BUDGET)
    out = select_tokens(scores, scores, torch.tensor(lens), budget=BUDGET, n_sink=SINK, window=BUDGET - SINK, m=3)
    assert set(out[0].tolist()) == set(range(SINK)) | set(range(400 - BUDGET + SINK, 400))


def test_budget_smaller_than_protection_is_rejected():
    with pytest.raises(ValueError, match=r"`n_sink` \+ `window` = 4 \+ 70 = 74 exceeds `budget` = 64"):
        select_tokens(None, None, torch.tensor([100]), budget=64, n_sink=4, window=70, m=0)


@pytest.mark.parametrize("present", ["both", "draft", "hist", "none"])
def test_triton_matches_reference_exactly(present):
    from dustin.kernels.selection import select_tokens_reference
    from dustin.kernels.selection.triton import select_tokens_triton

    lens = torch.tensor([1, BUDGET - 1, BUDGET, BUDGET + 1, 700, 1500], dtype=torch.int32)
    draft, hist = _scores(lens.tolist(), 1600, seed=5), _scores(lens.tolist(), 1600, seed=6, dtype=torch.bfloat16)
    hist[:, 100:300] = 0.0  # ties: the recency rule must agree
    hist[:, 50:60] = float("nan")
    draft[:, 500:520] = -1.0  # negative scores exercise the sign flip of the keys
    args = {"both": (draft, hist), "draft": (draft, None), "hist": (None, hist), "none": (None, None)}[present]
    want = select_tokens_reference(*args, lens, BUDGET, SINK, WINDOW, 10)
    assert torch.equal(select_tokens_triton(*args, lens, BUDGET, SINK, WINDOW, 10), want)
