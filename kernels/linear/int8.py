"""``dustin::int8_linear``: a weight-only int8 linear for the draft's decode steps (dustin_compile/draftquant.py).

    y = x @ (qweight * scale[:, None])ᵀ + bias        x float32 [M, K], qweight int8 [N, K], scale float32 [N]

``int8_linear_reference`` is the contract in torch (it widens the whole weight on every call: a spec, not a path).
The op itself is defined by dustin's C++ CPU extension (kernels/linear/int8_linear.cpp, registered in
kernels/cpu_ext.cpp) and exists only once that is built; ``available()`` says whether it is, building it on the first
call (about 40 s, cached). Where it is not (no compiler, ``DUSTIN_CPU_KERNELS=reference``), the draft runs torch's
``_weight_int8pack_mm`` instead, which rounds x and the result to bfloat16: the same weights, proposals that may
differ in a near tie (either is lossless: the target verifies every token).

Why a kernel of dustin's own: torch's reads the weight at ~14 GB/s on the AMX host of the README (the real draft's
LM head, one row), where streaming float32 weights reaches ~28; with two to four weight rows in flight and a
software prefetch this one reaches ~20, and its 5-row products cost ~0.6x torch's (benchmarks/draft_int8.py).
"""

from __future__ import annotations

import torch

from .. import cpu_ext

__all__ = ["available", "int8_linear", "int8_linear_reference"]


def available() -> bool:
    """Whether ``torch.ops.dustin.int8_linear`` runs here: the C++ kernels switched on (``DUSTIN_CPU_KERNELS``) and
    built (on the first call). ``fused`` raises where the build failed, ``auto`` warns once."""
    return cpu_ext.use_kernel("int8_linear", True, "")


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """The C++ kernel (``available()`` must be true): x float32 with any leading shape, contiguous in its rows."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.dustin.int8_linear(flat, qweight, scale, bias)
    return out.reshape(*x.shape[:-1], qweight.shape[0])


def int8_linear_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """The contract in torch: the weight widened to x's dtype and scaled per output row, then ``F.linear``."""
    weight = qweight.to(x.dtype) * scale.to(x.dtype)[:, None]
    return torch.nn.functional.linear(x, weight, bias)
