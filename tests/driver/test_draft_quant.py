"""draft_quant="int8" (draftquant.py): the draft's decode steps on int8 weights; the output stays the target's."""

from __future__ import annotations

import copy

import pytest
import torch

import dustin
from dustin.draftquant import AUTO_MIN_BYTES, Int8Linear, int8_draft, kernel_mismatches
from dustin.kernels.linear import int8 as int8_kernel
from helpers import assert_decodes_like, left_padded, random_prompts, tiny_model, twin_pair

OPTS = dict(backend="eager", budget=16, n_sink=2, window=4, exact_every=3)


def _int8_ops(gm) -> int:
    """Int8 products in a graph: dustin's kernel (float32 drafts, where built) or torch's."""
    return sum(n.op == "call_function" and ("_weight_int8pack_mm" in str(n.target) or "int8_linear" in str(n.target))
               for n in gm.graph.nodes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_f,out_f,lead,bias", [(16, 1, (1,), False), (48, 13, (3,), True),
                                                  (144, 77, (2, 5), True), (64, 300, (1, 1), False)])
def test_int8_linear_is_within_its_rounding_of_a_float64_product(dtype, in_f, out_f, lead, bias):
    torch.manual_seed(in_f * out_f)
    linear = torch.nn.Linear(in_f, out_f, bias=bias).to(dtype)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(out_f, 1).to(dtype) * 4)  # rows of different scales: one scale per row
    x = torch.randn(*lead, in_f).to(dtype)
    q = Int8Linear(linear)
    assert q.qweight.dtype == torch.int8 and int(q.qweight.abs().max()) <= 127 and q.scale.shape == (out_f,)
    assert q.kernel == (dtype == torch.float32)  # dustin's kernel for float32 (built here), torch's for bf16
    got = q(x)
    assert got.dtype == dtype and got.shape == (*lead, out_f)
    w, xd = linear.weight.double(), x.double()
    ref = xd @ w.T + (linear.bias.double() if bias else 0)
    # Rounding the weight to q * scale moves each product by at most |x| * scale (half a step, plus the bf16 scale's
    # own rounding); x is rounded to bf16 (2^-8 relative) and so is the kernel's output.
    step = q.scale.double() * xd.abs().sum(-1, keepdim=True)
    x_round = 2.0 ** -8 * (xd.abs() @ w.abs().T)
    bound = step + x_round + 2.0 ** -7 * ref.abs() + (2.0 ** -7 if dtype == torch.bfloat16 else 1e-6)
    assert bool(((got.double() - ref).abs() <= bound).all()), float(((got.double() - ref).abs() - bound).max())


def test_the_view_converts_plain_linears_and_shares_the_rest():
    draft = tiny_model("qwen2", tie_word_embeddings=True, seed=3)
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    view = int8_draft(draft)
    assert isinstance(view.lm_head, Int8Linear) and isinstance(view.model.layers[1].mlp.down_proj, Int8Linear)
    assert view.model.embed_tokens is draft.model.embed_tokens  # the tied embedding is still the float table
    assert view.model.norm is draft.model.norm
    assert view.model.layers[0].input_layernorm is draft.model.layers[0].input_layernorm
    assert type(draft.lm_head) is torch.nn.Linear  # the user's model is untouched
    assert all(torch.equal(v, before[k]) for k, v in draft.state_dict().items())
    assert view.model.layers[0].self_attn.q_proj.bias is draft.model.layers[0].self_attn.q_proj.bias  # shared

    class Scaled(torch.nn.Linear):  # a subclass may compute something else: left alone
        def forward(self, x):
            return 2 * super().forward(x)

    odd = torch.nn.Sequential(torch.nn.Linear(24, 16), Scaled(16, 16), torch.nn.Linear(16, 4))
    converted = int8_draft(odd)
    assert type(converted[0]) is torch.nn.Linear  # in_features 24: the CPU kernel needs a multiple of 16
    assert type(converted[1]) is Scaled and isinstance(converted[2], Int8Linear)


