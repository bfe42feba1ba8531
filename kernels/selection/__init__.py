"""``dustin::select_tokens``: the shared index set of a sparse verification pass (sink, window, draft, history).

The default implementation is the torch reference (the CPU path and the spec, see reference.py); CUDA tensors go
to the Triton kernel (triton.py, imported on first use so that importing dustin never imports triton), which
returns the same indices bit for bit (same keys, same tie rule).
"""

from __future__ import annotations

import torch

from .._common import INDEX_DTYPES, check_same_device, check_tensor
from .reference import select_tokens_reference

__all__ = ["select_tokens", "select_tokens_reference"]

_OP = "select_tokens"
_SCORE_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.custom_op("dustin::select_tokens", mutates_args=())
def _select_tokens_op(
    draft_scores: torch.Tensor | None,
    hist_scores: torch.Tensor | None,
    seq_lens: torch.Tensor,
    budget: int,
    n_sink: int,
    window: int,
    m: int,
) -> torch.Tensor:
    return select_tokens_reference(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m)


@_select_tokens_op.register_kernel("cuda")
def _(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m):
    from .triton import select_tokens_triton

    return select_tokens_triton(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m)


@_select_tokens_op.register_fake
def _(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m):
    return seq_lens.new_empty((seq_lens.shape[0], budget), dtype=torch.int64)


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{_OP}: `{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{_OP}: `{name}` must be >= {low}, got {value}")


def _check(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m) -> None:
    for name, value, low in (("budget", budget, 1), ("n_sink", n_sink, 0), ("window", window, 0), ("m", m, 0)):
        _check_int(name, value, low)
    if n_sink + window > budget:
        raise ValueError(
            f"{_OP}: `n_sink` + `window` = {n_sink} + {window} = {n_sink + window} exceeds `budget` = {budget}; "
            "the protected sink and window must fit the budget: raise budget or shrink n_sink/window"
        )
    check_tensor(_OP, "seq_lens", seq_lens, 1, "[B]", INDEX_DTYPES)
    scores = {n: s for n, s in (("draft_scores", draft_scores), ("hist_scores", hist_scores)) if s is not None}
    for name, s in scores.items():
        check_tensor(_OP, name, s, 2, "[B, S_max]", _SCORE_DTYPES)
        if s.shape[0] != seq_lens.shape[0]:
            raise ValueError(f"{_OP}: `{name}` has batch {s.shape[0]} but `seq_lens` has {seq_lens.shape[0]} rows")
    check_same_device(_OP, seq_lens=seq_lens, **scores)
    if len(scores) == 2 and draft_scores.shape != hist_scores.shape:
        raise ValueError(
            f"{_OP}: `draft_scores` {tuple(draft_scores.shape)} and `hist_scores` {tuple(hist_scores.shape)} must "
            "have one shape [B, S_max]"
        )
    if seq_lens.numel():
        low, high = int(seq_lens.min()), int(seq_lens.max())
        limit = next(iter(scores.values())).shape[1] if scores else None
        if low < 0 or (limit is not None and high > limit):
            raise ValueError(
                f"{_OP}: `seq_lens` must lie in [0, S_max = {limit}] (the score width), got [{low}, {high}]"
            )


def select_tokens(
    draft_scores: torch.Tensor | None,
    hist_scores: torch.Tensor | None,
    seq_lens: torch.Tensor,
    *,
    budget: int,
    n_sink: int,
    window: int,
    m: int,
) -> torch.Tensor:
    """Indices ``[B, budget]`` int64, sorted, -1 padded: sink + recent window, then top-``m`` by draft score, then
    the rest by history score (see ``reference.py`` for the cases where a score is None)."""
    if not torch.compiler.is_compiling():
        _check(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m)
    return torch.ops.dustin.select_tokens(draft_scores, hist_scores, seq_lens, budget, n_sink, window, m)
