"""Head-subset attention scores: the "sparse estimation on a minimal subset of heads" (docs/design.md).

Contract (the spec of ``dustin::score_heads`` / ``dustin::score_heads_into``; the Triton kernel implements the same):

    q         [B, Hq, T, D]       all query heads; T rows (1 for the history query q*, γ for a draft lookahead)
    k_cache   [B, Hkv, S_max, D]  Hq % Hkv == 0; query head h reads KV head h // (Hq // Hkv); same dtype as q
    seq_lens  [B]                 positions < seq_lens[b] are scored (the committed history)
    heads     list[int]           query-head ids to score (repeats count twice)
    scale     float | None        softmax scale, default 1 / sqrt(D)
    scores    [B, S_max] float32  Σ over listed heads h and rows t of softmax_j(q[b,h,t] · k[b,h//G,j] * scale)
                                  over j < seq_lens[b]; exactly 0 at j >= seq_lens[b] and for rows with seq_lens 0

``score_heads_into`` adds the scores into a caller-owned ``out [B, S_max] float32`` (the driver sums the draft's
lookahead over γ draft steps in one buffer).

How (CPU): only the KV groups of the listed heads are read, and never as a full-precision copy of the cache: for
reduced-precision caches K is converted per batch row in L2-sized chunks into a reused fp32 workspace and
multiplied there, so the logits are exact fp32 dot products of the stored values. A bf16 matmul was not faster on a
CPU without AVX512-BF16 and rounds the logits to bf16 (0.25 absolute error at |logit| ~ 100). Logits of all rows land in one fp32
workspace [B, R, L]; the softmax is done by hand (max, exp, sum) and its normalisation fused into the row sum.
"""

from __future__ import annotations

import math

import torch

from .._common import workspace

# fp32 bytes per conversion chunk: about one core's L2, so that the converted rows are still cached when multiplied
# (chunk sizes from 1k to 8k positions and one whole-batch chunk were measured: README, kernel notes).
CHUNK_BYTES = 2 * 2**20


def _group_rows(q: torch.Tensor, heads: list[int], kv_heads: int) -> list[tuple[int, list[int]]]:
    """Listed heads bucketed by KV group, in first-seen order: [(group, [head, ...]), ...]."""
    per_group = q.shape[1] // kv_heads
    groups: dict[int, list[int]] = {}
    for h in heads:
        groups.setdefault(h // per_group, []).append(h)
    return list(groups.items())


def _logits_into(logits: torch.Tensor, q_rows: torch.Tensor, keys: torch.Tensor, lengths: list[int]) -> None:
    """logits[b, :, :lengths[b]] = q_rows[b] [R, D] @ keys[b, :lengths[b]]ᵀ in fp32 (reduced-precision keys are
    converted by chunks). Each row reads only its own length (a finished row, length 0, reads nothing); the rest of
    ``logits`` is left as it was."""
    dim = keys.shape[2]
    if keys.dtype == torch.float32:
        for b, length in enumerate(lengths):
            torch.mm(q_rows[b], keys[b, :length].t(), out=logits[b, :, :length])
        return
    step = max(256, CHUNK_BYTES // (4 * dim))
    chunk = workspace("score_heads.k_chunk", (min(step, keys.shape[1]), dim), torch.float32, keys.device)
    single = q_rows.shape[1] == 1  # one row: gemv, which skips the packing a 1-row gemm pays for
    for b, length in enumerate(lengths):
        for start in range(0, length, step):
            stop = min(start + step, length)
            part = chunk[: stop - start]
            part.copy_(keys[b, start:stop])
            if single:
                torch.mv(part, q_rows[b, 0], out=logits[b, 0, start:stop])
            else:
                torch.mm(q_rows[b], part.t(), out=logits[b, :, start:stop])


def score_heads_into_reference(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: list[int],
    scale: float | None = None,
) -> None:
    """Adds the summed head-subset attention probabilities into ``out`` (see the module docstring)."""
    batch, _, rows, dim = q.shape
    if batch == 0 or not heads:
        return
    lengths = seq_lens.tolist()  # one host sync: each row reads only its own length
    length = max(lengths)
    if length <= 0:
        return
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    buckets = _group_rows(q, heads, k_cache.shape[1])
    total_rows = len(heads) * rows
    logits = workspace("score_heads.logits", (batch, total_rows, length), torch.float32, q.device)
    first = 0
    for group, group_heads in buckets:
        count = len(group_heads) * rows
        q_rows = q[:, group_heads].reshape(batch, count, dim).to(torch.float32) * scale  # small copy
        # bmm writes straight into the strided slice (its rows keep unit stride), no staging copy.
        _logits_into(logits[:, first : first + count], q_rows, k_cache[:, group, :length], lengths)
        first += count

    # Positions >= seq_lens[b] get -inf before the softmax; rows with seq_lens 0 are all -inf and zeroed at the end.
    beyond = torch.arange(length, device=q.device)[None, :] >= seq_lens.view(batch, 1)
    logits.masked_fill_(beyond[:, None, :], float("-inf"))
    peak = logits.amax(dim=2, keepdim=True)
    peak.masked_fill_(peak == float("-inf"), 0.0)
    logits.sub_(peak).exp_()
    inverse = logits.sum(dim=2, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).reciprocal_()
    # Normalise and sum the rows in one pass: out[b, j] += Σ_r logits[b, r, j] / Σ_j' logits[b, r, j'].
    out[:, :length].unsqueeze(1).baddbmm_(inverse.transpose(1, 2), logits)


def score_heads_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: list[int],
    scale: float | None = None,
) -> torch.Tensor:
    """Summed head-subset attention probabilities ``[B, S_max]`` float32 (see the module docstring)."""
    out = torch.zeros(q.shape[0], k_cache.shape[2], dtype=torch.float32, device=q.device)
    score_heads_into_reference(out, q, k_cache, seq_lens, heads, scale)
    return out