@pytest.mark.parametrize("mode", ["dense", "exact"])
def test_an_int8_draft_is_lossless(mode):
    target, draft, profile = twin_pair("qwen2", seed=51)
    ids, mask = left_padded(random_prompts([29, 17], seed=53))
    full = dustin.compile(target, draft, profile=profile, mode=mode, gamma=3, **OPTS)
    expected = full.generate(ids, mask, max_new_tokens=30, use_draft=False).sequences
    float_accepted = sum(full.generate(ids, mask, max_new_tokens=30).stats.accepted)
    # A model of its own (its own prefill), not a with_config sibling of `full`.
    small = dustin.compile(target, draft, profile=profile, mode=mode, gamma=3, draft_quant="int8", **OPTS)
    out = assert_decodes_like(small, ids, mask, expected, max_new_tokens=30)
    # The draft is the target itself: in float it is always right; int8 rounding may flip near-ties of this random
    # model, but a broken product (wrong scale, transposed weight) would be accepted about 1 time in 128.
    assert sum(out.stats.accepted) >= 0.5 * float_accepted > 0
    assert _int8_ops(small.rewritten_graph("draft_1")) == 15  # 2 layers x 7 linears + the LM head
    assert _int8_ops(small.rewritten_graph("prefill_draft")) == 0  # the prefill keeps the float draft
    assert type(small.draft.lm_head) is torch.nn.Linear


def test_int8_with_draft_vocab_is_lossless():
    target, draft, profile = twin_pair("qwen2", seed=51)
    ids, mask = left_padded(random_prompts([23, 30], seed=54))
    model = dustin.compile(target, draft, profile=profile, mode="dense", gamma=2, **OPTS)
    expected = model.generate(ids, mask, max_new_tokens=24, use_draft=False).sequences
    both = model.with_config(draft_vocab=24, draft_quant="int8")
    assert torch.equal(both.generate(ids, mask, max_new_tokens=24).sequences, expected)
    head = both.rewritten_graph("draft_1")
    assert _int8_ops(head) == 15 and both._draft_decode.lm_head.out_features == 24
    assert model.with_config(draft_quant="int8")._draft_decode.lm_head.out_features == 128


def test_siblings_built_under_another_kernel_switch_get_their_own_view(monkeypatch):
    """The int8 view is shared by with_config siblings per kernel: one made with DUSTIN_CPU_KERNELS=reference runs
    torch's kernel (benchmarks/e2e.py's @ref arms), the others keep dustin's; both stay lossless."""
    target, draft, profile = twin_pair("qwen2", seed=51)
    ids, mask = left_padded(random_prompts([19, 26], seed=55))
    model = dustin.compile(target, draft, profile=profile, mode="dense", gamma=2, draft_quant="int8", **OPTS)
    expected = model.generate(ids, mask, max_new_tokens=16, use_draft=False).sequences
    assert model._draft_decode.lm_head.kernel
    monkeypatch.setenv("DUSTIN_CPU_KERNELS", "reference")
    on_torch = model.with_config(gamma=1)
    monkeypatch.delenv("DUSTIN_CPU_KERNELS")
    again = model.with_config(gamma=1)
    assert not on_torch._draft_decode.lm_head.kernel and again._draft_decode is model._draft_decode
    for sibling in (on_torch, again):
        assert torch.equal(sibling.generate(ids, mask, max_new_tokens=16).sequences, expected)


def test_draft_quant_errors():
    target, draft, profile = twin_pair("qwen2", seed=51)
    with pytest.raises(ValueError, match="draft_quant"):
        dustin.DustinConfig(draft_quant="int4")
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        dustin.compile(target.to(torch.float16), copy.deepcopy(draft).to(torch.float16), draft_quant="int8", **OPTS)
    target.to(torch.float32)
    with pytest.raises(ValueError, match="separate draft model"):
        dustin.compile(target, draft_quant="int8", **OPTS)  # self-speculation
    # Hidden 36 and MLP 44: no linear has in_features a multiple of 16, so nothing could be converted.
    odd = tiny_model("qwen2", seed=52, hidden_size=36, intermediate_size=44, num_attention_heads=4,
                     num_key_value_heads=2)
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        dustin.compile(target, odd, draft_quant="int8", **OPTS)
    model = dustin.compile(target, draft, profile=profile, draft_quant="int8", **OPTS)
    with pytest.raises(ValueError, match="draft_quant"):
        dustin.export(model, torch.tensor([[3, 4, 5]]))


# Wide enough that some float32 weights reach AUTO_MIN_BYTES: q/o 512x512 (1 MiB), gate/up/down 768x512, the LM head
# 640x512; the K/V projections (128x512, 256 KiB) and every tiny-model weight stay below it.
WIDE = dict(hidden_size=512, intermediate_size=768, num_attention_heads=8, num_key_value_heads=2, vocab_size=640)


