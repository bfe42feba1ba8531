"""dustin::dense_attention (the packed-GQA dense path) against stock SDPA with repeat_kv and an independent mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dustin.kernels import causal_mask, dense_attention

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def _loop_mask(seq_lens, rows, capacity, window=0):
    """transformers' causal (and sliding-window) mask, position by position: kv <= q and kv > q - window."""
    mask = torch.zeros(len(seq_lens), 1, rows, capacity, dtype=torch.bool)
    for b, start in enumerate(seq_lens.tolist()):
        for t in range(rows):
            for j in range(capacity):
                mask[b, 0, t, j] = j <= start + t and (not window or j > start + t - window)
    return mask


def _stock(q, k, v, seq_lens, window=0):
    """transformers' sdpa path for q_len > 1: repeat_kv copies, and a bool mask built position by position."""
    batch, q_heads, rows, _ = q.shape
    groups = q_heads // k.shape[1]
    mask = _loop_mask(seq_lens, rows, k.shape[2], window)
    k_rep = k.repeat_interleave(groups, dim=1)
    v_rep = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q.float(), k_rep.float(), v_rep.float(), attn_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q_heads, kv_heads, rows, dim", [(4, 4, 1, 64), (8, 2, 5, 64), (14, 2, 3, 128), (7, 1, 2, 32)])
def test_matches_stock_sdpa(dtype, q_heads, kv_heads, rows, dim):
    g = torch.Generator().manual_seed(q_heads * 100 + rows)
    seq_lens = torch.tensor([0, 17, 62])
    capacity = 80
    q = torch.randn(3, q_heads, rows, dim, generator=g).to(dtype)
    k = torch.randn(3, kv_heads, capacity, dim, generator=g).to(dtype)
    v = torch.randn(3, kv_heads, capacity, dim, generator=g).to(dtype)
    out = dense_attention(q, k, v, seq_lens)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), _stock(q, k, v, seq_lens), **TOL[dtype])


@pytest.mark.parametrize("window", [1, 4, 30, 200])
def test_sliding_window_matches_stock_sdpa_and_the_mask_op(window):
    g = torch.Generator().manual_seed(window)
    seq_lens = torch.tensor([17, 0, 17, 62])  # rows sharing a start, not side by side
    q = torch.randn(4, 8, 5, 32, generator=g)
    k, v = torch.randn(4, 2, 80, 32, generator=g), torch.randn(4, 2, 80, 32, generator=g)
    torch.testing.assert_close(dense_attention(q, k, v, seq_lens, window=window), _stock(q, k, v, seq_lens, window),
                               **TOL[torch.float32])
    assert torch.equal(causal_mask(seq_lens, 5, 80, window), _loop_mask(seq_lens, 5, 80, window))
    assert torch.equal(causal_mask(seq_lens, 5, 80), _loop_mask(seq_lens, 5, 80))


def test_a_finished_row_reads_nothing_but_its_rows():
    """seq_lens 0 (the driver's finished rows): only positions 0 .. t are read, whatever the rest holds."""
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    seq_lens = torch.tensor([0, 30])
    clean = dense_attention(q, k, v, seq_lens)
    k[0, :, 3:], v[0, :, 3:] = float("nan"), float("nan")
    torch.testing.assert_close(dense_attention(q, k, v, seq_lens), clean)


@pytest.mark.parametrize("seq_lens", [[5, 30], [40, 43, 41]], ids=["apart", "sharing-a-call"])
def test_reads_nothing_past_each_row(seq_lens):
    """Positions after seq_lens + t do not contribute, also inside the span a row's neighbours read when they share
    one call: huge values there change nothing. (They hold finite K/V of earlier forwards in the driver's cache;
    SDPA, like any masked kernel, would spread NaN from masked keys.)"""
    seq_lens = torch.tensor(seq_lens)
    q = torch.randn(len(seq_lens), 4, 3, 16)
    k, v = torch.randn(len(seq_lens), 2, 50, 16), torch.randn(len(seq_lens), 2, 50, 16)
    clean = dense_attention(q, k, v, seq_lens)
    for b, n in enumerate(seq_lens.tolist()):
        k[b, :, n + 3 :] = 1e4
        v[b, :, n + 3 :] = -1e4
    torch.testing.assert_close(dense_attention(q, k, v, seq_lens), clean)


def test_opcheck_and_bad_inputs():
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 40, 16)
    torch.library.opcheck(torch.ops.dustin.dense_attention.default, (q, k, k.clone(), torch.tensor([3, 9]), 0.25, 0))
    torch.library.opcheck(torch.ops.dustin.dense_attention.default, (q, k, k.clone(), torch.tensor([3, 9]), 0.3, 5))
    torch.library.opcheck(torch.ops.dustin.causal_mask.default, (torch.tensor([3, 9]), 3, 40, 4))
    with pytest.raises(ValueError, match=r"`window` must be an int >= 0"):
        dense_attention(q, k, k, torch.tensor([3, 9]), window=-1)
    with pytest.raises(ValueError, match=r"`q` has 3 heads, not a multiple of the 2 KV heads"):
        dense_attention(torch.randn(2, 3, 3, 16), k, k, torch.tensor([3, 9]))
    with pytest.raises(ValueError, match=r"`seq_lens` \+ 3 new rows must lie in \[0, 40\]"):
        dense_attention(q, k, k, torch.tensor([3, 39]))
    with pytest.raises(TypeError, match=r"`seq_lens` must have dtype in \(int32, int64\)"):
        dense_attention(q, k, k, torch.tensor([3.0, 9.0]))


@pytest.mark.parametrize("window", [0, 3, 25])
@pytest.mark.parametrize("rows", [1, 4])
def test_rows_a_few_positions_apart_match_stock_sdpa(window, rows):
    """A batch after speculation: rows a few positions apart (sharing one call over the union of their spans, each
    masked to its own), some sharing a start without being neighbours, a finished row between them."""
    g = torch.Generator().manual_seed(window * 10 + rows)
    seq_lens = torch.tensor([61, 63, 61, 0, 66, 62, 63])
    q = torch.randn(7, 6, rows, 32, generator=g)
    k, v = torch.randn(7, 2, 72, 32, generator=g), torch.randn(7, 2, 72, 32, generator=g)
    torch.testing.assert_close(dense_attention(q, k, v, seq_lens, window=window), _stock(q, k, v, seq_lens, window),
                               **TOL[torch.float32])


def test_which_rows_share_a_call():
    """Neighbours whose spans nearly coincide share one call (no gather, one SDPA); a finished row beside long ones
    and a row far behind its neighbours keep their own, so no row reads much more than it attends to."""
    from dustin.kernels.dense.reference import _shared_runs, _span

    def runs(starts, rows=1, window=0):
        return _shared_runs([_span(s, rows, 10_000, window) for s in starts])

    assert runs([8190, 8191, 8192, 8193]) == [(0, 4)]
    assert runs([8190, 0, 8195, 8192]) == [(0, 1), (1, 2), (2, 4)]
    assert runs([8000, 4000, 4010]) == [(0, 1), (1, 3)]
    assert runs([100, 100, 100]) == [(0, 3)]
    assert runs([5000, 5100], window=64) == [(0, 1), (1, 2)]  # windows far apart: each its own 64 positions
    assert runs([5000, 5004], window=64) == [(0, 2)]
