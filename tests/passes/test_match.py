"""find_attention: matches every SDPA of HF models at the dynamo and export level; declines the rest with reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dustin.cache import RowCache, causal_mask
from dustin.passes import RewritePlan, find_attention, run_passes
from dustin.passes.backend import copy_graph_module
from helpers import FAMILIES, tiny_model

B, S, T = 2, 32, 5


def capture(fn, *args) -> torch.fx.GraphModule:
    """The dynamo-level graph of ``fn(*args)``, as a dustin backend would receive it."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(copy_graph_module(gm))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)(*args)
    return graphs[0]


def verify_inputs(model, cache: RowCache):
    def step(input_ids, position_ids, attention_mask):
        cache.write_pos = position_ids
        return model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                     past_key_values=cache, use_cache=True).logits

    pos = (torch.arange(T) + 7).expand(B, T).contiguous()
    return step, (torch.randint(3, 128, (B, T)), pos, causal_mask(pos, S))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dynamo_level_every_layer_matches(family):
    model = tiny_model(family, num_hidden_layers=3)
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)
    gm = capture(step, *args)
    matches, declined = find_attention(gm)
    assert declined == []
    assert [m.layer for m in matches] == [0, 1, 2]
    for m in matches:  # repeat_kv looked through: the un-repeated [B, Hkv, S, D] cache
        assert m.level == "dynamo" and m.mask_kind == "bool"
        assert (m.q_heads, m.kv_heads, m.rows, m.cache_len) == (4, 2, T, S)
        assert m.key_cache.meta["example_value"].shape == (B, 2, S, model.config.hidden_size // 4)


def test_export_level_matches():
    model = tiny_model("llama")
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)

    class Verify(torch.nn.Module):
        def forward(self, input_ids, position_ids, attention_mask):
            return step(input_ids, position_ids, attention_mask)

    ep = torch.export.export(Verify(), args, strict=False)
    matches, declined = find_attention(ep.graph_module)
    assert declined == [] and [m.layer for m in matches] == [0, 1]
    assert all(m.level == "export" and m.kv_heads == 2 and m.cache_len == S for m in matches)


def _decline_reason(fn, *args) -> str:
    matches, declined = find_attention(capture(fn, *args))
    assert matches == [] and len(declined) == 1
    return declined[0][1]


def test_declines_float_mask_dropout_and_no_cache():
    q = torch.randn(1, 4, T, 16)
    cache = torch.randn(1, 2, S, 16)

    def float_mask(q, k, bias):
        return F.scaled_dot_product_attention(q, k, k, attn_mask=bias, enable_gqa=True)

    assert "additive/float masks" in _decline_reason(float_mask, q, cache, torch.randn(1, 1, T, S))

    def dropout(q, k):
        return F.scaled_dot_product_attention(q, k, k, dropout_p=0.1, enable_gqa=True)

    assert "dropout_p=0.1" in _decline_reason(dropout, q, cache)

    def per_head_mask(q, k, mask):
        return F.scaled_dot_product_attention(q, k, k, attn_mask=mask, enable_gqa=True)

    assert "expected [B, 1, T, S]" in _decline_reason(per_head_mask, q, cache, torch.ones(1, 4, T, S, dtype=torch.bool))

    def prefill_without_cache(x, w):
        k = (x @ w).view(1, T, 2, 16).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)

    reason = _decline_reason(prefill_without_cache, torch.randn(1, T, 8), torch.randn(8, 32))
    assert "do not come from a KV cache graph input" in reason


def test_declines_fused_kernel_whose_logsumexp_is_used():
    q, k = torch.randn(1, 2, T, 16), torch.randn(1, 2, S, 16)

    def fused(q, k):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k)[:2]
        return out, lse  # a consumer of the attention statistics: cannot be replaced by a sparse output

    assert "logsumexp" in _decline_reason(fused, q, k)


def test_strict_pass_names_the_fix_when_nothing_matches():
    from dustin import PassError

    def no_attention(x):
        return x * 2

    gm = capture(no_attention, torch.randn(3))
    with pytest.raises(PassError, match=r"attn_implementation='sdpa'"):
        run_passes(gm, RewritePlan(attention="dense"), {"seq_lens": torch.zeros(1, dtype=torch.long)}, "verify")
