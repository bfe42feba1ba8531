"""``dustin::dense_attention``: exact causal attention over the static cache, packed GQA (see reference.py)."""

from __future__ import annotations

import torch

from .reference import dense_attention_reference

__all__ = ["dense_attention", "dense_attention_reference"]


@torch.library.custom_op("dustin::dense_attention", mutates_args=())
def _dense_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    return dense_attention_reference(q, k_cache, v_cache, seq_lens, scale)


@_dense_attention_op.register_fake
def _(q, k_cache, v_cache, seq_lens, scale=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor) -> None:
    for name, t, rank in (("q", q, 4), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4), ("seq_lens", seq_lens, 1)):
        if not isinstance(t, torch.Tensor) or t.dim() != rank:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"dense_attention: `{name}` must be a {rank}-D tensor, got {got}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"dense_attention: `k_cache` {tuple(k_cache.shape)} and `v_cache` {tuple(v_cache.shape)} differ")
    if q.shape[0] != k_cache.shape[0] or seq_lens.shape[0] != q.shape[0]:
        raise ValueError("dense_attention: batch sizes of `q`, `k_cache` and `seq_lens` must agree")
    if q.shape[1] % k_cache.shape[1] or q.shape[3] != k_cache.shape[3]:
        raise ValueError(
            f"dense_attention: `q` has {q.shape[1]} heads of dim {q.shape[3]}, `k_cache` {k_cache.shape[1]} heads of "
            f"dim {k_cache.shape[3]}: query heads must be a multiple of KV heads and head dims must match"
        )
    if q.dtype != k_cache.dtype or q.device != k_cache.device or v_cache.dtype != k_cache.dtype:
        raise TypeError(f"dense_attention: q {q.dtype}/{q.device} and caches {k_cache.dtype}/{k_cache.device} must match")
    if seq_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"dense_attention: `seq_lens` must be int32 or int64, got {seq_lens.dtype}")
    if seq_lens.numel() and (int(seq_lens.min()) < 0 or int(seq_lens.max()) + q.shape[2] > k_cache.shape[2]):
        raise ValueError(
            f"dense_attention: `seq_lens` + T must lie in [0, {k_cache.shape[2]}] (the cache length); "
            f"got range [{int(seq_lens.min())}, {int(seq_lens.max())}] with T={q.shape[2]}"
        )


def dense_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Exact causal attention of ``q``'s T rows over ``k_cache/v_cache[:, :, : seq_lens + t + 1]`` (packed GQA)."""
    if not torch.compiler.is_compiling():
        _check(q, k_cache, v_cache, seq_lens)
    return torch.ops.dustin.dense_attention(q, k_cache, v_cache, seq_lens, scale)
