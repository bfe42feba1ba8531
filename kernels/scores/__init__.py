"""``dustin::score_heads`` and ``dustin::score_heads_into``: summed attention probabilities of a few query heads;
``dustin::score_heads_t``: the same sum with the head ids as a tensor, the non-mutating form export graphs use.

The spec is the torch reference (reference.py). CPU tensors go to the C++ kernel (score_heads.cpp; cpu.py says when it
applies, kernels/cpu_ext.py how ``DUSTIN_CPU_KERNELS`` picks the path), else to the reference; CUDA tensors go to
the Triton kernels (triton.py, imported on first use so that importing dustin never imports triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._common import FLOAT_DTYPES, check_gqa, check_same_device, check_seq_lens, check_tensor
from .cpu import score_heads_cpu, score_heads_into_cpu
from .reference import score_heads_into_reference, score_heads_reference

__all__ = ["score_heads", "score_heads_into", "score_heads_reference", "score_heads_into_reference"]

# ``dustin::score_heads_t`` (below) has no public wrapper: only the pass emits it, in graphs meant for export.

_OP = "score_heads"


@torch.library.custom_op("dustin::score_heads", mutates_args=())
def _score_heads_op(
    q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: list[int], scale: float | None = None
) -> torch.Tensor:
    if q.device.type == "cpu":
        return score_heads_cpu(q, k_cache, seq_lens, heads, scale)
    return score_heads_reference(q, k_cache, seq_lens, heads, scale)


@_score_heads_op.register_kernel("cuda")
def _(q, k_cache, seq_lens, heads, scale=None):
    from .triton import score_heads_triton

    return score_heads_triton(q, k_cache, seq_lens, heads, scale)


@_score_heads_op.register_fake
def _(q, k_cache, seq_lens, heads, scale=None):
    return q.new_empty((q.shape[0], k_cache.shape[2]), dtype=torch.float32)


@torch.library.custom_op("dustin::score_heads_into", mutates_args=("out",))
def _score_heads_into_op(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: list[int],
    scale: float | None = None,
) -> None:
    if q.device.type == "cpu":
        score_heads_into_cpu(out, q, k_cache, seq_lens, heads, scale)
        return
    score_heads_into_reference(out, q, k_cache, seq_lens, heads, scale)


@_score_heads_into_op.register_kernel("cuda")
def _(out, q, k_cache, seq_lens, heads, scale=None):
    from .triton import score_heads_into_triton

    score_heads_into_triton(out, q, k_cache, seq_lens, heads, scale)


@_score_heads_into_op.register_fake
def _(out, q, k_cache, seq_lens, heads, scale=None):
    return None


@torch.library.custom_op("dustin::score_heads_t", mutates_args=())
def _score_heads_t_op(
    q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: torch.Tensor, scale: float
) -> torch.Tensor:
    # The export form of score_heads (plain schema: tensors first, no list, no optional, no mutation; what
    # Torch-TensorRT's plugin generation accepts). The head ids are a small constant tensor of the graph.
    if q.device.type == "cpu":
        return score_heads_cpu(q, k_cache, seq_lens, heads.tolist(), scale)
    return score_heads_reference(q, k_cache, seq_lens, heads.tolist(), scale)


@_score_heads_t_op.register_kernel("cuda")
def _(q, k_cache, seq_lens, heads, scale):
    from .triton import score_heads_triton

    return score_heads_triton(q, k_cache, seq_lens, heads.tolist(), scale)


@_score_heads_t_op.register_fake
def _(q, k_cache, seq_lens, heads, scale):
    return q.new_empty((q.shape[0], k_cache.shape[2]), dtype=torch.float32)


def _check(q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: Sequence[int],
           scale: float | None, op: str) -> list[int]:
    check_tensor(op, "q", q, 4, "[B, Hq, T, D]", FLOAT_DTYPES)
    check_tensor(op, "k_cache", k_cache, 4, "[B, Hkv, S_max, D]", FLOAT_DTYPES)
    check_same_device(op, q=q, k_cache=k_cache, seq_lens=seq_lens)
    if q.dtype != k_cache.dtype:
        raise TypeError(f"{op}: `q` ({q.dtype}) and `k_cache` ({k_cache.dtype}) must share one dtype; cast q")
    check_gqa(op, q, k_cache)
    check_seq_lens(op, seq_lens, q.shape[0], 0, k_cache.shape[2])
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in heads
    ):
        raise TypeError(f"{op}: `heads` must be a list of query-head ids (ints), got {heads!r}")
    out_of_range = [h for h in heads if not 0 <= h < q.shape[1]]
    if out_of_range:
        raise ValueError(f"{op}: `heads` {out_of_range} are not query heads of `q`, which has {q.shape[1]} heads")
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"{op}: `scale` must be a positive float or None (1/sqrt(D)), got {scale!r}")
    return list(heads)


def score_heads(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: Sequence[int],
    scale: float | None = None,
) -> torch.Tensor:
    """Σ over ``heads`` and the T rows of ``q [B, Hq, T, D]`` of softmax(q·Kᵀ·scale) over positions < ``seq_lens``;
    returns ``[B, S_max]`` float32 with zeros beyond ``seq_lens``. Reads only the K of the listed heads' KV groups."""
    if not torch.compiler.is_compiling():
        heads = _check(q, k_cache, seq_lens, heads, scale, _OP)
        scale = None if scale is None else float(scale)
    return torch.ops.dustin.score_heads(q, k_cache, seq_lens, list(heads), scale)


def score_heads_into(
    out: torch.Tensor,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    heads: Sequence[int],
    scale: float | None = None,
) -> None:
    """Adds ``score_heads(q, k_cache, seq_lens, heads, scale)`` into ``out [B, S_max]`` float32, in place."""
    if not torch.compiler.is_compiling():
        op = "score_heads_into"
        heads = _check(q, k_cache, seq_lens, heads, scale, op)
        check_tensor(op, "out", out, 2, "[B, S_max]", (torch.float32,))
        if tuple(out.shape) != (q.shape[0], k_cache.shape[2]):
            raise ValueError(
                f"{op}: `out` must have shape [B, S_max] = {(q.shape[0], k_cache.shape[2])}, got {tuple(out.shape)}"
            )
        check_same_device(op, out=out, q=q)
        scale = None if scale is None else float(scale)
    torch.ops.dustin.score_heads_into(out, q, k_cache, seq_lens, list(heads), scale)
