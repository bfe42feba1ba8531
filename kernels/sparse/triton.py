"""Triton (CUDA) sparse verification attention, flash-decoding style; same contract as ``reference.py``.

One program per (b, kv head, split): it loads the group's packed query rows ([Hq/Hkv * T, D], row r = g*T + t)
once, streams its share of the K+T columns (selected positions read through ``indices``, then the new rows
``seq_lens[b] + j``, causal) and keeps an online softmax in fp32. With one split the program writes the output
directly; long budgets are split over the columns (split-K) so that B*Hkv programs still fill the GPU, and a small
reduce kernel merges the partial results by their log-sum-exp.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton_common import check_launchable, interpreting, next_pow2, scratch


@triton.jit
def _sparse_attention_kernel(
    Q, K, V, IDX, SEQ, OUT, PART_O, PART_LSE,
    sqb, sqh, sqt, sqd, skb, skh, sks, skd, svb, svh, svs, svd, sib, sik, sob, soh, sot, sod,
    n_selected, cols_per_split, n_splits, scale_log2, window,
    GROUPS: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DIRECT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # int64 offsets: a large cache overflows int32 element offsets
    h = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    r = tl.arange(0, BLOCK_M)
    t = r % ROWS
    head = h * GROUPS + r // ROWS
    row_ok = r < GROUPS * ROWS
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(Q + b * sqb + head[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    seq = tl.load(SEQ + b).to(tl.int64)
    start = split * cols_per_split
    stop = tl.minimum(start + cols_per_split, n_selected + ROWS)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for first in range(start, stop, BLOCK_N):
        cols = first + tl.arange(0, BLOCK_N)
        is_sel = cols < n_selected
        sel = tl.load(IDX + b * sib + cols * sik, mask=(cols < stop) & is_sel, other=-1).to(tl.int64)
        new = cols - n_selected  # j of a new column
        pos = tl.where(is_sel, sel, seq + new)
        col_ok = (cols < stop) & (pos >= 0)
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + h * skh + pos[:, None] * sks + d[None, :] * skd, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        visible = col_ok[None, :] & (is_sel[None, :] | (new[None, :] <= t[:, None]))
        # A sliding-window layer: row t (at position seq + t) sees positions > seq + t - window only.
        visible &= (window == 0) | (pos[None, :] > (seq + t)[:, None] - window)
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # an all-masked block must not make NaNs
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + h * svh + pos[:, None] * svs + d[None, :] * svd, mask=kv_mask, other=0.0)
        if UPCAST:
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=DOT_PRECISION)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    filled = l_i > 0.0
    o = acc / tl.where(filled, l_i, 1.0)[:, None]
    if DIRECT:
        tl.store(OUT + b * sob + head[:, None] * soh + t[:, None] * sot + d[None, :] * sod,
                 o.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    else:
        part = (b * tl.num_programs(1) + h) * n_splits + split
        tl.store(PART_O + (part * BLOCK_M + r[:, None]) * BLOCK_D + d[None, :], o)
        lse = tl.where(filled, m_i + tl.log2(tl.where(filled, l_i, 1.0)), float("-inf"))
        tl.store(PART_LSE + part * BLOCK_M + r, lse)


@triton.jit
def _sparse_attention_reduce_kernel(
    OUT, PART_O, PART_LSE, sob, soh, sot, sod, n_splits,
    GROUPS: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    base = (b * tl.num_programs(1) + h) * n_splits
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, n_splits):
        m = tl.maximum(m, tl.load(PART_LSE + (base + s) * BLOCK_M + r))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, n_splits):
        w = tl.exp2(tl.load(PART_LSE + (base + s) * BLOCK_M + r) - m_safe)  # 0 for an empty split
        total += w
        acc += w[:, None] * tl.load(PART_O + ((base + s) * BLOCK_M + r[:, None]) * BLOCK_D + d[None, :])
    o = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    t = r % ROWS
    head = h * GROUPS + r // ROWS
    mask = (r < GROUPS * ROWS)[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(OUT + b * sob + head[:, None] * soh + t[:, None] * sot + d[None, :] * sod, o.to(OUT.dtype.element_ty),
             mask=mask)


def _default_splits(batch: int, kv_heads: int, width: int, block_n: int) -> int:
    """Enough programs to fill a GPU (~256 in flight), but at least two column blocks per split."""
    wanted = max(1, 256 // max(1, batch * kv_heads))
    return max(1, min(wanted, triton.cdiv(width, 2 * block_n)))


def sparse_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    window: int = 0,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launcher with the reference's signature; ``num_splits`` forces the split-K count and ``out`` is an optional
    preallocated ``[B, Hq, T, D]`` output (tests pass NaN-filled ones so that unwritten tiles show)."""
    check_launchable("sparse_attention", q, k_cache, v_cache, indices, seq_lens)
    batch, q_heads, rows, dim = q.shape
    kv_heads = k_cache.shape[1]
    groups = q_heads // kv_heads
    selected = indices.shape[1]
    width = selected + rows
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    block_m, block_d, block_n = next_pow2(groups * rows), next_pow2(dim), 32 if dim > 64 else 64
    splits = num_splits or _default_splits(batch, kv_heads, width, block_n)
    cols_per_split = triton.cdiv(triton.cdiv(width, splits), block_n) * block_n
    splits = triton.cdiv(width, cols_per_split)
    # fp32 dot operands (fp32 inputs, or any input under the interpreter) get exact IEEE products, not TF32;
    # bf16/fp16 operands keep the default (the precision flag only concerns fp32 operands).
    upcast = interpreting() or q.dtype == torch.float32
    if out is None:
        out = torch.empty(batch, q_heads, rows, dim, dtype=q.dtype, device=q.device)
    if splits > 1:
        part_o = scratch((batch * kv_heads * splits * block_m * block_d,), q.device)
        part_lse = scratch((batch * kv_heads * splits * block_m,), q.device)
    else:
        part_o = part_lse = out  # unused
    _sparse_attention_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, indices, seq_lens, out, part_o, part_lse,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *indices.stride(), *out.stride(),
        selected, cols_per_split, splits, scale * math.log2(math.e), window,
        GROUPS=groups, ROWS=rows, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        UPCAST=upcast, DIRECT=splits == 1, DOT_PRECISION="ieee" if upcast else "tf32",
    )
    if splits > 1:
        _sparse_attention_reduce_kernel[(batch, kv_heads)](
            out, part_o, part_lse, *out.stride(), splits,
            GROUPS=groups, ROWS=rows, HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_D=block_d,
        )
    return out
