"""dustin's C++ CPU kernels: ``dustin::sparse_attention`` (kernels/sparse/sparse_attention.cpp, gather + attention
fused per (batch row, KV head)) and ``dustin::score_heads`` (kernels/scores/score_heads.cpp, the head-subset scores
straight from the cache), both on oneDNN's batch-reduce GEMM micro-kernel (AMX for bf16 where the CPU has it); and
``dustin::int8_linear`` (kernels/linear/int8_linear.cpp, the int8 draft's weight-only products: kernels/linear/int8.py).

They are compiled on first use, as one extension, with torch's C++ extension loader (g++ and ninja; about 40 s, then
cached in torch's extension directory, one build per torch version and vector ISA) with the flags Inductor uses for
this CPU. ``DUSTIN_CPU_KERNELS`` picks the CPU path of those ops:

- ``auto`` (default): the C++ kernels where they apply (float32 / bfloat16 / float16, head dim a multiple of 16, K
  (and V) caches with unit stride in D), else the torch references; if the build fails, one warning says why and the
  references run (they compute the same results, more slowly).
- ``reference``: always the torch references (``reference.py`` of each op; nothing is built); an int8 draft runs
  torch's ``_weight_int8pack_mm``.
- ``fused``: the C++ kernels; a failed build or an unsupported input raises instead of falling back.

Both paths compute each op's contract (its reference.py) and are tested against the same float64 oracles.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import torch

ENV = "DUSTIN_CPU_KERNELS"
CHOICES = ("auto", "reference", "fused")
_HERE = Path(__file__).parent
SOURCES = [_HERE / "cpu_ext.cpp", _HERE / "sparse" / "sparse_attention.cpp", _HERE / "scores" / "score_heads.cpp",
           _HERE / "linear" / "int8_linear.cpp"]
_STATE: dict = {"module": None, "error": None, "warned": False}


def choice() -> str:
    """The value of ``DUSTIN_CPU_KERNELS`` (``auto`` when unset); a bad value is refused with the choices."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not a choice: use one of {', '.join(CHOICES)} (auto is the default)")
    return value


def build_flags() -> list[str]:
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
    """The compiled module (built on the first call), or None with the reason in ``build_error()``."""
    if _STATE["module"] is not None or _STATE["error"] is not None:
        return _STATE["module"]
    flags = build_flags()
    tag = hashlib.sha1(" ".join([torch.__version__, *flags]).encode()).hexdigest()[:10]
    try:
        from torch.utils.cpp_extension import load as load_extension

        _ninja_on_path()
        _STATE["module"] = load_extension(f"dustin_cpu_kernels_{tag}", [str(s) for s in SOURCES], extra_cflags=flags,
                                          extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, a toolchain torch cannot drive
        lines = str(error).strip().splitlines()
        _STATE["error"] = f"{type(error).__name__}: {lines[-1] if lines else ''}"
    return _STATE["module"]


def build_error() -> str | None:
    return _STATE["error"]


def use_kernel(op: str, fits: bool, why_not: str) -> bool:
    """Whether ``op`` runs its C++ kernel for inputs that do (``fits``) or do not fit it; ``why_not`` names what the
    kernel takes. ``fused`` raises where ``auto`` falls back to the reference (with one warning after a failed build)."""
    mode = choice()
    if mode == "reference":
        return False
    if not fits:
        if mode == "fused":
            raise ValueError(f"{ENV}=fused: the C++ kernel of {op} takes {why_not} — unset {ENV} to fall back to the "
                             "reference")
        return False
    if load() is not None:
        return True
    if mode == "fused":
        raise RuntimeError(f"{ENV}=fused: dustin's C++ CPU kernels could not be built ({build_error()})")
    if not _STATE["warned"]:
        _STATE["warned"] = True
        warnings.warn(f"dustin: the C++ CPU kernels could not be built ({build_error()}); using the torch references "
                      f"(same results, slower). Install g++ and ninja, or set {ENV}=reference to skip the build",
                      stacklevel=3)
    return False
