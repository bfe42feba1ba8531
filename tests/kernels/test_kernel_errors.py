"""Bad inputs raise clear errors in eager mode, naming the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import make_attention_case

from dustin.kernels import score_heads, score_heads_into, select_tokens, sparse_attention


@pytest.fixture()
def case():
    return make_attention_case(2, 8, 2, 64, 5, [90, 40], 16, seed=0)


def test_sparse_attention_ranks_and_heads(case):
    q, k, v, indices, seq_lens = case
    with pytest.raises(ValueError, match=r"sparse_attention: `q` must have 4 dims \[B, Hq, T, D\], got a 3-D"):
        sparse_attention(q[0], k, v, indices, seq_lens)
    with pytest.raises(ValueError, match=r"`indices` must have 2 dims \[B, K\]"):
        sparse_attention(q, k, v, indices[0], seq_lens)
    with pytest.raises(ValueError, match=r"`q` has 6 heads, not a multiple of the 4 KV heads"):
        sparse_attention(q[:, :6], torch.cat([k, k], 1), torch.cat([v, v], 1), indices, seq_lens)
    with pytest.raises(ValueError, match=r"`k_cache` .* and `v_cache` .* must have one shape"):
        sparse_attention(q, k, v[:, :, :-1], indices, seq_lens)
    with pytest.raises(TypeError, match=r"`q` must be a torch.Tensor .* got list"):
        sparse_attention([1.0], k, v, indices, seq_lens)


def test_sparse_attention_indices(case):
    q, k, v, indices, seq_lens = case
    bad = indices.clone()
    bad[1, 3] = 40  # == seq_lens[1]: that slot is the first new row, added by the op itself
    with pytest.raises(ValueError, match=r"`indices\[1, 3\]` = 40 is out of range: .* \[0, 40\)"):
        sparse_attention(q, k, v, bad, seq_lens)
    bad[1, 3] = -2
    with pytest.raises(ValueError, match=r"`indices\[1, 3\]` = -2 is out of range"):
        sparse_attention(q, k, v, bad, seq_lens)
    twice = torch.tensor([[5, 7, 5, -1], [1, -1, -1, 2]])
    with pytest.raises(ValueError, match=r"`indices\[0\]` lists position 5 more than once"):
        sparse_attention(q, k, v, twice, seq_lens)
    with pytest.raises(TypeError, match=r"`indices` must have dtype in \(int32, int64\), got torch.float32"):
        sparse_attention(q, k, v, indices.float(), seq_lens)
    with pytest.raises(ValueError, match=r"`indices` has batch 1 but `q` has batch 2"):
        sparse_attention(q, k, v, indices[:1], seq_lens)


def test_sparse_attention_seq_lens_dtypes_devices(case):
    q, k, v, indices, seq_lens = case
    with pytest.raises(ValueError, match=r"`seq_lens` \+ 5 new rows must lie in \[0, 98\]"):
        sparse_attention(q, k, v, indices, torch.tensor([94, 40]))
    with pytest.raises(TypeError, match=r"`seq_lens` must have dtype in \(int32, int64\), got torch.float32"):
        sparse_attention(q, k, v, indices, seq_lens.float())
    with pytest.raises(TypeError, match=r"`q` \(torch.bfloat16\), `k_cache` \(torch.float32\) .* must share one dtype"):
        sparse_attention(q.bfloat16(), k, v, indices, seq_lens)
    with pytest.raises(ValueError, match=r"all tensors must be on one device, got `q` on cpu, `k_cache` on meta"):
        sparse_attention(q, k.to("meta"), v, indices, seq_lens)
    with pytest.raises(ValueError, match=r"`scale` must be a positive float or None"):
        sparse_attention(q, k, v, indices, seq_lens, scale=-1.0)


def test_score_heads_errors(case):
    q, k, _, _, seq_lens = case
    with pytest.raises(ValueError, match=r"score_heads: `heads` \[8\] are not query heads of `q`, which has 8"):
        score_heads(q, k, seq_lens, [0, 8])
    with pytest.raises(TypeError, match=r"score_heads: `heads` must be a list of query-head ids \(ints\)"):
        score_heads(q, k, seq_lens, [0.5])
    with pytest.raises(TypeError, match=r"score_heads: `q` \(torch.float16\) and `k_cache` \(torch.float32\)"):
        score_heads(q.half(), k, seq_lens, [0])
    with pytest.raises(ValueError, match=r"score_heads: `q` has head dim 32 but `k_cache` has 64"):
        score_heads(q[..., :32], k, seq_lens, [0])
    with pytest.raises(ValueError, match=r"score_heads: `k_cache` must have 4 dims"):
        score_heads(q, k[0], seq_lens, [0])
    with pytest.raises(ValueError, match=r"score_heads_into: `out` must have shape \[B, S_max\] = \(2, 98\)"):
        score_heads_into(torch.zeros(2, 10), q, k, seq_lens, [0])
    with pytest.raises(TypeError, match=r"score_heads_into: `out` must have dtype in \(float32\), got torch.float16"):
        score_heads_into(torch.zeros(2, 98, dtype=torch.float16), q, k, seq_lens, [0])


def test_select_tokens_errors():
    lens = torch.tensor([100, 50])
    scores = torch.rand(2, 100)
    with pytest.raises(TypeError, match=r"select_tokens: `budget` must be an int, got float 64.0"):
        select_tokens(None, scores, lens, budget=64.0, n_sink=4, window=8, m=0)
    with pytest.raises(ValueError, match=r"select_tokens: `window` must be >= 0, got -1"):
        select_tokens(None, scores, lens, budget=64, n_sink=4, window=-1, m=0)
    with pytest.raises(ValueError, match=r"`seq_lens` must lie in \[0, S_max = 80\] \(the score width\)"):
        select_tokens(scores[:, :80], None, lens, budget=64, n_sink=4, window=8, m=0)
    with pytest.raises(ValueError, match=r"`draft_scores` \(2, 100\) and `hist_scores` \(2, 120\) must have one shape"):
        select_tokens(scores, torch.rand(2, 120), lens, budget=64, n_sink=4, window=8, m=0)
    with pytest.raises(ValueError, match=r"`hist_scores` must have 2 dims \[B, S_max\]"):
        select_tokens(None, scores[0], lens, budget=64, n_sink=4, window=8, m=0)
    with pytest.raises(TypeError, match=r"`seq_lens` must have dtype in \(int32, int64\)"):
        select_tokens(None, scores, lens.float(), budget=64, n_sink=4, window=8, m=0)
    with pytest.raises(ValueError, match=r"`hist_scores` has batch 1 but `seq_lens` has 2 rows"):
        select_tokens(None, scores[:1], lens, budget=64, n_sink=4, window=8, m=0)
