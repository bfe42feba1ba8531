"""The fused CPU kernel of dustin::sparse_attention (kernels/sparse/sparse_attention.cpp): equal to the float64
oracle on the shapes real checkpoints carry (head dims 16..256, GQA ratios 1..7, T = 1..6, padding, sliding windows,
cache views), the gates that send other inputs to the reference, and the DUSTIN_CPU_KERNELS switch."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import DTYPES, TOL, attention_oracle, make_attention_case, visible_mask

from dustin.kernels import sparse_attention
from dustin.kernels import cpu_ext
from dustin.kernels.sparse import cpu
from dustin.kernels.sparse import sparse_attention_reference


@pytest.fixture(scope="module")
def built():
    module = cpu_ext.load()
    assert module is not None, f"the C++ kernels must build on this machine: {cpu_ext.build_error()}"
    return module


def _poison_unread(k, v, indices, seq_lens, rows):
    keep = visible_mask(indices, seq_lens, rows, k.shape[2]).any(1)
    hidden = ~keep[:, None, :, None]
    return k.masked_fill(hidden, float("nan")), v.masked_fill(hidden, float("nan"))


# (lens, head dim, q heads, kv heads, T, budget, window): head dims of real models (64 Llama/Qwen small, 80 Phi-2,
# 96 Phi-3, 128 most, 256 Gemma), GQA 1..7, odd budgets and widths (VNNI pads odd widths), a window.
CASES = [
    ([1, 1], 16, 2, 2, 1, 4, 0),
    ([63, 40], 128, 8, 2, 5, 16, 0),
    ([1000, 63], 64, 14, 2, 5, 97, 0),
    ([300, 17], 80, 6, 2, 2, 33, 0),
    ([4097, 9], 96, 3, 1, 6, 70, 0),
    ([500, 200, 3], 256, 8, 4, 3, 41, 0),
    ([300, 40, 2], 64, 8, 2, 5, 64, 37),
    ([700, 650], 128, 12, 2, 4, 256, 1),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lens,dim,q_heads,kv_heads,rows,budget,window", CASES)
def test_fused_matches_oracle(built, lens, dim, q_heads, kv_heads, rows, budget, window, dtype):
    q, k, v, indices, seq_lens = make_attention_case(len(lens), q_heads, kv_heads, dim, rows, lens, budget, dtype,
                                                     seed=budget + dim)
    k, v = _poison_unread(k, v, indices, seq_lens, rows)  # reading an unselected row shows as NaN
    assert cpu.supports(q, k, v)
    out = cpu.sparse_attention_fused(q, k, v, indices, seq_lens, dim**-0.5, window)
    visible = visible_mask(indices, seq_lens, rows, k.shape[2], window)
    want = attention_oracle(q, k.nan_to_num(), v.nan_to_num(), visible)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    torch.testing.assert_close(out.double(), want, **TOL[dtype])


def test_fused_on_cache_views_and_transposed_q(built):
    """A batch slice of a larger cache (strided batch dim) and an HF-style transposed q take the fused path."""
    q, k, v, indices, seq_lens = make_attention_case(4, 8, 2, 64, 5, [200, 150, 90, 20], 24, seed=5)
    want = sparse_attention_reference(q, k, v, indices, seq_lens)
    big_k, big_v = torch.cat([k, k]), torch.cat([v, v])
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert cpu.supports(q_t[1:3], big_k[1:3], big_v[1:3])
    got = cpu.sparse_attention_fused(q_t[1:3], big_k[1:3], big_v[1:3], indices[1:3], seq_lens[1:3], 64**-0.5, 0)
    torch.testing.assert_close(got, want[1:3], atol=2e-6, rtol=2e-6)


def test_the_op_runs_the_fused_kernel_from_cpp_by_default(built, monkeypatch):
    """Once built, the kernel is the op's CPU entry in the dispatcher (kernels/cpu_ext.cpp): calls on inputs it takes
    never enter the op's Python CPU path; the others go there (and to the reference), as before."""
    monkeypatch.delenv(cpu_ext.ENV, raising=False)
    table = torch._C._dispatch_dump("dustin::sparse_attention")
    assert "CPU: registered at" in table and "AutogradCPU: registered at" in table and "cpu_ext.cpp" in table
    calls = []  # every call of the op's Python CPU path asks cpu_ext.use_kernel which path to take
    use_kernel = cpu_ext.use_kernel
    monkeypatch.setattr(cpu_ext, "use_kernel", lambda *a: calls.append(1) or use_kernel(*a))
    q, k, v, indices, seq_lens = make_attention_case(2, 8, 2, 64, 5, [300, 100], 32, torch.bfloat16, seed=9)
    out = sparse_attention(q, k, v, indices, seq_lens)
    assert calls == []
    torch.testing.assert_close(out, cpu.sparse_attention_fused(q, k, v, indices, seq_lens, 64**-0.5, 0), atol=0, rtol=0)
    torch.testing.assert_close(out, sparse_attention_reference(q, k, v, indices, seq_lens), **TOL[torch.bfloat16])
    q, k, v, indices, seq_lens = make_attention_case(2, 4, 2, 8, 3, [90, 70], 16, seed=2)  # head dim 8: not taken
    out = sparse_attention(q, k, v, indices, seq_lens)
    assert calls == [1]
    torch.testing.assert_close(out, sparse_attention_reference(q, k, v, indices, seq_lens), atol=0, rtol=0)


