"""dustin::sparse_attention: reference == masked dense oracle, budget >= context == dense causal, Triton ==
reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import DTYPES, TOL, attention_oracle, make_attention_case, visible_mask

from dustin.kernels import sparse_attention
from dustin.kernels._common import fill_workspaces_
from dustin.kernels.sparse import sparse_attention_reference

# (context lengths per row, head dim, GQA ratio, T, budget): every S, D, ratio and T of the issue appears.
SHAPES = [
    ([1, 1], 64, 1, 1, 4),
    ([63, 40], 128, 4, 5, 16),
    ([1000, 63], 64, 7, 5, 96),
    ([4097, 1000], 128, 1, 1, 256),
    ([4097, 1], 64, 4, 5, 128),
    ([63, 1000], 128, 7, 1, 48),
    ([300, 17], 64, 4, 2, 32),  # T = 2 (gamma = 1) is used by the driver too
]


def _poison_unread(k, v, indices, seq_lens, rows):
    """NaN in every cache row that is neither selected nor new: reading one must show in the output."""
    keep = visible_mask(indices, seq_lens, rows, k.shape[2]).any(1)  # [B, S]
    hidden = ~keep[:, None, :, None]
    return k.masked_fill(hidden, float("nan")), v.masked_fill(hidden, float("nan"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,dim,ratio,rows,budget", SHAPES)
def test_reference_matches_masked_dense(lens, dim, ratio, rows, budget, dtype):
    q, k, v, indices, seq_lens = make_attention_case(2, 2 * ratio, 2, dim, rows, lens, budget, dtype, seed=budget)
    k, v = _poison_unread(k, v, indices, seq_lens, rows)
    fill_workspaces_(float("nan"))  # a workspace region read before being written fails the comparison
    out = sparse_attention(q, k, v, indices, seq_lens)
    want = attention_oracle(q, k.nan_to_num(), v.nan_to_num(), visible_mask(indices, seq_lens, rows, k.shape[2]))
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length,ratio,rows", [(63, 4, 5), (1000, 7, 1), (130, 1, 5)])
def test_budget_covering_context_is_dense_causal(length, ratio, rows, dtype):
    q, k, v, _, seq_lens = make_attention_case(2, 2 * ratio, 2, 64, rows, [length, length], 1, dtype, seed=length)
    indices = torch.arange(length).repeat(2, 1)
    out = sparse_attention(q, k, v, indices, seq_lens, scale=0.1)
    # Dense causal attention over the first length + T positions: row t sees everything up to length + t.
    keys, values = k[:, :, : length + rows].double(), v[:, :, : length + rows].double()
    causal = torch.ones(rows, length + rows, dtype=torch.bool).tril(diagonal=length)
    want = F.scaled_dot_product_attention(q.double(), keys, values, attn_mask=causal, scale=0.1, enable_gqa=True)
    torch.testing.assert_close(out.double(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [1, 3, 37, 5000])
def test_sliding_window_hides_what_it_should(window, dtype):
    """A sliding-window layer: row t sees selected and new positions > seq_lens + t - window only."""
    q, k, v, indices, seq_lens = make_attention_case(3, 8, 2, 64, 5, [300, 40, 2], 64, dtype, seed=window)
    k, v = _poison_unread(k, v, indices, seq_lens, 5)  # selected but out of the window: read, must not count
    visible = visible_mask(indices, seq_lens, 5, k.shape[2], window)
    out = sparse_attention(q, k, v, indices, seq_lens, window=window)
    torch.testing.assert_close(out.double(), attention_oracle(q, k.nan_to_num(), v.nan_to_num(), visible),
                               **TOL[dtype])


def test_padding_anywhere_equals_padding_at_end():
    q, k, v, indices, seq_lens = make_attention_case(3, 8, 2, 64, 5, [300, 200, 20], 64, seed=3)
    at_end = indices.sort(dim=1, descending=True).values  # -1 sorts last
    torch.testing.assert_close(sparse_attention(q, k, v, indices, seq_lens),
                               sparse_attention(q, k, v, at_end, seq_lens), atol=1e-6, rtol=1e-6)


def test_int32_indices_and_empty_selection():
    q, k, v, indices, seq_lens = make_attention_case(2, 4, 2, 64, 5, [90, 70], 32, index_dtype=torch.int32)
    want = sparse_attention(q, k, v, indices.long(), seq_lens.long())
    torch.testing.assert_close(sparse_attention(q, k, v, indices, seq_lens), want)
    empty = indices[:, :0]
    only_new = visible_mask(empty, seq_lens, 5, k.shape[2])
    torch.testing.assert_close(sparse_attention(q, k, v, empty, seq_lens).double(),
                               attention_oracle(q, k, v, only_new), **TOL[torch.float32])


def test_strided_inputs():
    """A batch slice of a larger cache (flat fast path), an HF-style transposed q, and a fully strided cache; the
    last row is shorter than the budget, so its selection is padded (-1) on every path."""
    q, k, v, indices, seq_lens = make_attention_case(4, 8, 2, 64, 5, [200, 150, 90, 20], 24, seed=5)
    assert bool((indices[3] < 0).any())
    want = sparse_attention(q, k, v, indices, seq_lens)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, H, D] storage, as HF projections produce
    torch.testing.assert_close(sparse_attention(q_t, k, v, indices, seq_lens), want)
    big_k, big_v = torch.cat([k, k]), torch.cat([v, v])
    torch.testing.assert_close(sparse_attention(q[1:3], big_k[1:3], big_v[1:3], indices[1:3], seq_lens[1:3]),
                               want[1:3])
    k_odd = k.transpose(2, 3).contiguous().transpose(2, 3)  # D not innermost: the advanced-indexing fallback
    torch.testing.assert_close(sparse_attention(q, k_odd, v, indices, seq_lens), want)
    torch.testing.assert_close(sparse_attention(q, k_odd, k_odd.clone(), indices, seq_lens),
                               sparse_attention(q, k, k, indices, seq_lens))  # both caches on the fallback


def test_reference_reuses_workspaces():
    q, k, v, indices, seq_lens = make_attention_case(2, 8, 2, 64, 5, [500, 400], 64, seed=6)
    from dustin.kernels import _common

    first = sparse_attention_reference(q, k, v, indices, seq_lens)
    before = {key: buf.data_ptr() for key, buf in _common._WORKSPACES.items()}
    second = sparse_attention_reference(q, k, v, indices, seq_lens)
    after = {key: buf.data_ptr() for key, buf in _common._WORKSPACES.items()}
    assert before == after  # no workspace was reallocated for a same-shaped call
    assert second.data_ptr() != first.data_ptr()  # outputs never alias a workspace or each other
    torch.testing.assert_close(first, second, atol=0, rtol=0)


# ---- Triton (interpreter on CPU) ----------------------------------------------------------------------------------

TRITON_SHAPES = [
    ([63, 40], 64, 1, 5, 16, None),
    ([1000, 63], 128, 7, 5, 40, 3),
    ([200, 1], 64, 4, 1, 24, 2),
    ([4097, 9], 64, 2, 5, 70, None),
    ([300, 17], 64, 7, 2, 33, 2),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,dim,ratio,rows,budget,splits", TRITON_SHAPES)
def test_triton_matches_reference(lens, dim, ratio, rows, budget, splits, dtype):
    from dustin.kernels.sparse.triton import sparse_attention_triton

    q, k, v, indices, seq_lens = make_attention_case(2, 2 * ratio, 2, dim, rows, lens, budget, dtype, seed=dim)
    k, v = _poison_unread(k, v, indices, seq_lens, rows)
    window = (0, 7)[budget % 2]  # every other shape runs a sliding window
    want = sparse_attention_reference(q, k, v, indices, seq_lens, None, window)
    out = torch.full_like(q, float("nan"))  # unwritten output tiles fail the comparison
    got = sparse_attention_triton(q, k, v, indices.int(), seq_lens.int(), None, window, num_splits=splits,
                                  out=out)
    assert got.data_ptr() == out.data_ptr()
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.double(), want.double(), **TOL[dtype])
