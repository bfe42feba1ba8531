"""``dustin::score_heads`` (and its ``_into`` / ``_t`` forms) on the CPU: the C++ kernel (score_heads.cpp: the
stored K rows multiplied in place by oneDNN's batch-reduce GEMM, a chunked softmax in three phases) where it
applies, else the torch reference. kernels/cpu_ext.py builds the kernel and reads ``DUSTIN_CPU_KERNELS``.
"""

from __future__ import annotations

import math

import torch

from .. import cpu_ext
from .reference import score_heads_into_reference

TAKES = "float32/bfloat16/float16, a head dim that is a multiple of 16, a K cache with unit stride in D"


def supports(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the C++ kernel takes these inputs (the rest goes to the reference)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and q.shape[-1] % 16 == 0 and k_cache.stride(-1) == 1 and out.stride(-1) == 1)


def score_heads_into_cpu(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor,
                         heads: list[int], scale: float | None) -> None:
    """Adds the head-subset scores into ``out`` on the C++ kernel or the reference, as ``DUSTIN_CPU_KERNELS`` says."""
    if cpu_ext.use_kernel("score_heads", supports(out, q, k_cache), TAKES):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        cpu_ext.load().score_heads_into(out, q, k_cache, seq_lens, list(heads), scale)
        return
    score_heads_into_reference(out, q, k_cache, seq_lens, heads, scale)


def score_heads_cpu(q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: list[int],
                    scale: float | None) -> torch.Tensor:
    out = torch.zeros(q.shape[0], k_cache.shape[2], dtype=torch.float32, device=q.device)
    score_heads_into_cpu(out, q, k_cache, seq_lens, heads, scale)
    return out
