"""What ranks the cached positions: each selector names the scores it feeds to ``select_tokens``.

Every selector feeds the same ``select_tokens`` (sink + window + top positions) at the same budget, so they differ
only in *what* ranks the positions. ``SELECTORS[name](signals) -> (draft_scores, hist_scores)``, each ``[B, S]`` or
``None``; the score functions below are functions of tensors, and the two that need a forward pass (SnapKV, the
oracle) are handed one as a callable.

- ``dustin``: the draft's lookahead (score heads over the drafted tokens) and the target's history (``q*``).
- ``history`` / ``draft``: one of the two.
- ``streaming``: neither: sink + the most recent positions (StreamingLLM).
- ``snapkv``: chosen once per call from the attention of the prompt's last ``OBSERVE_ROWS`` positions (SnapKV's
  observation window; its rows read the whole prompt, a superset of their causal view by at most that many).
- ``quest``: Quest's page-level upper bound (pages of ``PAGE``, per-channel min/max of K) for ``q*``, per step.
- ``oracle``: the true attention of this iteration's verification queries, every layer, head and row — from a
  dense pass run first (a ceiling, not a method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dustin.kernels import score_heads

PAGE = 16  # Quest's page size
OBSERVE_ROWS = 16  # SnapKV's observation window: the last prompt positions
LOOKAHEAD_SELECTORS = ("dustin", "draft")  # selectors that read the draft's lookahead scores
Scores = torch.Tensor | None


@dataclass
class Signals:
    """What a selector may read in one iteration. The costly signals are callables, computed only when asked
    (``history`` is memoised by the driver: the selection and the guard's recovery estimate share it)."""

    lookahead: Scores  # [B, S] the draft's score heads over the drafted tokens (None without taps)
    history: Callable[[], Scores]  # [B, S] the target's history score of q*
    quest: Callable[[], Scores]  # [B, S] Quest's page bounds for q*
    prompt_window: Callable[[], Scores]  # [B, S] SnapKV's scores (one observation pass per generate call)
    verification: Callable[[], Scores]  # [B, S] the oracle: true attention of this iteration's verification rows


SELECTORS: dict[str, Callable[[Signals], tuple[Scores, Scores]]] = {
    "dustin": lambda s: (s.lookahead, s.history()),
    "history": lambda s: (None, s.history()),
    "draft": lambda s: (s.lookahead, None),
    "streaming": lambda s: (None, None),
    "snapkv": lambda s: (None, s.prompt_window()),
    "quest": lambda s: (None, s.quest()),
    "oracle": lambda s: (None, s.verification()),
}


def history_scores(q_star: torch.Tensor, keys: torch.Tensor, seq_lens: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """softmax(q* Kᵀ) at the history layer, summed over its score heads, over positions < ``seq_lens``."""
    return score_heads(q_star, keys, seq_lens, heads)


def snapkv_scores(observe: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], seq: torch.Tensor,
                  prompt_lens: torch.Tensor, keys: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """SnapKV: the attention of the prompt's last ``OBSERVE_ROWS`` positions over the cached prompt.

    ``observe(ids, positions)`` runs the target over those positions and returns their queries ``[B, Hq, R, D]``
    at the history layer.
    """
    last = prompt_lens - 1  # positions < last are cached; observe the rows before it
    start = (last - OBSERVE_ROWS).clamp_min(0)
    positions = start[:, None] + torch.arange(OBSERVE_ROWS, device=seq.device)
    queries = observe(seq.gather(1, positions), positions)
    return score_heads(queries, keys, last, heads)


def oracle_scores(verify_queries: Callable[[], torch.Tensor], keys: list[torch.Tensor],
                  seq_lens: torch.Tensor) -> torch.Tensor:
    """The true attention of this iteration's verification rows, summed over every layer, head and row.

    ``verify_queries()`` runs the dense verification pass and returns every layer's queries ``[L, B, Hq, T, D]``.
    """
    queries = verify_queries()
    heads = list(range(queries.shape[2]))
    total = None
    for layer_queries, layer_keys in zip(queries, keys):
        scores = score_heads(layer_queries, layer_keys, seq_lens, heads)
        total = scores if total is None else total.add_(scores)
    return total


def quest_scores(q: torch.Tensor, keys: torch.Tensor, seq_lens: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """Per position, the summed (over ``heads``) softmax over pages of Quest's upper bound
    ``sum_d max(q_d * max_d K, q_d * min_d K)`` of the position's page; positions >= seq_lens score 0."""
    batch, kv_heads, capacity, dim = keys.shape
    length = int(seq_lens.max())
    pages = -(-length // PAGE)
    k = keys[:, :, : pages * PAGE].float() if pages * PAGE <= capacity else keys.float()
    k = torch.nn.functional.pad(k, (0, 0, 0, pages * PAGE - k.shape[2])).view(batch, kv_heads, pages, PAGE, dim)
    valid = (torch.arange(pages * PAGE, device=keys.device) < seq_lens[:, None]).view(batch, 1, pages, PAGE, 1)
    kmax = k.masked_fill(~valid, float("-inf")).amax(3)
    kmin = k.masked_fill(~valid, float("inf")).amin(3)
    group = q.shape[1] // kv_heads
    scores = torch.zeros(batch, pages, device=keys.device)
    for h in heads:
        qh = q[:, h, -1].float()[:, None, :]  # [B, 1, D]
        kv = h // group
        bound = torch.maximum(qh * kmax[:, kv], qh * kmin[:, kv]).nan_to_num(neginf=0.0).sum(-1) / dim**0.5
        bound = bound.masked_fill(~valid[:, 0, :, 0, 0], float("-inf"))
        scores += bound.softmax(-1).nan_to_num(0.0)
    out = torch.zeros(batch, capacity, device=keys.device)
    per_pos = scores.repeat_interleave(PAGE, dim=1)[:, : min(capacity, pages * PAGE)]
    out[:, : per_pos.shape[1]] = per_pos
    return out.masked_fill(torch.arange(capacity, device=keys.device) >= seq_lens[:, None], 0.0)
