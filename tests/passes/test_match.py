"""find_attention: matches every SDPA of HF models at the dynamo and export level; declines the rest with reasons."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dustin.cache import RowCache
from dustin.masks import mask_spec
from dustin.passes import RewritePlan, find_attention, run_passes
from dustin.passes.backend import copy_graph_module
from dustin.passes.match import op_name
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


def stock_step(model, cache: RowCache):
    """The model's forward over the cache with an explicit ``attention_mask`` (any mask a caller may build)."""
    def step(input_ids, position_ids, attention_mask):
        cache.write_pos = position_ids
        return model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                     past_key_values=cache, use_cache=True).logits

    return step


def verify_inputs(model, cache: RowCache):
    """The driver's form of a verification step: the mask is built in the graph by dustin's causal_mask op (with
    the model's sliding windows), from ``seq_lens``."""
    masks, stock = mask_spec(model), stock_step(model, cache)

    def step(input_ids, position_ids, seq_lens):
        return stock(input_ids, position_ids, masks.build(seq_lens, input_ids.shape[1], cache.capacity))

    pos = (torch.arange(T) + 7).expand(B, T).contiguous()
    return step, (torch.randint(3, 128, (B, T)), pos, pos[:, 0].clone())


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
        assert m.level == "dynamo" and op_name(m.mask.target) == "dustin::causal_mask" and m.window == 0
        assert (m.q_heads, m.kv_heads, m.rows, m.cache_len) == (4, 2, T, S)
        assert m.key_cache.meta["example_value"].shape == (B, 2, S, model.config.hidden_size // 4)


def test_export_level_matches():
    model = tiny_model("llama")
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)

    class Verify(torch.nn.Module):
        def forward(self, input_ids, position_ids, seq_lens):
            return step(input_ids, position_ids, seq_lens)

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

    reason = _decline_reason(per_head_mask, q, cache, torch.ones(1, 4, T, S, dtype=torch.bool))
    assert "not dustin's causal_mask op" in reason

    def prefill_without_cache(x, w):
        k = (x @ w).view(1, T, 2, 16).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)

    reason = _decline_reason(prefill_without_cache, torch.randn(1, T, 8), torch.randn(8, 32))
    assert "do not come from a KV cache graph input" in reason


def _model_declines(model, mask_of) -> list[str]:
    """Reasons find_attention gives for every attention of ``model`` when the step's mask is ``mask_of(pos)``."""
    stock = stock_step(model, RowCache.for_model(model, B, S))

    def step(input_ids, position_ids):
        return stock(input_ids, position_ids, mask_of(position_ids))

    pos = (torch.arange(T) + 7).expand(B, T).contiguous()
    matches, declined = find_attention(capture(step, torch.randint(3, 128, (B, T)), pos))
    assert matches == [] and len(declined) == model.config.num_hidden_layers
    return [why for _, why in declined]


@pytest.mark.parametrize("kind", ["padding", "window", "random"])
def test_masks_that_are_not_the_drivers_are_declined_never_rewritten(kind):
    """A padding mask, a hand-made sliding window and a random mask: none is provably dustin's causal mask, so the
    pass declines each (naming why) instead of rewriting it into causal-from-seq_lens attention."""
    model = tiny_model("llama")
    j = torch.arange(S)
    generator = torch.Generator().manual_seed(0)
    random = torch.rand(B, 1, T, S, generator=generator) < 0.5
    padding = torch.ones(B, 1, T, S, dtype=torch.bool)
    padding[0, ..., :3] = False  # row 0 is left-padded by 3 positions

    def mask_of(pos):
        causal = (j <= pos[:, :, None])[:, None]
        if kind == "padding":
            return causal & padding
        if kind == "window":
            return causal & (j > pos[:, :, None] - 4)[:, None]
        return random

    for reason in _model_declines(model, mask_of):
        assert "not dustin's causal_mask op" in reason and "cannot be proven equivalent" in reason


def test_strict_pass_refuses_a_foreign_mask_with_the_report():
    from dustin import PassError

    model = tiny_model("llama")
    stock = stock_step(model, RowCache.for_model(model, B, S))
    j = torch.arange(S)

    def step(input_ids, position_ids):
        return stock(input_ids, position_ids, (j <= position_ids[:, :, None])[:, None])

    pos = (torch.arange(T) + 7).expand(B, T).contiguous()
    gm = capture(step, torch.randint(3, 128, (B, T)), pos)
    with pytest.raises(PassError, match=r"(?s)some attention calls cannot be rewritten.*declined.*causal_mask"):
        run_passes(gm, RewritePlan(attention="dense"), {}, "verify")


def test_windowed_causal_mask_is_matched_with_its_window():
    model = tiny_model("mistral", sliding_window=3)
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)
    matches, declined = find_attention(capture(step, *args))
    assert declined == [] and [m.window for m in matches] == [3, 3]


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
