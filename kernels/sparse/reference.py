"""Sparse verification attention: each query row attends to a selected set of cached positions plus the new rows.

Contract (the spec of ``dustin::sparse_attention``; the Triton kernel implements the same):

    q         [B, Hq, T, D]       T >= 1 new query rows per sequence; fp32, fp16 or bf16
    k_cache   [B, Hkv, S_max, D]  Hq % Hkv == 0 (GQA: query head h reads KV head h // (Hq // Hkv)); same dtype as q
    v_cache   [B, Hkv, S_max, D]
    indices   [B, K]              int32/int64 cached positions < seq_lens[b], shared by every head; -1 = padding
                                  (allowed anywhere, contributes nothing); duplicates are a caller error
    seq_lens  [B]                 cache position where row b's T new tokens start; they are ALREADY written at
                                  seq_lens[b] .. seq_lens[b] + T - 1
    scale     float | None        softmax scale, default 1 / sqrt(D)
    window    int                 0, or a sliding window W: row t then sees only positions > seq_lens[b] + t - W
                                  (the selection and the new rows alike), as in a sliding-window layer
    out       [B, Hq, T, D]       q's dtype: row t attends to {indices[b]} ∪ {seq_lens[b] .. seq_lens[b] + t}

Softmax and accumulation are fp32 (SDPA's CPU kernel accumulates reduced precision in fp32).

This reference is the spec, and the CPU path wherever the fused kernel (sparse_attention.cpp, see cpu.py) does not
apply or is switched off. How: the K+T rows of every (b, kv head) are gathered with one flat-row ``index_select``
per cache into a reused workspace, then ONE SDPA call runs over the packed GQA layout (the Hq/Hkv query heads of a
KV head folded into the row axis: [B, Hkv, (Hq/Hkv)*T, D]) with an additive mask for causality: the cached
template [1, 1, rows, K+T] alone when nothing is padded and there is no window (the usual case; one host read of
``indices.min()`` decides), else a per-batch mask [B, 1, rows, K+T] that adds padding and the window cut. Skipping
the per-call mask (and its parallel add) took the op from 2.84 to 2.71 ms (bf16) and 3.95 to 3.76 ms (fp32)
single-threaded, and from 32 to 24 ms with 2 threads while another job held a core (fewer OpenMP regions to wait
on).
Alternatives measured and dropped (slower on the CPU; 1 thread, headline shapes B=4, 28/4 heads, d 128, T=5, K=512;
the older numbers are in the README's kernel notes): converting the gathered rows to fp32 for bmm + softmax + bmm
(4.5 vs 1.8 ms for the attention part in bf16, 2.7 vs 2.4 in fp32), bf16 matmuls with fp32 softmax (2.4 vs 1.8 ms,
and it rounds the logits to bf16), an unmasked SDPA over the selection merged with the new rows by log-sum-exp (2.8 vs
1.8 ms), SDPA(enable_gqa) on [B, Hq, T, D] (3.1 vs 1.8 ms), a bool mask instead of the additive one, one SDPA head
per (b, kv head) (no change), per-batch gather + SDPA so that the rows stay in L2 (slower), gathering by advanced
indexing, ``torch.gather`` or ``F.embedding`` (2 to 4x slower than ``index_select``), ``index_select`` on 8-byte
views of the rows (no change). What remains is SDPA's blocking: 35 packed rows are two query blocks (32 + 3) and
517 keys two key blocks (512 + 5); 32 x 512 runs in 1.4 ms against 1.9 ms for 35 x 517, which the shapes fix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._common import cached_arange, cached_constant, workspace


def _causal_template(groups: int, rows: int, selected: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [1, 1, groups*rows, selected+rows]: 0 on the selection, causal -inf among the new columns."""

    def build() -> torch.Tensor:
        t = torch.arange(rows, device=device).repeat(groups)  # packed row r = g * rows + t
        j = torch.arange(rows, device=device)
        hidden = j[None, :] > t[:, None]  # new column j is visible to row t iff j <= t
        tpl = torch.zeros(groups * rows, selected + rows, dtype=dtype, device=device)
        tpl[:, selected:].masked_fill_(hidden, float("-inf"))
        return tpl[None, None]

    return cached_constant(("sparse_attention.causal", groups, rows, selected, dtype, device), build)


