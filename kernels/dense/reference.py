"""Dense causal attention over a static KV cache, in packed-GQA form — the exact dense path.

Contract (shared with ``sparse_attention``, minus the selection):

    q        [B, Hq, T, D]      T query rows per sequence (the new tokens)
    k_cache  [B, Hkv, S_max, D] Hq % Hkv == 0; no repeat_kv copies are made
    v_cache  [B, Hkv, S_max, D]
    seq_lens [B]                cache position where row b's T new tokens start; they are already written at
                                seq_lens[b] .. seq_lens[b] + T - 1
    window   int                0, or a sliding window W: row t then attends only to positions > seq_lens[b] + t - W
    out      [B, Hq, T, D]      row t attends to every position <= seq_lens[b] + t

Positions a row does not attend to must hold finite values (the driver's caches start as zeros and hold only K/V
its forwards wrote): they are read under a mask where rows share a call (below), and the Inductor / export lowering
(kernels/lowering.py) reads the whole cache under one; a masked NaN or inf would still poison the output.

It equals SDPA over the repeated cache with ``causal_mask_reference(seq_lens, T, S_max, window)`` as the mask, which
is what the graph pass relies on when it replaces such an SDPA call by this op.

Why packed: stock transformers SDPA calls ``repeat_kv`` for q_len > 1 with a mask and copies K/V once per query head
of a group (6x for a 12q/2kv model); folding each KV head's query heads into the row axis gives one SDPA call over
the un-repeated cache (8x faster than stock and 1.8x faster than SDPA(enable_gqa=True) at 16k on a CPU: README).
Each sequence reads its own span (at most seq_lens[b] + T positions, W with a window), or the union of the spans of
neighbouring rows that nearly coincide (``SHARED_SPAN_SLACK``), so a cache allocated larger than the text costs
memory, not time, and a finished row (seq_lens 0) costs almost nothing.
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


# Rows side by side whose spans nearly coincide share one SDPA call over the union of their spans, each row masked to
# its own. After speculation the rows of a batch sit a few positions apart: with one call per distinct start (rows
# sharing a start but not side by side gathered, i.e. copied), a plain decoding step at 8k, batch 4 cost 1.05x (four
# starts) and 1.39x (two starts alternating) the step with the rows in step (benchmarks/finished_rows.py, README).
# A row joins its left neighbours' call while the union read costs at most this much more than their own spans
# together; a finished row (seq_lens 0, a span of T positions) beside a long one therefore keeps its own tiny call.
SHARED_SPAN_SLACK = 1 / 8


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
    starts = seq_lens.tolist()  # one host sync for every layer's spans
    spans = [_span(start, rows, capacity, window) for start in starts]
    for lo, hi in _shared_runs(spans):
        first, stop = min(s[0] for s in spans[lo:hi]), max(s[1] for s in spans[lo:hi])
        mask = _packed_mask([start - first for start in starts[lo:hi]], rows, groups, stop - first, window, q.device)
        out[lo:hi] = F.scaled_dot_product_attention(packed_q[lo:hi], k_cache[lo:hi, :, first:stop],
                                                    v_cache[lo:hi, :, first:stop], attn_mask=mask, scale=scale)
    return out.view(batch, q_heads, rows, dim)


def _span(start: int, rows: int, capacity: int, window: int) -> tuple[int, int]:
    """[first, stop): the cache positions a row starting at ``start`` attends to (row 0 sees (start - window, start])."""
    return (max(0, start + 1 - window) if window else 0), min(start + rows, capacity)


def _shared_runs(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Batch rows ``[lo, hi)``, side by side (slices of the cache: nothing copied), that share one call."""
    runs, lo = [], 0
    for hi in range(1, len(spans) + 1):
        if hi < len(spans) and _worth_sharing(spans[lo : hi + 1]):
            continue
        runs.append((lo, hi))
        lo = hi
    return runs


def _worth_sharing(spans: list[tuple[int, int]]) -> bool:
    union = max(stop for _, stop in spans) - min(first for first, _ in spans)
    own = sum(stop - first for first, stop in spans)
    return union * len(spans) <= (1 + SHARED_SPAN_SLACK) * own


def _packed_mask(starts: list[int], rows: int, groups: int, length: int, window: int,
                 device: torch.device) -> torch.Tensor:
    """Bool [n, 1, groups*rows, length] over a span whose position 0 is the call's first: packed row g*rows + t of
    the call's row i (at span position starts[i] + t) sees span positions <= starts[i] + t (and > starts[i] + t -
    window). One broadcast row [1, ...] when every start is the same."""
    if len(set(starts)) == 1:
        starts = starts[:1]
    mask = causal_mask_reference(torch.tensor(starts, device=device), rows, length, window)  # [n, 1, T, L]
    return mask.repeat(1, 1, groups, 1)  # packed row order is (group, t)
