"""Dense causal attention over a static KV cache, in packed-GQA form — the exact dense path.

Contract (shared with ``sparse_attention``, minus the selection):

    q        [B, Hq, T, D]      T query rows per sequence (the new tokens)
    k_cache  [B, Hkv, S_max, D] Hq % Hkv == 0; no repeat_kv copies are made
    v_cache  [B, Hkv, S_max, D]
    seq_lens [B]                cache position where row b's T new tokens start; they are already written at
                                seq_lens[b] .. seq_lens[b] + T - 1
    window   int                0, or a sliding window W: row t then attends only to positions > seq_lens[b] + t - W
    out      [B, Hq, T, D]      row t attends to every position <= seq_lens[b] + t

It equals SDPA over the repeated cache with ``causal_mask_reference(seq_lens, T, S_max, window)`` as the mask, which
is what the graph pass relies on when it replaces such an SDPA call by this op.

Why packed: stock transformers SDPA calls ``repeat_kv`` for q_len > 1 with a mask and copies K/V once per query head
of a group (6x for a 12q/2kv model); folding each KV head's query heads into the row axis gives one SDPA call over
the un-repeated cache (8x faster than stock and 1.8x faster than SDPA(enable_gqa=True) at 16k on a CPU: README).
Each sequence reads only its own span (at most seq_lens[b] + T positions, W with a window), so a cache allocated
larger than the text costs memory, not time, and a finished row (seq_lens 0) costs almost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask_reference(seq_lens: torch.Tensor, rows: int, capacity: int, window: int = 0) -> torch.Tensor:
    """The driver's attention mask ``[B, 1, rows, capacity]`` bool: row t of sequence b, at position
    p = seq_lens[b] + t, sees positions j <= p, and with a sliding window W > 0 only j > p - W (transformers'
    sliding-window convention: the last W positions, itself included)."""
    last = seq_lens.to(torch.long)[:, None] + torch.arange(rows, device=seq_lens.device)  # [B, T]
    j = torch.arange(capacity, device=seq_lens.device)
    visible = j <= last[:, :, None]
    if window:
        visible &= j > last[:, :, None] - window
    return visible[:, None]


def dense_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    batch, q_heads, rows, dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    groups = q_heads // kv_heads
    packed_q = q.reshape(batch, kv_heads, groups * rows, dim)
    out = torch.empty(batch, kv_heads, groups * rows, dim, dtype=q.dtype, device=q.device)
    # One SDPA per distinct start, over that span only (one host sync for the lengths): a short or finished row
    # (seq_lens 0) reads only what it attends to, never the longest row's length.
    for start, members in _rows_by_start(seq_lens.tolist()).items():
        stop = min(start + rows, capacity)
        first = max(0, start + 1 - window) if window else 0  # row 0 sees (start - window, start]
        mask = _packed_mask(start - first, rows, groups, stop - first, window, q.device)
        rows_of = _rows_index(members, q.device)
        out[rows_of] = F.scaled_dot_product_attention(packed_q[rows_of], k_cache[rows_of, :, first:stop],
                                                      v_cache[rows_of, :, first:stop], attn_mask=mask, scale=scale)
    return out.view(batch, q_heads, rows, dim)


def _rows_by_start(starts: list[int]) -> dict[int, list[int]]:
    """Batch rows grouped by their start position (rows of one group share a span and a mask)."""
    groups: dict[int, list[int]] = {}
    for row, start in enumerate(starts):
        groups.setdefault(start, []).append(row)
    return groups


def _rows_index(members: list[int], device: torch.device) -> slice | torch.Tensor:
    """A slice for consecutive rows (views of the cache: nothing copied), else an index tensor."""
    if members[-1] - members[0] + 1 == len(members):
        return slice(members[0], members[-1] + 1)
    return torch.tensor(members, device=device)


def _packed_mask(start: int, rows: int, groups: int, length: int, window: int, device: torch.device) -> torch.Tensor:
    """Bool [1, 1, groups*rows, length] over a span whose position 0 is ``first``: packed row g*rows + t (at span
    position start + t) sees span positions <= start + t (and > start + t - window)."""
    mask = causal_mask_reference(torch.tensor([start], device=device), rows, length, window)  # [1, 1, T, L]
    return mask.repeat(1, 1, groups, 1)  # packed row order is (group, t)
