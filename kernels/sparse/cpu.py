"""The fused CPU kernel of ``dustin::sparse_attention`` (cpu.cpp): gather + attention in one pass per (batch row,
KV head), so that the gathered rows never make a round trip through a multi-MB workspace.

It is compiled on first use with torch's C++ extension loader (g++ and ninja; about 30 s, then cached in torch's
extension directory, one build per torch version and vector ISA) with the flags Inductor uses for this CPU.
``DUSTIN_SPARSE_KERNEL`` picks the CPU path:

- ``auto`` (default): the fused kernel where it applies (float32 / bfloat16 / float16, head dim a multiple of 16,
  K and V caches with one set of strides and unit stride in D), else the torch reference; if the build fails, one
  warning says why and the reference runs (it computes the same attention, more slowly).
- ``reference``: always the torch reference (reference.py; nothing is built).
- ``fused``: the fused kernel; a failed build or an unsupported input raises instead of falling back.

Both paths compute the op's contract (reference.py) and are tested against the same float64 oracle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import torch

from .reference import sparse_attention_reference

ENV = "DUSTIN_SPARSE_KERNEL"
CHOICES = ("auto", "reference", "fused")
_SOURCE = Path(__file__).with_name("cpu.cpp")
_STATE: dict = {"module": None, "error": None}


def choice() -> str:
    """The value of ``DUSTIN_SPARSE_KERNEL`` (``auto`` when unset); a bad value is refused with the choices."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a choice: use one of {', '.join(CHOICES)} (auto is the default)")
    return value


def _build_flags() -> list[str]:
    """-O3 plus Inductor's vector-ISA flags and macro for this CPU (at::vec then compiles to AVX-512 / AVX2 / ...)."""
    flags = ["-O3", "-fopenmp"]
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = pick_vec_isa()
        flags += str(isa.build_arch_flags()).split() + [f"-D{macro}" for macro in isa.build_macro()]
    except Exception:  # an ISA Inductor does not know: the generic at::vec code, still correct
        pass
    return flags


def _ninja_on_path() -> None:
    """torch's loader runs ``ninja`` from PATH; the ``ninja`` wheel's binary is not on it in an unactivated venv."""
    if shutil.which("ninja"):
        return
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass


def load():
    """The compiled module (built on first call), or None with the reason in ``build_error()``."""
    if _STATE["module"] is not None or _STATE["error"] is not None:
        return _STATE["module"]
    flags = _build_flags()
    tag = hashlib.sha1(" ".join([torch.__version__, *flags]).encode()).hexdigest()[:10]
    try:
        from torch.utils.cpp_extension import load as load_extension

        _ninja_on_path()
        _STATE["module"] = load_extension(f"dustin_sparse_cpu_{tag}", [str(_SOURCE)], extra_cflags=flags,
                                          extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, a toolchain torch cannot drive
        _STATE["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error) else ''}"
    return _STATE["module"]


def build_error() -> str | None:
    return _STATE["error"]


def supports(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the fused kernel takes these inputs (the rest goes to the reference)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and q.shape[-1] % 16 == 0 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride())


def sparse_attention_fused(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """The op on the fused kernel (the caller has checked ``supports``); it builds the columns and their causal /
    window visibility from ``indices`` and ``seq_lens`` itself, and checks every index against ``seq_lens``."""
    return load().sparse_attention(q, k_cache, v_cache, indices, seq_lens, scale, window)


def sparse_attention_cpu(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
                         seq_lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """The op's CPU implementation: the fused kernel or the reference, as ``DUSTIN_SPARSE_KERNEL`` says."""
    mode = choice()
    if mode == "reference":
        return sparse_attention_reference(q, k_cache, v_cache, indices, seq_lens, scale, window)
    fits = supports(q, k_cache, v_cache)
    if mode == "fused" and not fits:
        raise ValueError(
            f"{ENV}=fused: the fused CPU kernel takes float32/bfloat16/float16, a head dim that is a multiple of 16 "
            f"and K/V caches with one set of strides and unit stride in D; got {q.dtype}, D = {q.shape[-1]}, "
            f"strides {k_cache.stride()} / {v_cache.stride()} — unset {ENV} to fall back to the reference")
    if fits and load() is not None:
        return sparse_attention_fused(q, k_cache, v_cache, indices, seq_lens, scale, window)
    if fits and mode == "fused":
        raise RuntimeError(f"{ENV}=fused: the fused CPU kernel could not be built ({build_error()})")
    if fits and not _STATE.get("warned"):
        _STATE["warned"] = True
        warnings.warn(f"dustin: the fused CPU sparse-attention kernel could not be built ({build_error()}); using "
                      f"the torch reference (same results, slower). Install g++ and ninja, or set {ENV}=reference "
                      "to skip the build", stacklevel=2)
    return sparse_attention_reference(q, k_cache, v_cache, indices, seq_lens, scale, window)
