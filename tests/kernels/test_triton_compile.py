"""The Triton kernels compile for a real GPU target (sm_90), not only under the interpreter.

The interpreter accepts programs the compiler rejects (dtype mixes, dot shapes, constexpr misuse), and CI has no
GPU: Triton's bundled ptxas compiles to a cubin without one. The compile runs in a subprocess because kernels
decorated under TRITON_INTERPRET=1 (set by conftest.py) are interpreter objects.
"""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dustin.kernels.scores import triton as sh
from dustin.kernels.selection import triton as st
from dustin.kernels.sparse import triton as sa

POINTERS = {"IDX": "*i32", "SEQ": "*i64", "DRAFT": "*fp32", "HIST": "*bf16", "HEADS": "*i32", "PART_O": "*fp32",
            "PART_LSE": "*fp32", "PART_M": "*fp32", "PART_L": "*fp32", "LSE": "*fp32"}


def compile_one(kernel, dtype, constants):
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in constants:
            sig[n] = "constexpr"
        elif n in POINTERS:
            sig[n] = POINTERS[n]
        elif n in ("Q", "K", "V"):
            sig[n] = "*" + dtype
        elif n == "OUT":
            sig[n] = {sh._score_heads_kernel: "*fp32", st._select_tokens_kernel: "*i64"}.get(kernel, "*" + dtype)
        elif n == "scale_log2":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
    consts = {(names.index(k),): v for k, v in constants.items()}
    triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))


for dtype, upcast in (("bf16", False), ("fp16", False), ("fp32", True)):
    precision = "ieee" if upcast else "tf32"
    for direct in (True, False):
        compile_one(sa._sparse_attention_kernel, dtype, dict(
            GROUPS=7, ROWS=5, HEAD_DIM=128, BLOCK_M=64, BLOCK_N=32, BLOCK_D=128, UPCAST=upcast, DIRECT=direct,
            DOT_PRECISION=precision))
    compile_one(sa._sparse_attention_reduce_kernel, dtype, dict(GROUPS=7, ROWS=5, HEAD_DIM=128, BLOCK_M=64,
                                                                BLOCK_D=128))
    for kernel in (sh._score_lse_kernel, sh._score_heads_kernel):
        compile_one(kernel, dtype, dict(ROWS=1, HEAD_DIM=128, BLOCK_T=16, BLOCK_N=64, BLOCK_D=128, UPCAST=upcast,
                                        DOT_PRECISION=precision))
for has_draft, has_hist in ((True, True), (True, False), (False, True), (False, False)):
    compile_one(st._select_tokens_kernel, "fp32", dict(HAS_DRAFT=has_draft, HAS_HIST=has_hist, BLOCK=1024))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]
