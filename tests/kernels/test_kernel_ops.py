"""Registration of the dustin ops: opcheck, torch.compile(fullgraph=True), and import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_cases import make_attention_case

import dustin.kernels  # noqa: F401  (registers the ops)
from dustin.kernels import score_heads, score_heads_into, select_tokens, sparse_attention

ops = torch.ops.dustin


def _attention_inputs(dtype=torch.float32):
    return make_attention_case(2, 8, 2, 64, 5, [90, 40], 32, dtype, seed=11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_sparse_attention(dtype):
    q, k, v, indices, seq_lens = _attention_inputs(dtype)
    torch.library.opcheck(ops.sparse_attention.default, (q, k, v, indices, seq_lens, 0.125, 0))
    torch.library.opcheck(ops.sparse_attention.default, (q, k, v, indices.int(), seq_lens.int(), 0.2, 3))


def test_opcheck_score_heads():
    q, k, _, _, seq_lens = _attention_inputs()
    torch.library.opcheck(ops.score_heads.default, (q, k, seq_lens, [0, 5], None))
    out = torch.rand(2, k.shape[2])
    torch.library.opcheck(ops.score_heads_into.default, (out, q[:, :, -1:], k, seq_lens, [3], 0.1))


@pytest.mark.parametrize("present", ["none", "draft", "hist", "both"])
def test_opcheck_select_tokens(present):
    seq_lens = torch.tensor([300, 40])
    draft = torch.rand(2, 320) if present in ("draft", "both") else None
    hist = torch.rand(2, 320) if present in ("hist", "both") else None
    torch.library.opcheck(ops.select_tokens.default, (draft, hist, seq_lens, 64, 4, 16, 8))


def test_compile_fullgraph_all_ops():
    """One compiled graph holding every op (a cold Inductor compile costs ~10 s, so one graph for all)."""
    q, k, v, indices, seq_lens = _attention_inputs()

    def step(q, k, v, indices, seq_lens, lookahead):
        out = sparse_attention(q, k, v, indices, seq_lens)
        score_heads_into(lookahead, q[:, :, -3:], k, seq_lens, [0, 3])
        hist = score_heads(q[:, :, -1:], k, seq_lens, [1, 6], 0.2)
        chosen = select_tokens(lookahead, hist, seq_lens, budget=32, n_sink=2, window=4, m=6)
        return out * 2, chosen

    lookahead_eager, lookahead_compiled = torch.zeros(2, k.shape[2]), torch.zeros(2, k.shape[2])
    want = step(q, k, v, indices, seq_lens, lookahead_eager)
    got = torch.compile(step, fullgraph=True)(q, k, v, indices, seq_lens, lookahead_compiled)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(lookahead_compiled, lookahead_eager)  # the mutation survived functionalization


def test_import_does_not_load_triton_or_inductor():
    code = ("import sys, dustin.kernels; bad = [m for m in ('triton', 'torch._inductor') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