def _flat_rows(cache: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
    """``cache`` as a [rows, D] matrix plus the row strides of its batch and head dims, or None if impossible.

    Works for the contiguous static cache and for views that keep each position's D values contiguous (e.g. a
    batch or length slice of a larger cache) without copying the cache.
    """
    b, h, s, d = cache.shape
    s0, s1, s2, s3 = cache.stride()
    if (s3 != 1 and d > 1) or s2 != d or s0 % d or s1 % d or cache.numel() == 0:
        return None
    last = (b - 1) * s0 + (h - 1) * s1 + (s - 1) * s2
    flat = torch.as_strided(cache, (last // d + 1, d), (d, 1), cache.storage_offset())
    return flat, s0 // d, s1 // d


def _row_ids(batch: int, heads: int, batch_rows: int, head_rows: int, positions: torch.Tensor) -> torch.Tensor:
    """Flat row ids [B*H*W] = b*batch_rows + h*head_rows + positions[b, w] (one add into a workspace)."""
    device = positions.device

    def build() -> torch.Tensor:
        b = torch.arange(batch, device=device) * batch_rows
        return (b[:, None] + torch.arange(heads, device=device) * head_rows)[:, :, None]

    base = cached_constant(("sparse_attention.rows", batch, heads, batch_rows, head_rows, device), build)
    ids = workspace("sparse_attention.rows", (batch, heads, positions.shape[1]), torch.int64, positions.device)
    torch.add(base, positions[:, None, :], out=ids)
    return ids.view(-1)


def _gather(
    cache: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, ids: torch.Tensor | None
) -> torch.Tensor | None:
    """out[b, h, w] = cache[b, h, positions[b, w]]; returns the flat row ids so that V can reuse K's."""
    batch, heads, _, dim = cache.shape
    flat = _flat_rows(cache)
    if flat is None:  # rare strided cache: advanced indexing allocates, but stays correct
        b = torch.arange(batch, device=cache.device)[:, None, None]
        h = torch.arange(heads, device=cache.device)[None, :, None]
        out.copy_(cache[b, h, positions[:, None, :]])
        return None
    matrix, batch_rows, head_rows = flat
    if ids is None or ids.numel() != out.numel() // dim:
        ids = _row_ids(batch, heads, batch_rows, head_rows, positions)
    torch.index_select(matrix, 0, ids, out=out.view(-1, dim))
    return ids


def _cut_to_window(mask: torch.Tensor, positions: torch.Tensor, first_new: torch.Tensor, window: int, groups: int,
                   rows: int) -> None:
    """Hide from packed row g*T + t every column whose position is <= seq_lens + t - window (in place)."""
    row_pos = first_new + cached_arange(rows, positions.device)  # [B, T]
    hidden = positions[:, None, :] <= (row_pos - window)[:, :, None]  # [B, T, W]
    mask.masked_fill_(hidden.repeat(1, groups, 1)[:, None], float("-inf"))


def sparse_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Attention of ``q``'s T rows over ``indices`` ∪ causal new rows (see the module docstring for the contract)."""
    batch, q_heads, rows, dim = q.shape
    kv_heads = k_cache.shape[1]
    groups = q_heads // kv_heads
    selected = indices.shape[1]
    width = selected + rows
    scale = 1.0 / math.sqrt(dim) if scale is None else scale

    # Positions per row of the batch: the selection, then the new rows. Padding is redirected to the first new row
    # (always written, so finite) and masked below; any other row could hold stale data of a rolled-back step.
    positions = workspace("sparse_attention.positions", (batch, width), torch.int64, q.device)
    first_new = seq_lens.view(batch, 1).to(torch.int64)
    chosen = positions[:, :selected]
    chosen.copy_(indices)  # int32 or int64 in, int64 rows out
    padded = indices.numel() > 0 and bool(indices.min() < 0)  # one host read; usually False (a full selection)
    if padded:
        missing = indices < 0
        torch.where(missing, first_new, chosen, out=chosen)
    torch.add(first_new, cached_arange(rows, q.device), out=positions[:, selected:])

    keys = workspace("sparse_attention.keys", (batch, kv_heads, width, dim), k_cache.dtype, q.device)
    values = workspace("sparse_attention.values", (batch, kv_heads, width, dim), v_cache.dtype, q.device)
    ids = _gather(k_cache, positions, keys, None)
    _gather(v_cache, positions, values, ids if v_cache.stride() == k_cache.stride() else None)

    # Additive mask = causal template [1, 1, G*T, W] (cached; SDPA broadcasts it over B and Hkv), plus a padding row
    # [B, 1, 1, W] and the window cut only when needed: 0 / -inf are exact in every dtype.
    mask = _causal_template(groups, rows, selected, q.dtype, q.device)
    if padded or window:
        pad = workspace("sparse_attention.pad", (batch, width), q.dtype, q.device)
        pad.zero_()
        if padded:
            pad[:, :selected].masked_fill_(missing, float("-inf"))
        full = workspace("sparse_attention.mask", (batch, 1, groups * rows, width), q.dtype, q.device)
        mask = torch.add(pad.view(batch, 1, 1, width), mask, out=full)
        if window:
            _cut_to_window(mask, positions, first_new, window, groups, rows)

    packed_q = q.reshape(batch, kv_heads, groups * rows, dim)  # a view for the usual contiguous q
    out = F.scaled_dot_product_attention(packed_q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(batch, q_heads, rows, dim).contiguous()
