"""Helpers shared by the Triton launchers. Imported only from ``kernels/*/triton.py`` (never at package import)."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (CPU CI): ``tl.dot`` on bf16 is then wrong (triton issue 11584), so the
    kernels upcast their dot operands to fp32 there."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int, at_least: int = 16) -> int:
    """Block sizes must be powers of two; ``tl.dot`` needs every dim >= 16."""
    size = at_least
    while size < n:
        size *= 2
    return size


def check_launchable(op: str, *tensors: torch.Tensor) -> None:
    """The Triton path needs CUDA tensors, or CPU tensors under the interpreter."""
    if interpreting():
        return
    for t in tensors:
        if t.device.type != "cuda":
            raise ValueError(
                f"{op}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests), got {t.device}; "
                "use the public op, which runs the torch reference on CPU"
            )


def scratch(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """fp32 scratch for partial results: uninitialised on the GPU (the kernels write every element), NaN-filled
    under the interpreter so that an element that is read before being written fails the CPU tests."""
    if interpreting():
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device)
    return torch.empty(shape, dtype=torch.float32, device=device)
