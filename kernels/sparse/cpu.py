"""``dustin::sparse_attention`` on the CPU: the fused gather + attention kernel (sparse_attention.cpp, one pass per
(batch row, KV head), so that the gathered rows never make a round trip through a multi-MB workspace, and no
positions or mask tensors are built per call) where it applies, else the torch reference. kernels/cpu_ext.py builds
the kernel and reads ``DUSTIN_CPU_KERNELS``.
"""

from __future__ import annotations

import torch

from .. import cpu_ext
from .reference import sparse_attention_reference

TAKES = ("float32/bfloat16/float16, a head dim that is a multiple of 16 and K/V caches with one set of strides and "
          "unit stride in D")


def supports(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the fused kernel takes these inputs (the rest goes to the reference)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and q.shape[-1] % 16 == 0 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride())


def sparse_attention_fused(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """The op on the fused kernel (the caller has checked ``supports``); it builds the columns and their causal /
    window visibility from ``indices`` and ``seq_lens`` itself, and checks every index against ``seq_lens``."""
    return cpu_ext.load().sparse_attention(q, k_cache, v_cache, indices, seq_lens, scale, window)


def sparse_attention_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
                         seq_lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """The op's CPU implementation: the fused kernel or the reference, as ``DUSTIN_CPU_KERNELS`` says."""
    if cpu_ext.use_kernel("sparse_attention", supports(q, k_cache, v_cache), TAKES):
        return sparse_attention_fused(q, k_cache, v_cache, indices, seq_lens, scale, window)
    return sparse_attention_reference(q, k_cache, v_cache, indices, seq_lens, scale, window)
