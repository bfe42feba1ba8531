"""Triton (CUDA) head-subset attention scores; same contract as ``reference.py``.

Two passes over the K of the listed heads' groups, because every position's probability needs its row's full
softmax denominator:
1. ``_score_lse_kernel``, one program per (b, listed head, split of the positions): online max / sum of
   exp2(q·k) for the T rows, written as partials; torch merges the splits into a log2-sum-exp per row (tiny).
2. ``_score_heads_kernel``, one program per (b, block of positions): for every listed head, exp2(q·k - lse) summed
   over rows and heads, added into ``out`` (each block has one owner program, so no atomics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton_common import check_launchable, interpreting, next_pow2, scratch


@triton.jit
def _score_lse_kernel(
    Q, K, SEQ, HEADS, PART_M, PART_L,
    sqb, sqh, sqt, sqd, skb, skh, sks, skd, per_group, cols_per_split, n_splits, scale_log2,
    ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1)
    split = tl.program_id(2)
    head = tl.load(HEADS + i).to(tl.int64)
    group = head // per_group
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sqb + head * sqh + t[:, None] * sqt + d[None, :] * sqd,
                mask=(t < ROWS)[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    length = tl.load(SEQ + b)
    start = split * cols_per_split
    stop = tl.minimum(start + cols_per_split, length)
    m_i = tl.full([BLOCK_T], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_T], tl.float32)
    for first in range(start, stop, BLOCK_N):
        pos = first + tl.arange(0, BLOCK_N)
        ok = pos < stop
        k = tl.load(K + b * skb + group * skh + pos[:, None] * sks + d[None, :] * skd,
                    mask=ok[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        qk = tl.where(ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(qk - m_safe[:, None]), 1)
        m_i = m_new
    part = ((b * tl.num_programs(1) + i) * n_splits + split) * BLOCK_T
    tl.store(PART_M + part + t, m_i)
    tl.store(PART_L + part + t, l_i)


@triton.jit
def _score_heads_kernel(
    Q, K, SEQ, HEADS, LSE, OUT,
    sqb, sqh, sqt, sqd, skb, skh, sks, skd, sob, soj, n_heads, per_group, scale_log2,
    ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    length = tl.load(SEQ + b)
    ok = pos < length
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    total = tl.zeros([BLOCK_N], tl.float32)
    for i in range(0, n_heads):
        head = tl.load(HEADS + i).to(tl.int64)
        q = tl.load(Q + b * sqb + head * sqh + t[:, None] * sqt + d[None, :] * sqd,
                    mask=(t < ROWS)[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
        k = tl.load(K + b * skb + (head // per_group) * skh + pos[:, None] * sks + d[None, :] * skd,
                    mask=ok[:, None] & (d < HEAD_DIM)[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            k = k.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        lse = tl.load(LSE + (b * n_heads + i) * BLOCK_T + t)
        keep = (t < ROWS)[:, None] & ok[None, :]
        total += tl.sum(tl.where(keep, tl.exp2(qk - tl.where(keep, lse[:, None], 0.0)), 0.0), 0)
    ptr = OUT + b * sob + pos * soj
    tl.store(ptr, tl.load(ptr, mask=ok, other=0.0) + total, mask=ok)


def score_heads_into_triton(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: list[int],
    scale: float | None = None,
    *,
    num_splits: int | None = None,
) -> None:
    """Launcher with the reference's signature; ``num_splits`` forces the split count of pass 1 (tests use it)."""
    check_launchable("score_heads", out, q, k_cache, seq_lens)
    batch, q_heads, rows, dim = q.shape
    if batch == 0 or not heads:
        return
    per_group = q_heads // k_cache.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    block_t, block_d, block_n = next_pow2(rows), next_pow2(dim), 64
    capacity = k_cache.shape[2]
    splits = num_splits or max(1, min(triton.cdiv(capacity, 4 * block_n), max(1, 512 // (batch * len(heads)))))
    cols_per_split = triton.cdiv(triton.cdiv(max(capacity, 1), splits), block_n) * block_n
    head_ids = torch.tensor(heads, dtype=torch.int32, device=q.device)
    part_m = scratch((batch, len(heads), splits, block_t), q.device)
    part_l = scratch((batch, len(heads), splits, block_t), q.device)
    upcast = interpreting() or q.dtype == torch.float32
    common = dict(ROWS=rows, HEAD_DIM=dim, BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_D=block_d, UPCAST=upcast,
                  DOT_PRECISION="ieee" if upcast else "tf32")  # the flag only concerns fp32 operands
    log2e = math.log2(math.e)
    _score_lse_kernel[(batch, len(heads), splits)](
        q, k_cache, seq_lens, head_ids, part_m, part_l, *q.stride(), *k_cache.stride(),
        per_group, cols_per_split, splits, scale * log2e, **common,
    )
    # Merge the splits: lse2 = M + log2(Σ_s l_s · 2^(m_s - M)); rows with no position keep -inf (masked in pass 2).
    peak = part_m.amax(dim=2, keepdim=True)
    safe = torch.where(peak == float("-inf"), 0.0, peak)
    lse = (safe + torch.log2((part_l * torch.exp2(part_m - safe)).sum(dim=2, keepdim=True))).squeeze(2).contiguous()
    _score_heads_kernel[(batch, triton.cdiv(capacity, block_n))](
        q, k_cache, seq_lens, head_ids, lse, out, *q.stride(), *k_cache.stride(), *out.stride(),
        len(heads), per_group, scale * log2e, **common,
    )


def score_heads_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: list[int],
    scale: float | None = None,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Summed head-subset attention probabilities ``[B, S_max]`` float32 (launcher with the reference's signature)."""
    out = torch.zeros(q.shape[0], k_cache.shape[2], dtype=torch.float32, device=q.device)
    score_heads_into_triton(out, q, k_cache, seq_lens, heads, scale, num_splits=num_splits)
    return out
