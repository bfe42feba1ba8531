"""Seeded inputs and independent oracles shared by the kernel tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Output tolerances per dtype, against float64 oracles computed from the same (rounded) inputs.
TOL = {
    torch.float32: dict(atol=2e-5, rtol=1e-5),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
DTYPES = list(TOL)


def make_attention_case(
    batch: int, q_heads: int, kv_heads: int, dim: int, rows: int, lens: list[int], budget: int,
    dtype: torch.dtype = torch.float32, seed: int = 0, spare: int = 3, pad_anywhere: bool = True,
    index_dtype: torch.dtype = torch.int64,
):
    """q, k_cache, v_cache, indices, seq_lens with distinct random selections and -1 padding (anywhere or at the end).

    Rows select min(budget, L) positions when L > budget, else every position then padding; one row in two also
    drops a few entries to padding so that -1 shows up in sparse rows too.
    """
    g = torch.Generator().manual_seed(seed)
    capacity = max(lens) + rows + spare
    q = torch.randn(batch, q_heads, rows, dim, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, capacity, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, capacity, dim, generator=g).to(dtype)
    indices = torch.full((batch, budget), -1, dtype=torch.int64)
    for b, length in enumerate(lens):
        take = min(budget, length) - (2 if b % 2 and length > 2 else 0)
        chosen = torch.randperm(length, generator=g)[: max(take, 0)]
        indices[b, : chosen.numel()] = chosen
        if pad_anywhere:
            indices[b] = indices[b, torch.randperm(budget, generator=g)]
    seq_lens = torch.tensor(lens, dtype=torch.int64)
    return q, k, v, indices.to(index_dtype), seq_lens.to(index_dtype)


def visible_mask(indices: torch.Tensor, seq_lens: torch.Tensor, rows: int, capacity: int,
                 window: int = 0) -> torch.Tensor:
    """Bool [B, T, S]: built by loops over rows (an independent construction from the kernels' packed masks). With a
    sliding ``window``, row t (at position start + t) keeps only positions > start + t - window."""
    batch = indices.shape[0]
    mask = torch.zeros(batch, rows, capacity, dtype=torch.bool)
    for b in range(batch):
        start = int(seq_lens[b])
        for t in range(rows):
            for pos in indices[b].tolist() + list(range(start, start + t + 1)):
                if pos >= 0 and (not window or pos > start + t - window):
                    mask[b, t, pos] = True
    return mask


def attention_oracle(q, k, v, mask, scale=None) -> torch.Tensor:
    """float64 dense attention with K/V repeated per query head and a [B, T, S] boolean mask."""
    groups = q.shape[1] // k.shape[1]
    k64 = k.double().repeat_interleave(groups, dim=1)
    v64 = v.double().repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q.double(), k64, v64, attn_mask=mask[:, None], scale=scale)


def scores_oracle(q, k, seq_lens, heads, scale=None) -> torch.Tensor:
    """float64 Σ_heads Σ_rows softmax over positions < L, by a loop."""
    batch, q_heads, rows, dim = q.shape
    groups = q_heads // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = torch.zeros(batch, k.shape[2], dtype=torch.float64)
    for b in range(batch):
        length = int(seq_lens[b])
        if length == 0:
            continue
        for h in heads:
            logits = q[b, h].double() @ k[b, h // groups, :length].double().T * scale  # [T, L]
            out[b, :length] += torch.softmax(logits, dim=-1).sum(0)
    return out