def test_auto_converts_the_large_float32_linears_of_a_separate_cpu_draft():
    assert 512 * 512 * 4 == AUTO_MIN_BYTES
    target = tiny_model("qwen2", num_hidden_layers=2, seed=61, **WIDE)
    draft = copy.deepcopy(target)
    ids, mask = left_padded(random_prompts([21, 14], seed=62, vocab=640))
    model = dustin.compile(target, draft, mode="dense", gamma=2, **OPTS)  # draft_quant="auto", the default
    assert model.config.draft_quant == "auto" and model.draft_quant == "int8"
    view = model._draft_decode
    attn, mlp = view.model.layers[0].self_attn, view.model.layers[1].mlp
    assert all(isinstance(m, Int8Linear) for m in (attn.q_proj, attn.o_proj, mlp.gate_proj, mlp.down_proj, view.lm_head))
    assert type(attn.k_proj) is torch.nn.Linear and type(attn.v_proj) is torch.nn.Linear  # 256 KiB: left float
    expected = model.generate(ids, mask, max_new_tokens=20, use_draft=False).sequences
    assert_decodes_like(model, ids, mask, expected, max_new_tokens=20)
    assert _int8_ops(model.rewritten_graph("draft_1")) == 11  # 2 layers x (q, o, gate, up, down) + the LM head
    # Where it is not measured, "auto" leaves the draft as given; None always does.
    assert model.with_config(draft_quant=None).draft_quant is None
    assert dustin.compile(target, **OPTS).draft_quant is None  # self-speculation
    tiny_target, tiny_draft, _ = twin_pair("qwen2", seed=51)
    assert dustin.compile(tiny_target, tiny_draft, **OPTS).draft_quant is None  # every weight < 1 MiB
    half = dustin.compile(copy.deepcopy(target).to(torch.bfloat16), copy.deepcopy(draft).to(torch.bfloat16), **OPTS)
    assert half.draft_quant is None and half._draft_decode is half.draft
    assert dustin.compile(target, draft, draft_quant="int8", **OPTS)._draft_decode.model.layers[0].self_attn.k_proj \
        .__class__ is Int8Linear  # "int8" converts every convertible linear


@pytest.mark.parametrize("kernels", ["auto", "reference"])  # dustin's C++ kernel, or torch's without it
def test_a_kernel_that_disagrees_with_its_float_reference_is_caught(kernels, monkeypatch):
    monkeypatch.setenv("DUSTIN_CPU_KERNELS", kernels)
    target = tiny_model("qwen2", num_hidden_layers=1, seed=63, **WIDE)
    draft = copy.deepcopy(target)
    view = int8_draft(draft)
    assert view.lm_head.kernel == (kernels == "auto")
    assert kernel_mismatches(view) == []
    owner, name = (int8_kernel, "int8_linear") if kernels == "auto" else (torch, "_weight_int8pack_mm")
    kernel = getattr(owner, name)

    def off_for_two_rows(x, *args):  # right for one row, 2 % off for more: what a shape bug looks like
        out = kernel(x, *args)
        return out if x.shape[0] == 1 else out * 1.02

    monkeypatch.setattr(owner, name, off_for_two_rows)
    assert kernel_mismatches(int8_draft(draft)) == ["512x512", "128x512", "768x512", "512x768", "640x512"]
    which = "dustin's" if kernels == "auto" else "torch's"
    with pytest.raises(ValueError, match=f"{which} int8 CPU kernel.*disagrees with a float reference.*drop draft_quant"):
        dustin.compile(target, draft, draft_quant="int8", **OPTS)
    with pytest.warns(UserWarning, match="keeps the float draft"):
        model = dustin.compile(target, draft, **OPTS)
    assert model.draft_quant is None and model._draft_decode is draft


def test_the_draft_quant_flag_takes_none(capsys):
    import argparse

    from dustin.flags import add_config_arguments, config_overrides

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ("draft_quant",))
    assert config_overrides(parser.parse_args(["--draft-quant", "none"])) == {"draft_quant": None}
    assert config_overrides(parser.parse_args(["--draft-quant", "int8"])) == {"draft_quant": "int8"}
    assert config_overrides(parser.parse_args([])) == {}  # the default, "auto", comes from DustinConfig
    assert dustin.DustinConfig().draft_quant == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--draft-quant", "int4"])
    assert "invalid choice: 'int4' (choose from auto, int8, none)" in capsys.readouterr().err
