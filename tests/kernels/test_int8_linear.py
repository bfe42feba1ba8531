"""dustin::int8_linear (kernels/linear/int8_linear.cpp): x @ (q * scale)ᵀ + bias against a float64 oracle, on the
shapes of real drafts and odd ones (K not a multiple of the vector width, N not a multiple of the block, 1-9 rows),
with and without bias; its errors; and the vector paths of other CPUs (AVX2, scalar), built apart (slow)."""

from __future__ import annotations

import pytest
import torch

from dustin.kernels import cpu_ext
from dustin.kernels.linear import int8 as int8_kernel


@pytest.fixture(scope="module")
def built():
    module = cpu_ext.load()
    assert module is not None, f"the C++ kernels must build on this machine: {cpu_ext.build_error()}"
    assert int8_kernel.available()
    return module


def _case(rows: int, k: int, n: int, bias: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g) * 3
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(n, generator=g) * 0.02 + 1e-4).to(torch.bfloat16).float()  # what Int8Linear stores
    b = torch.randn(n, generator=g) * 10 if bias else None  # Qwen's K biases reach tens
    return x, q, scale, b


def _oracle(x, q, scale, b):
    out = x.double() @ (q.double() * scale.double()[:, None]).T
    return out if b is None else out + b.double()


# (rows, K, N): the real 0.5B draft's q/o, gate/up, down and a slice of its LM head; K of 16 and of a tail (17, 40,
# 100: not a multiple of 8 or 16), N of 1, of a block tail (5, 7, 13) and across parallel tasks (1031).
SHAPES = [(1, 896, 896), (2, 896, 4864), (5, 4864, 896), (8, 896, 2051), (1, 16, 1), (3, 17, 5), (4, 40, 7),
          (6, 100, 13), (9, 48, 1031), (7, 272, 260)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_matches_the_float64_oracle(built, rows, k, n, bias):
    x, q, scale, b = _case(rows, k, n, bias, seed=rows * 1000 + k + n)
    got = int8_kernel.int8_linear(x, q, scale, b)
    want = _oracle(x, q, scale, b)
    assert got.dtype == torch.float32 and got.shape == (rows, n)
    # float32 accumulation over K terms: a few ulps of the sum of |terms| per output
    magnitude = x.double().abs() @ (q.double().abs() * scale.double()[:, None]).T + (0 if b is None else b.abs().double())
    for out in (got, int8_kernel.int8_linear_reference(x, q, scale, b)):  # the kernel, and the spec in torch
        assert bool(((out.double() - want).abs() <= 1e-6 * magnitude + 1e-6).all())


def test_leading_dims_and_strided_rows(built):
    x, q, scale, b = _case(6, 64, 33, True, seed=7)
    wide = torch.randn(2, 3, 128)
    view = wide[..., ::2]  # not contiguous: the wrapper makes the rows contiguous
    view.copy_(x.reshape(2, 3, 64))
    got = int8_kernel.int8_linear(view, q, scale, b)
    assert got.shape == (2, 3, 33)
    torch.testing.assert_close(got.reshape(6, 33).double(), _oracle(x, q, scale, b), rtol=1e-6, atol=1e-4)


def test_bad_inputs_are_refused_with_the_argument(built):
    x, q, scale, b = _case(2, 32, 8, True, seed=3)
    op = torch.ops.dustin.int8_linear
    with pytest.raises(RuntimeError, match="x must be a contiguous 2-D float32"):
        op(x.double(), q, scale, b)
    with pytest.raises(RuntimeError, match="qweight must be a contiguous 2-D int8 CPU tensor"):
        op(x, q.float(), scale, b)
    with pytest.raises(RuntimeError, match="x has 32 features, qweight 31"):
        op(x, q[:, :31].contiguous(), scale, b)
    with pytest.raises(RuntimeError, match="scale must be a contiguous float32 CPU vector of 8"):
        op(x, q, scale[:7].contiguous(), b)
    with pytest.raises(RuntimeError, match="bias must be a contiguous float32 CPU vector of 8"):
        op(x, q, scale, b.double())


def test_reference_switch_leaves_torchs_kernel(monkeypatch):
    monkeypatch.setenv("DUSTIN_CPU_KERNELS", "reference")
    assert not int8_kernel.available()


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_other_vector_paths_match_the_oracle(isa, tmp_path):
    """The AVX2 and scalar paths, compiled apart (the build picks this CPU's path; an AVX2 or non-x86 host runs the
    others). ~40 s a build."""
    from torch.utils.cpp_extension import load_inline

    source = (cpu_ext._HERE / "linear" / "int8_linear.cpp").read_text()
    flags = ["-O3", "-fopenmp"] + (["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"] if isa == "avx2" else [])
    module = load_inline(f"dustin_int8_{isa}", cpp_sources=[source], functions=["int8_linear"], extra_cflags=flags,
                         extra_ldflags=["-fopenmp"], build_directory=str(tmp_path))
    for rows, k, n in SHAPES[4:]:
        x, q, scale, b = _case(rows, k, n, True, seed=k + n)
        got = module.int8_linear(x, q, scale, b)
        torch.testing.assert_close(got.double(), _oracle(x, q, scale, b), rtol=1e-6, atol=1e-3)
