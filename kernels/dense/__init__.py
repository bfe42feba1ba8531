"""``dustin::dense_attention``: exact causal attention over the static cache, packed GQA, and ``dustin::causal_mask``:
the driver's attention mask, the one mask the graph pass proves equivalent to ``dense_attention`` (reference.py).

One implementation on every device (the torch reference: one SDPA call per sequence over the un-repeated cache);
there is no Triton kernel for these ops.
"""

from __future__ import annotations

import math

import torch

from .._common import (FLOAT_DTYPES, INDEX_DTYPES, check_gqa, check_same_device, check_seq_lens, check_tensor,
                       check_window)
from .reference import causal_mask_reference, dense_attention_reference

__all__ = ["causal_mask", "causal_mask_reference", "dense_attention", "dense_attention_reference"]

_OP = "dense_attention"


@torch.library.custom_op("dustin::dense_attention", mutates_args=())
def _dense_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float, window: int,
) -> torch.Tensor:
    return dense_attention_reference(q, k_cache, v_cache, seq_lens, scale, window)


@_dense_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, scale, window):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("dustin::causal_mask", mutates_args=())
def _causal_mask_op(seq_lens: torch.Tensor, rows: int, capacity: int, window: int) -> torch.Tensor:
    return causal_mask_reference(seq_lens, rows, capacity, window)


@_causal_mask_op.register_fake
def _(seq_lens, rows, capacity, window):
    return seq_lens.new_empty((seq_lens.shape[0], 1, rows, capacity), dtype=torch.bool)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor) -> None:
    check_tensor(_OP, "q", q, 4, "[B, Hq, T, D]", FLOAT_DTYPES)
    check_tensor(_OP, "k_cache", k_cache, 4, "[B, Hkv, S_max, D]", FLOAT_DTYPES)
    check_tensor(_OP, "v_cache", v_cache, 4, "[B, Hkv, S_max, D]", FLOAT_DTYPES)
    check_same_device(_OP, q=q, k_cache=k_cache, v_cache=v_cache, seq_lens=seq_lens)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{_OP}: `k_cache` {tuple(k_cache.shape)} and `v_cache` {tuple(v_cache.shape)} must have one shape")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(
            f"{_OP}: `q` ({q.dtype}), `k_cache` ({k_cache.dtype}) and `v_cache` ({v_cache.dtype}) must share one "
            "dtype; cast q to the cache dtype"
        )
    check_gqa(_OP, q, k_cache)
    check_seq_lens(_OP, seq_lens, q.shape[0], q.shape[2], k_cache.shape[2])


def dense_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Exact causal attention of ``q``'s T rows over ``k_cache/v_cache[:, :, : seq_lens + t + 1]`` (packed GQA);
    ``window`` > 0 keeps only positions > seq_lens + t - window (a sliding-window layer). Positions a row does not
    attend to are read under a mask and must hold finite values (reference.py)."""
    if not torch.compiler.is_compiling():
        _check(q, k_cache, v_cache, seq_lens)
        check_window(_OP, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.dustin.dense_attention(q, k_cache, v_cache, seq_lens, scale, window)


def causal_mask(seq_lens: torch.Tensor, rows: int, capacity: int, window: int = 0) -> torch.Tensor:
    """The driver's mask ``[B, 1, rows, capacity]``: row t of b sees positions <= seq_lens[b] + t (and, with a
    sliding ``window``, > seq_lens[b] + t - window). An SDPA call masked by it is what the graph pass rewrites."""
    if not torch.compiler.is_compiling():
        check_tensor("causal_mask", "seq_lens", seq_lens, 1, "[B]", INDEX_DTYPES)
        check_window("causal_mask", window)
        if not (isinstance(rows, int) and isinstance(capacity, int) and 1 <= rows <= capacity):
            raise ValueError(f"causal_mask: need 1 <= rows <= capacity (ints), got rows={rows!r}, capacity={capacity!r}")
    return torch.ops.dustin.causal_mask(seq_lens, rows, capacity, window)
