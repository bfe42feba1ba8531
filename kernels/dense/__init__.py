"""``dustin::dense_attention``: exact causal attention over the static cache, packed GQA (see reference.py).

One implementation on every device (the torch reference: one SDPA call over the un-repeated cache); there is no
Triton kernel for this op.
"""

from __future__ import annotations

import torch

from .._common import FLOAT_DTYPES, check_gqa, check_same_device, check_seq_lens, check_tensor
from .reference import dense_attention_reference

__all__ = ["dense_attention", "dense_attention_reference"]

_OP = "dense_attention"


@torch.library.custom_op("dustin::dense_attention", mutates_args=())
def _dense_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    return dense_attention_reference(q, k_cache, v_cache, seq_lens, scale)


@_dense_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, scale=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


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
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Exact causal attention of ``q``'s T rows over ``k_cache/v_cache[:, :, : seq_lens + t + 1]`` (packed GQA)."""
    if not torch.compiler.is_compiling():
        _check(q, k_cache, v_cache, seq_lens)
    return torch.ops.dustin.dense_attention(q, k_cache, v_cache, seq_lens, scale)
