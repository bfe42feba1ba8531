"""dustin::score_heads / score_heads_into: against a float64 softmax by loop; Triton == reference."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import DTYPES, scores_oracle

from dustin.kernels import score_heads, score_heads_into
from dustin.kernels._common import fill_workspaces_
from dustin.kernels.scores import score_heads_reference

# Absolute, on probabilities: reduced-precision inputs are widened exactly and scored in fp32, so all dtypes stay tight.
SCORE_TOL = {torch.float32: 2e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}


def _case(lens, q_heads, kv_heads, dim, rows, dtype, seed=0, spare=4):
    g = torch.Generator().manual_seed(seed)
    capacity = max(lens) + spare
    q = (2 * torch.randn(len(lens), q_heads, rows, dim, generator=g)).to(dtype)  # peaky softmaxes, not flat ones
    k = torch.randn(len(lens), kv_heads, capacity, dim, generator=g).to(dtype)
    seq_lens = torch.tensor(lens)
    # Positions >= L hold NaN: reading them into a row's softmax must show.
    beyond = torch.arange(capacity)[None, :] >= seq_lens[:, None]
    return q, k.masked_fill(beyond[:, None, :, None], float("nan")), seq_lens


CASES = [  # lens, Hq, Hkv, D, T, heads
    ([63, 1], 8, 2, 64, 1, [0, 5]),
    ([1000, 0, 63], 28, 4, 128, 5, [0, 1, 2, 3]),
    ([4097, 1000], 14, 2, 64, 1, [13, 0, 7, 13]),  # repeats count twice; two groups
    ([1, 63], 4, 4, 128, 5, [3]),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,q_heads,kv_heads,dim,rows,heads", CASES)
def test_reference_matches_float64_softmax(lens, q_heads, kv_heads, dim, rows, heads, dtype):
    q, k, seq_lens = _case(lens, q_heads, kv_heads, dim, rows, dtype, seed=len(heads))
    fill_workspaces_(float("nan"))
    got = score_heads(q, k, seq_lens, heads)
    want = scores_oracle(q, k.nan_to_num(), seq_lens, heads)
    assert got.dtype == torch.float32 and got.shape == (len(lens), k.shape[2])
    torch.testing.assert_close(got.double(), want, atol=SCORE_TOL[dtype], rtol=0)
    # Each row and head contributes a distribution: mass = |heads| * T where L > 0, and exact zeros beyond L.
    for b, length in enumerate(lens):
        assert float(got[b, length:].abs().sum()) == 0.0
        assert got[b].sum().item() == pytest.approx(len(heads) * rows if length else 0.0, rel=1e-4)


def test_into_accumulates_and_scale():
    q, k, seq_lens = _case([300, 120], 8, 2, 64, 5, torch.float32, seed=1)
    out = torch.rand(2, k.shape[2])
    start = out.clone()
    score_heads_into(out, q, k, seq_lens, [1, 6], scale=0.05)
    score_heads_into(out, q, k, seq_lens, [2], scale=0.05)
    want = scores_oracle(q, k.nan_to_num(), seq_lens, [1, 6, 2], scale=0.05)
    torch.testing.assert_close(out.double(), start.double() + want, atol=1e-5, rtol=0)


def test_empty_heads_and_zero_lengths_give_zeros():
    q, k, _ = _case([50, 50], 4, 2, 64, 1, torch.float32)
    assert float(score_heads(q, k, torch.tensor([0, 0]), [0, 1]).abs().sum()) == 0.0
    assert float(score_heads(q, k, torch.tensor([50, 3]), []).abs().sum()) == 0.0


def test_strided_query_rows():
    """The draft graph taps the last rows of a [B, T, H, D]-transposed query: a strided view."""
    q, k, seq_lens = _case([200, 90], 8, 2, 64, 5, torch.bfloat16, seed=2)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)[:, :, -3:]
    torch.testing.assert_close(score_heads(q_t, k, seq_lens, [0, 4]),
                               score_heads(q_t.contiguous(), k, seq_lens, [0, 4]), atol=1e-6, rtol=0)


TRITON_CASES = [  # lens, Hq, Hkv, D, T, heads, splits
    ([63, 0], 8, 2, 64, 1, [0, 5], None),
    ([1000, 63], 28, 4, 128, 5, [0, 9, 27], 3),
    ([300, 1], 4, 4, 64, 5, [2, 2], 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,q_heads,kv_heads,dim,rows,heads,splits", TRITON_CASES)
def test_triton_matches_reference(lens, q_heads, kv_heads, dim, rows, heads, splits, dtype):
    from dustin.kernels.scores.triton import score_heads_into_triton

    q, k, seq_lens = _case(lens, q_heads, kv_heads, dim, rows, dtype, seed=dim)
    start = torch.rand(len(lens), k.shape[2])
    want = start + score_heads_reference(q, k, seq_lens, heads)
    got = start.clone()
    score_heads_into_triton(got, q, k, seq_lens.int(), heads, num_splits=splits)
    torch.testing.assert_close(got, want, atol=SCORE_TOL[dtype], rtol=0)
