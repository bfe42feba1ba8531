"""Triton (CUDA) token selection; same contract and the same tie rule as ``reference.py``, bit for bit.

One program per batch row. Every position's key is the reference's int64 key ((order-preserving int32 image of the
fp32 score) << 32 | position), recomputed from the scores on each pass rather than stored. The k-th largest key
among the candidates is found by a radix search from the top bit down (64 counting passes over the row: keys are
unique, so "key >= threshold" then selects exactly k positions). The selection is then a predicate on the position
(sink, chosen, window), so one compaction pass in position order writes the output already sorted.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_common import check_launchable


@triton.jit
def _ukey(scores_ptr, pos, valid):
    """Unsigned image of the reference's int64 key (0 for invalid positions, below every real key)."""
    s = tl.load(scores_ptr + pos, mask=valid, other=0.0).to(tl.float32)
    s = tl.where(s != s, float("-inf"), s)  # NaN ranks last
    bits = s.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # arithmetic shift: -1 for negatives
    key = (ordered.to(tl.int64) << 32) | pos.to(tl.int64)
    ukey = (key ^ (-9223372036854775807 - 1)).to(tl.uint64, bitcast=True)  # flip the sign bit: signed → unsigned
    return tl.where(valid, ukey, 0)


@triton.jit
def _kth_largest(scores_ptr, other_ptr, other_threshold, lo, hi, k, USE_OTHER: tl.constexpr, BLOCK: tl.constexpr):
    """The k-th largest key over positions [lo, hi), skipping positions whose ``other`` key is >= other_threshold."""
    threshold = tl.zeros((), tl.uint64)
    bit = tl.full((), 0x8000000000000000, tl.uint64)
    for _ in range(0, 64):  # from the top bit down: keep a bit when enough keys still reach the trial value
        trial = threshold | bit
        bit = bit >> 1
        count = tl.zeros((), tl.int32)
        for start in range(lo, hi, BLOCK):
            pos = start + tl.arange(0, BLOCK)
            valid = pos < hi
            if USE_OTHER:
                valid = valid & (_ukey(other_ptr, pos, valid) < other_threshold)
            count += tl.sum((_ukey(scores_ptr, pos, valid) >= trial).to(tl.int32), 0)
        threshold = tl.where(count >= k, trial, threshold)
    return threshold


@triton.jit
def _select_tokens_kernel(
    DRAFT, HIST, SEQ, OUT, s_draft, s_hist, s_out, length, budget, n_sink, window, take_draft, take_hist,
    HAS_DRAFT: tl.constexpr, HAS_HIST: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    seq = tl.load(SEQ + b).to(tl.int32)
    draft_ptr = DRAFT + b * s_draft
    hist_ptr = HIST + b * s_hist
    never = tl.full((), 0xFFFFFFFFFFFFFFFF, tl.uint64)  # no key reaches it: "nothing chosen"
    thr_draft = never
    thr_hist = never
    lo = n_sink
    hi = seq - window
    sparse = seq > budget
    if sparse:
        if HAS_DRAFT:
            if take_draft > 0:
                thr_draft = _kth_largest(draft_ptr, draft_ptr, never, lo, hi, take_draft, False, BLOCK)
        if HAS_HIST:
            if take_hist > 0:
                thr_hist = _kth_largest(hist_ptr, draft_ptr, thr_draft, lo, hi, take_hist, HAS_DRAFT, BLOCK)
    grow = seq - (budget - n_sink)  # both scores absent: the window grows to cover the remainder
    written = tl.zeros((), tl.int32)
    for start in range(0, length, BLOCK):
        pos = start + tl.arange(0, BLOCK)
        inside = pos < seq
        if sparse:
            keep = (pos < n_sink) | (pos >= hi)
            candidate = inside & (pos >= lo) & (pos < hi)
            if HAS_DRAFT:
                picked = _ukey(draft_ptr, pos, candidate) >= thr_draft
                keep = keep | picked
                candidate = candidate & ~picked
            if HAS_HIST:
                keep = keep | (_ukey(hist_ptr, pos, candidate) >= thr_hist)
            if not HAS_DRAFT and not HAS_HIST:
                keep = keep | (pos >= grow)
            keep = keep & inside
        else:
            keep = inside
        slot = written + tl.cumsum(keep.to(tl.int32), 0) - 1
        tl.store(OUT + b * s_out + slot, pos.to(tl.int64), mask=keep)
        written += tl.sum(keep.to(tl.int32), 0)
    for start in range(written, budget, BLOCK):
        slot = start + tl.arange(0, BLOCK)
        tl.store(OUT + b * s_out + slot, tl.full([BLOCK], -1, tl.int64), mask=slot < budget)


def select_tokens_triton(
    draft_scores: torch.Tensor | None,
    hist_scores: torch.Tensor | None,
    seq_lens: torch.Tensor,
    budget: int,
    n_sink: int,
    window: int,
    m: int,
) -> torch.Tensor:
    """Launcher with the reference's signature (``budget`` etc. positional, as the op passes them)."""
    present = [s for s in (draft_scores, hist_scores) if s is not None]
    check_launchable("select_tokens", seq_lens, *present)
    batch = seq_lens.shape[0]
    out = torch.empty(batch, budget, dtype=torch.int64, device=seq_lens.device)
    if batch == 0:
        return out
    rest = budget - n_sink - window
    take_draft = 0 if draft_scores is None else (rest if hist_scores is None else min(max(m, 0), rest))
    take_hist = 0 if hist_scores is None else rest - take_draft
    length = present[0].shape[1] if present else int(seq_lens.max())
    dummy = present[0] if present else out  # never read when the matching HAS_ flag is False
    draft = draft_scores if draft_scores is not None else dummy
    hist = hist_scores if hist_scores is not None else dummy
    if draft.stride(-1) != 1 or hist.stride(-1) != 1:
        draft, hist = draft.contiguous(), hist.contiguous()  # [B, S] scores: small
    _select_tokens_kernel[(batch,)](
        draft, hist, seq_lens, out, draft.stride(0), hist.stride(0), out.stride(0), length, budget, n_sink, window,
        take_draft, take_hist, HAS_DRAFT=draft_scores is not None, HAS_HIST=hist_scores is not None, BLOCK=1024,
    )
    return out
