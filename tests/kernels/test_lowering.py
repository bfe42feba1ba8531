"""kernels.lowering: every decomposition equals its op (the torch reference), and a lowered exported program equals
the program it came from. Core ATen only: what TensorRT (and any other deployment compiler) converts natively."""

from __future__ import annotations

import math

import pytest
import torch

from dustin.kernels import lowering
from dustin.passes import EXPORT_OPS
from export_programs import run, verify_program
from kernel_cases import make_attention_case

OPS = torch.ops.dustin
# The lowering computes in fp32 like the references; in bf16 the two round their (identical fp32) result
# differently only where the reference's SDPA accumulates in another order: one bf16 ulp.
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# (batch, q heads, kv heads, rows, lens): GQA 1, 2 and 6 query heads per KV head, T = 1 and 5, an empty row.
SHAPES = [(3, 4, 4, 1, [9, 0, 17]), (3, 4, 2, 5, [12, 3, 0]), (3, 12, 2, 5, [20, 7, 13]), (1, 6, 1, 1, [1])]


def _case(shape, dtype, seed=0):
    batch, q_heads, kv_heads, rows, lens = shape
    return make_attention_case(batch, q_heads, kv_heads, 16, rows, lens, 6, dtype, seed=seed)


def _with_rows(k, v, seq_lens, rows, seed):
    """New rows and the caches with them written at seq_lens .. seq_lens + T - 1 (what the model's scatter does)."""
    g = torch.Generator().manual_seed(seed)
    k_new = torch.randn(k.shape[0], k.shape[1], rows, k.shape[3], generator=g).to(k.dtype)
    v_new = torch.randn(k_new.shape, generator=g).to(k.dtype)
    index = (seq_lens.long()[:, None] + torch.arange(rows))[:, None, :, None].expand(k_new.shape)
    return k_new, v_new, k.clone().scatter_(2, index, k_new), v.clone().scatter_(2, index, v_new)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("window", [0, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}-Hq{s[1]}-Hkv{s[2]}-T{s[3]}")
def test_attention_decompositions_equal_the_ops(shape, window, dtype):
    q, k, v, indices, seq_lens = _case(shape, dtype)
    scale = 0.7 / math.sqrt(q.shape[-1])
    tol = TOL[dtype]
    torch.testing.assert_close(lowering.sparse_attention(q, k, v, indices, seq_lens, scale, window),
                               OPS.sparse_attention(q, k, v, indices, seq_lens, scale, window), **tol)
    torch.testing.assert_close(lowering.dense_attention(q, k, v, seq_lens, scale, window),
                               OPS.dense_attention(q, k, v, seq_lens, scale, window), **tol)
    # the explicit-I/O forms: new rows passed in == the op over the caches with them written
    k_new, v_new, k_written, v_written = _with_rows(k, v, seq_lens, q.shape[2], seed=1)
    torch.testing.assert_close(
        lowering.sparse_attention_new_rows(q, k, v, k_new, v_new, indices, seq_lens, scale, window),
        OPS.sparse_attention(q, k_written, v_written, indices, seq_lens, scale, window), **tol)
    torch.testing.assert_close(lowering.dense_attention_new_rows(q, k, v, k_new, v_new, seq_lens, scale, window),
                               OPS.dense_attention(q, k_written, v_written, seq_lens, scale, window), **tol)


def test_int32_indices_and_old_optional_scale():
    q, k, v, indices, seq_lens = make_attention_case(3, 6, 2, 8, 5, [10, 4, 0], 5, index_dtype=torch.int32)
    reference = OPS.sparse_attention(q, k, v, indices, seq_lens, 1 / math.sqrt(8), 0)
    torch.testing.assert_close(lowering.sparse_attention(q, k, v, indices, seq_lens, None, 0), reference)


@pytest.mark.parametrize("window", [0, 3])
def test_causal_mask_decomposition_is_identical(window):
    seq_lens = torch.tensor([0, 5, 11])
    assert torch.equal(lowering.causal_mask(seq_lens, 5, 20, window), OPS.causal_mask(seq_lens, 5, 20, window))


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("heads", [[0], [5, 1, 5], [0, 1, 2, 3, 4, 5]])
def test_score_heads_decomposition_equals_the_op(heads, dtype):
    q, k, _, _, seq_lens = _case((3, 6, 2, 5, [12, 0, 30]), dtype, seed=len(heads))
    ids = torch.tensor(heads)
    expected = OPS.score_heads_t(q, k, seq_lens, ids, 0.3)
    got = lowering.score_heads_t(q, k, seq_lens, ids, 0.3)
    assert got.dtype == torch.float32 and torch.equal(got[1], torch.zeros_like(got[1]))  # seq_lens 0: zeros
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lowering.score_heads(q, k, seq_lens, heads, 0.3), expected, atol=1e-5, rtol=1e-4)


def test_every_export_op_has_a_decomposition():
    assert {op.name() for op in EXPORT_OPS} <= {op.name() for op in lowering.DECOMPOSITIONS}
    assert set(EXPORT_OPS) <= set(lowering.decompositions())  # keyed by the ops as registered now


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_lowered_program_equals_the_program(attention):
    """A tiny Qwen2 verification step (one sliding-window layer, one full) rewritten and exported, then lowered:
    no dustin op left, same logits, same cache writes."""
    program, tensors = verify_program(attention, use_sliding_window=True, sliding_window=6, max_window_layers=1)
    lowered = lowering.lower(program)
    assert not [n.target for n in lowered.graph.nodes if str(n.target).startswith("dustin.")]
    assert lowered.graph_signature.user_inputs_to_mutate  # still writes the caches in place
    expected, written = run(program, tensors)
    got, lowered_written = run(lowered, tensors)
    torch.testing.assert_close(got[0], expected[0], atol=2e-5, rtol=1e-4)
    for name in written:
        torch.testing.assert_close(lowered_written[name], written[name], atol=1e-5, rtol=1e-5)
