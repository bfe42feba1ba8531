"""The C++ CPU kernel of dustin::score_heads (kernels/scores/score_heads.cpp): equal to the float64 softmax on head
dims of real checkpoints, across its 1024-position chunks, with several KV groups, repeated heads, T > 1 and empty
rows; inputs it does not take go to the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import DTYPES, scores_oracle

from dustin.kernels import cpu_ext, score_heads, score_heads_into
from dustin.kernels.scores import cpu, score_heads_reference

SCORE_TOL = {torch.float32: 2e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}


@pytest.fixture(scope="module")
def built():
    module = cpu_ext.load()
    assert module is not None, f"the C++ kernels must build on this machine: {cpu_ext.build_error()}"
    return module


def _case(lens, q_heads, kv_heads, dim, rows, dtype, seed=0, spare=3):
    g = torch.Generator().manual_seed(seed)
    capacity = max(lens) + spare
    q = (2 * torch.randn(len(lens), q_heads, rows, dim, generator=g)).to(dtype)
    k = torch.randn(len(lens), kv_heads, capacity, dim, generator=g).to(dtype)
    seq_lens = torch.tensor(lens)
    beyond = torch.arange(capacity)[None, :] >= seq_lens[:, None]  # NaN past each length: reading it shows
    return q, k.masked_fill(beyond[:, None, :, None], float("nan")), seq_lens


CASES = [  # lens (chunk edges 1023 / 1024 / 1025 / 2049 and empty rows), Hq, Hkv, D, T, heads
    ([1023, 1024, 1025], 8, 2, 16, 1, [0, 5]),
    ([2049, 0, 7], 12, 2, 128, 5, [0, 1, 2, 3]),
    ([3000, 1], 32, 32, 80, 1, [31, 0, 7, 7]),  # Phi-2-like: no GQA, D = 80; a head repeated counts twice
    ([1500], 24, 8, 96, 2, [0, 3, 6, 9, 12, 15, 18, 21, 23]),  # 9 heads over 8 groups
    ([700, 300], 8, 4, 256, 3, [1, 2]),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,q_heads,kv_heads,dim,rows,heads", CASES)
def test_kernel_matches_float64_softmax(built, lens, q_heads, kv_heads, dim, rows, heads, dtype):
    q, k, seq_lens = _case(lens, q_heads, kv_heads, dim, rows, dtype, seed=dim)
    out = torch.zeros(len(lens), k.shape[2])
    assert cpu.supports(out, q, k)
    built.score_heads_into(out, q, k, seq_lens, heads, dim**-0.5)
    want = scores_oracle(q, k.nan_to_num(), seq_lens, heads)
    torch.testing.assert_close(out.double(), want, atol=SCORE_TOL[dtype], rtol=0)
    for b, length in enumerate(lens):
        assert float(out[b, length:].abs().sum()) == 0.0


def test_the_op_runs_the_kernel_and_adds_into_out(built, monkeypatch):
    monkeypatch.delenv(cpu_ext.ENV, raising=False)
    q, k, seq_lens = _case([1300, 40], 8, 2, 64, 1, torch.bfloat16, seed=3)
    calls = []
    real = cpu_ext.load().score_heads_into
    monkeypatch.setattr(cpu_ext, "load", lambda: type("M", (), {
        "score_heads_into": staticmethod(lambda *a: calls.append(1) or real(*a))})())
    out = torch.rand(2, k.shape[2])
    start = out.clone()
    score_heads_into(out, q, k, seq_lens, [1, 6], scale=0.05)
    assert calls == [1]
    want = scores_oracle(q, k.nan_to_num(), seq_lens, [1, 6], scale=0.05)
    torch.testing.assert_close(out.double(), start.double() + want, atol=5e-5, rtol=0)


def test_inputs_it_does_not_take_go_to_the_reference(monkeypatch):
    monkeypatch.delenv(cpu_ext.ENV, raising=False)
    q, k, seq_lens = _case([90, 70], 4, 2, 8, 1, torch.float32)  # D = 8
    assert not cpu.supports(torch.zeros(2, k.shape[2]), q, k)
    torch.testing.assert_close(score_heads(q, k, seq_lens, [0, 3]),
                               score_heads_reference(q, k, seq_lens, [0, 3]), atol=0, rtol=0)
    monkeypatch.setenv(cpu_ext.ENV, "fused")
    with pytest.raises(ValueError, match="the C\\+\\+ kernel of score_heads takes float32/bfloat16/float16, a head dim"):
        score_heads(q, k, seq_lens, [0, 3])


def test_kernel_refuses_lengths_outside_the_cache(built):
    q, k = torch.randn(1, 2, 1, 64), torch.randn(1, 2, 10, 64)
    with pytest.raises(RuntimeError, match=r"seq_lens\[0\] = 11 is outside \[0, 10\]"):
        built.score_heads_into(torch.zeros(1, 10), q, k, torch.tensor([11]), [0], 0.125)


def test_short_rows_in_a_long_cache(built):
    """Workspaces span the longest row: positions past every row's length are neither read nor written."""
    q, k, seq_lens = _case([5, 40], 8, 2, 64, 2, torch.bfloat16, seed=8, spare=5000)
    out = torch.full((2, k.shape[2]), 0.25)
    built.score_heads_into(out, q, k, seq_lens, [0, 7], 64**-0.5)
    want = scores_oracle(q, k.nan_to_num(), seq_lens, [0, 7])
    torch.testing.assert_close(out.double() - 0.25, want, atol=SCORE_TOL[torch.bfloat16], rtol=0)