def test_the_cpp_entry_has_no_backward(built):
    """Like a custom_op without a backward: the forward runs on inputs that require grad (an HF model called outside
    no_grad), and a backward through the output raises instead of returning no gradient for attention."""
    q, k, v, indices, seq_lens = make_attention_case(2, 8, 2, 64, 5, [300, 100], 32, seed=3)
    q.requires_grad_()
    out = sparse_attention(q, k, v, indices, seq_lens)
    assert out.requires_grad
    torch.testing.assert_close(out.detach(), sparse_attention_reference(q.detach(), k, v, indices, seq_lens),
                               atol=2e-6, rtol=2e-6)
    with pytest.raises(RuntimeError, match="has no backward"):
        out.sum().backward()
    with torch.no_grad():
        assert not sparse_attention(q, k, v, indices, seq_lens).requires_grad


def test_unsupported_inputs_take_the_reference(monkeypatch):
    """A head dim that is not a multiple of 16 or a cache with D not innermost: the reference, bit for bit."""
    monkeypatch.delenv(cpu_ext.ENV, raising=False)
    q, k, v, indices, seq_lens = make_attention_case(2, 4, 2, 8, 3, [90, 70], 16, seed=2)
    assert not cpu.supports(q, k, v)
    torch.testing.assert_close(sparse_attention(q, k, v, indices, seq_lens),
                               sparse_attention_reference(q, k, v, indices, seq_lens), atol=0, rtol=0)
    q, k, v, indices, seq_lens = make_attention_case(2, 4, 2, 64, 3, [90, 70], 16, seed=2)
    k_odd = k.transpose(2, 3).contiguous().transpose(2, 3)
    assert not cpu.supports(q, k_odd, v)


def test_the_switch(built, monkeypatch):
    q, k, v, indices, seq_lens = make_attention_case(2, 8, 2, 64, 5, [300, 100], 32, seed=4)
    monkeypatch.setenv(cpu_ext.ENV, "reference")
    torch.testing.assert_close(sparse_attention(q, k, v, indices, seq_lens),
                               sparse_attention_reference(q, k, v, indices, seq_lens), atol=0, rtol=0)
    monkeypatch.setenv(cpu_ext.ENV, "fast")
    with pytest.raises(ValueError, match=r"DUSTIN_CPU_KERNELS='fast' is not a choice: use one of auto, reference"):
        sparse_attention(q, k, v, indices, seq_lens)
    monkeypatch.setenv(cpu_ext.ENV, "fused")
    q8, k8, v8, i8, s8 = make_attention_case(2, 4, 2, 8, 3, [90, 70], 16, seed=2)
    with pytest.raises(ValueError, match="head dim that is a multiple of 16"):
        sparse_attention(q8, k8, v8, i8, s8)
    torch.testing.assert_close(sparse_attention(q, k, v, indices, seq_lens),
                               sparse_attention_reference(q, k, v, indices, seq_lens), atol=2e-6, rtol=2e-6)


def test_kernel_refuses_positions_outside_the_selection_range(built):
    """Compiled graphs skip the eager checks: the kernel itself refuses an index outside [0, seq_lens) and a
    seq_lens that leaves no room for the new rows, instead of reading out of bounds."""
    q, k, v = torch.randn(1, 2, 3, 64), torch.randn(1, 2, 10, 64), torch.randn(1, 2, 10, 64)
    seq_lens = torch.tensor([6])
    for bad in (6, 11, -2):
        with pytest.raises(RuntimeError, match=rf"indices\[0, 1\] = {bad} is not -1 \(padding\) nor a committed"):
            built.sparse_attention(q, k, v, torch.tensor([[0, bad, 2]]), seq_lens, 0.125, 0)
    with pytest.raises(RuntimeError, match="leaves no room for T = 3 new rows in a cache of 10 positions"):
        built.sparse_attention(q, k, v, torch.tensor([[0, 1]]), torch.tensor([8]), 0.125, 0)
