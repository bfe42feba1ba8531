"""Token selection: one index set per sequence, shared by every layer and head (docs/design.md, "The algorithm").

Contract (the spec of ``dustin::select_tokens``):

    draft_scores  [B, S_max] float or None   draft lookahead scores (``score_heads`` summed over draft steps)
    hist_scores   [B, S_max] float or None   target history scores (``score_heads`` of q*)
    seq_lens      [B] int                    L = seq_lens[b] committed positions; positions >= L are never chosen
    budget, n_sink, window, m: int           n_sink + window <= budget (checked by the public wrapper)
    indices       [B, budget] int64          sorted ascending, -1 padding at the end

Per row, with L = seq_lens[b]:
    - L <= budget: every position 0 .. L-1, then -1 (dense; nothing to select).
    - otherwise the protected set P = [0, n_sink) ∪ [L - window, L), then
        * both scores: the top min(m, budget - |P|) positions by draft score outside P, then fill up to ``budget``
          with the top positions by history score outside what is chosen;
        * draft only: fill the whole remainder by draft score (``m`` is irrelevant);
        * history only: fill the whole remainder by history score (``m`` is ignored);
        * neither: fill with the most recent positions not yet chosen, i.e. the window grows (StreamingLLM).
Ties are broken deterministically toward the more recent position (the recency prior of sink + window); NaN
scores rank lowest.

How: each score is turned into one int64 key per position, (order-preserving int32 image of the float32 score)
<< 32 | position, so that ``topk`` has no ties to break and the answer does not depend on its algorithm;
non-candidates get INT64_MIN. Two ``topk`` calls over [B, S_max] and one small sort.
"""

from __future__ import annotations

import torch

from .._common import cached_arange, workspace

_NOT_A_CANDIDATE = torch.iinfo(torch.int64).min


def _keys(scores: torch.Tensor, n_sink: int, beyond: torch.Tensor, name: str) -> torch.Tensor:
    """int64 keys [B, S]: larger score → larger key, equal scores → larger position wins; non-candidates lowest.

    ``beyond`` [B, S] marks positions >= L - window (the window and everything past L); positions < n_sink are
    cleared by slicing. Eight in-place ops over reused workspaces (no allocation).
    """
    batch, length = beyond.shape
    s32 = workspace(f"select_tokens.{name}.f32", (batch, length), torch.float32, scores.device)
    s32.copy_(scores[:, :length])
    torch.nan_to_num(s32, nan=float("-inf"), out=s32)
    bits = s32.view(torch.int32)
    # IEEE floats are sign-magnitude: flipping the magnitude bits of negatives makes integer order = float order.
    ordered = workspace(f"select_tokens.{name}.i32", (batch, length), torch.int32, scores.device)
    torch.bitwise_right_shift(bits, 31, out=ordered)  # -1 for negatives, 0 otherwise
    ordered.bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)
    keys = workspace(f"select_tokens.{name}", (batch, length), torch.int64, scores.device)
    keys.copy_(ordered)
    keys.bitwise_left_shift_(32).bitwise_or_(cached_arange(length, scores.device))
    keys[:, :n_sink] = _NOT_A_CANDIDATE
    keys.masked_fill_(beyond, _NOT_A_CANDIDATE)
    return keys


def select_tokens_reference(
    draft_scores: torch.Tensor | None,
    hist_scores: torch.Tensor | None,
    seq_lens: torch.Tensor,
    budget: int,
    n_sink: int,
    window: int,
    m: int,
) -> torch.Tensor:
    """Indices [B, budget] int64 of the positions each row's sparse verification attends to (see module docstring)."""
    device = seq_lens.device
    lens = seq_lens.to(torch.int64)
    batch = lens.shape[0]
    slots = torch.arange(budget, device=device)
    dense = torch.where(slots[None, :] < lens[:, None], slots[None, :], -1)  # rows with L <= budget
    if batch == 0 or not bool((lens > budget).any()):  # host sync; selection is once per iteration
        return dense

    rest = budget - n_sink - window
    sink = slots[:n_sink].expand(batch, n_sink)
    recent = (lens[:, None] - window) + torch.arange(window, device=device)  # [B, window]
    if draft_scores is None and hist_scores is None:
        # The window grows over the remainder: the last (window + rest) positions.
        extra = (lens[:, None] - window - rest) + torch.arange(rest, device=device)
        chosen = [extra]
    else:
        length = (draft_scores if draft_scores is not None else hist_scores).shape[1]
        # Candidates lie outside P and below L: n_sink <= j < L - window (disjoint from P when L > budget).
        beyond = cached_arange(length, device)[None, :] >= (lens - window)[:, None]
        chosen = []
        if draft_scores is not None:
            take = rest if hist_scores is None else min(max(m, 0), rest)
            if take:
                keys = _keys(draft_scores, n_sink, beyond, "draft")
                chosen.append(torch.topk(keys, take, dim=1, sorted=False).indices)
        taken = sum(c.shape[1] for c in chosen)
        if hist_scores is not None and rest > taken:
            keys = _keys(hist_scores, n_sink, beyond, "hist")
            if chosen:
                keys.scatter_(1, chosen[0], _NOT_A_CANDIDATE)
            chosen.append(torch.topk(keys, rest - taken, dim=1, sorted=False).indices)
    picked = torch.cat([sink, *chosen, recent], dim=1).sort(dim=1).values
    return torch.where((lens > budget)[:, None], picked, dense)
