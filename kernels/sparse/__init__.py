"""``dustin::sparse_attention``: attention over a selected set of cached positions plus the new rows.

The spec is the torch reference (reference.py). CPU tensors go to the fused gather + attention kernel
(sparse_attention.cpp, built on first use; cpu.py says when it applies, kernels/cpu_ext.py how
``DUSTIN_CPU_KERNELS`` picks the path; once built, it is also the op's CPU kernel in the dispatcher, so that calls
skip this module's Python: kernels/cpu_ext.cpp), else to the reference; CUDA tensors go to the Triton kernel (triton.py,
imported on first use so that importing dustin never imports triton).
"""

from __future__ import annotations

import math

import torch

from .._common import (FLOAT_DTYPES, INDEX_DTYPES, check_gqa, check_same_device, check_seq_lens, check_tensor,
                       check_window)
from .cpu import sparse_attention_cpu
from .reference import sparse_attention_reference

__all__ = ["sparse_attention", "sparse_attention_reference"]

_OP = "sparse_attention"


@torch.library.custom_op("dustin::sparse_attention", mutates_args=())
def _sparse_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int,
) -> torch.Tensor:
    if q.device.type == "cpu":
        return sparse_attention_cpu(q, k_cache, v_cache, indices, seq_lens, scale, window)
    return sparse_attention_reference(q, k_cache, v_cache, indices, seq_lens, scale, window)


@_sparse_attention_op.register_kernel("cuda")
def _(q, k_cache, v_cache, indices, seq_lens, scale, window):
    from .triton import sparse_attention_triton

    return sparse_attention_triton(q, k_cache, v_cache, indices, seq_lens, scale, window)


@_sparse_attention_op.register_fake
def _(q, k_cache, v_cache, indices, seq_lens, scale, window):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


# Internal: the op's Python CPU path as an op of its own, for the C++ CPU entry of dustin::sparse_attention
# (kernels/cpu_ext.cpp, registered once the C++ kernels are loaded) to call where it does not run the fused kernel.
_sparse_attention_cpu_op = torch.library.custom_op("dustin::_sparse_attention_cpu", sparse_attention_cpu,
                                                   mutates_args=())


@_sparse_attention_cpu_op.register_fake
def _(q, k_cache, v_cache, indices, seq_lens, scale, window):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _check_indices(indices: torch.Tensor, seq_lens: torch.Tensor, batch: int) -> None:
    check_tensor(_OP, "indices", indices, 2, "[B, K]", INDEX_DTYPES)
    if indices.shape[0] != batch:
        raise ValueError(f"{_OP}: `indices` has batch {indices.shape[0]} but `q` has batch {batch}; they must match")
    if indices.numel() == 0:
        return
    bad = (indices < -1) | (indices >= seq_lens.view(-1, 1))
    if bool(bad.any()):  # one host sync, eager only
        b, k = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{_OP}: `indices[{b}, {k}]` = {int(indices[b, k])} is out of range: entries must be committed positions "
            f"in [0, seq_lens[{b}]) = [0, {int(seq_lens[b])}) or -1 for padding (the new rows are added by the op)"
        )
    ordered = indices.sort(dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        b, k = (int(x) for x in repeated.nonzero()[0])
        raise ValueError(
            f"{_OP}: `indices[{b}]` lists position {int(ordered[b, k + 1])} more than once; a position may be "
            "selected once (duplicates would be counted twice in the softmax) — deduplicate or pad with -1"
        )


def sparse_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    indices: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Attention of ``q [B, Hq, T, D]`` over the cached positions ``indices [B, K]`` (-1 = padding) plus the T new
    rows at ``seq_lens[b] ..`` (causal), with ``k_cache, v_cache [B, Hkv, S_max, D]``; returns ``[B, Hq, T, D]``.
    ``window`` > 0 restricts row t to positions > seq_lens[b] + t - window (a sliding-window layer).

    Inputs are validated in eager mode (skipped while compiling); see ``reference.py`` for the full contract.
    """
    if not torch.compiler.is_compiling():
        check_tensor(_OP, "q", q, 4, "[B, Hq, T, D]", FLOAT_DTYPES)
        check_tensor(_OP, "k_cache", k_cache, 4, "[B, Hkv, S_max, D]", FLOAT_DTYPES)
        check_tensor(_OP, "v_cache", v_cache, 4, "[B, Hkv, S_max, D]", FLOAT_DTYPES)
        check_same_device(_OP, q=q, k_cache=k_cache, v_cache=v_cache, indices=indices, seq_lens=seq_lens)
        if k_cache.shape != v_cache.shape:
            raise ValueError(
                f"{_OP}: `k_cache` {tuple(k_cache.shape)} and `v_cache` {tuple(v_cache.shape)} must have one shape"
            )
        if not (q.dtype == k_cache.dtype == v_cache.dtype):
            raise TypeError(
                f"{_OP}: `q` ({q.dtype}), `k_cache` ({k_cache.dtype}) and `v_cache` ({v_cache.dtype}) must share one "
                "dtype; cast q to the cache dtype"
            )
        if q.shape[2] < 1:
            raise ValueError(f"{_OP}: `q` must have at least one query row (T >= 1), got shape {tuple(q.shape)}")
        check_gqa(_OP, q, k_cache)
        check_seq_lens(_OP, seq_lens, q.shape[0], q.shape[2], k_cache.shape[2])
        _check_indices(indices, seq_lens, q.shape[0])
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"{_OP}: `scale` must be a positive float or None (1/sqrt(D)), got {scale!r}")
        check_window(_OP, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.dustin.sparse_attention(q, k_cache, v_cache, indices, seq_lens, scale, window)
