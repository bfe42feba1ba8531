"""The multi-row linear pass (passes/linear.py): packed MKL GEMMs equal F.linear, chosen by measurement, never stale."""

from __future__ import annotations

import json

import pytest
import torch

import dustin
from dustin.passes import DustinBackend, LinearChooser, RewritePlan
from dustin.passes import linear as linear_pass
from dustin.passes.linear import TIMED_BYTES, TIMED_FLOPS, packing_available, timed_weights
from helpers import left_padded, random_prompts, tiny_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no MKL packed GEMM")


class Block(torch.nn.Module):
    """Linears of odd widths, with and without bias, one weight used twice, and a bf16 one (not eligible)."""

    def __init__(self, width: int = 37, hidden: int = 53) -> None:
        super().__init__()
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, width, bias=False)
        self.side = torch.nn.Linear(width, 5, bias=False).to(torch.bfloat16)

    def forward(self, x):
        h = self.down(torch.nn.functional.gelu(self.up(x)))
        h = self.down(torch.tanh(self.up(h)))  # the same weights again: one packed copy each
        return h, self.side(x.to(torch.bfloat16))


def _compile(module, chooser, inductor=False):
    torch._dynamo.reset()  # every test compiles Block.forward anew (one code object: dynamo's cache would fill up)
    backend = DustinBackend(RewritePlan(attention="keep"), dict, name="block", inductor=inductor, linear=chooser)
    return torch.compile(module, backend=backend, fullgraph=True, dynamic=False), backend


def _oracle(module, x):
    """float64 forward of the same weights (the bf16 branch stays as the module computes it)."""
    copy = Block(x.shape[-1], module.up.out_features)
    copy.load_state_dict(module.state_dict())
    copy.up.double(), copy.down.double()
    with torch.no_grad():
        return copy.down(torch.tanh(copy.up(copy.down(torch.nn.functional.gelu(copy.up(x.double())))))).float()


@pytest.mark.parametrize("shape", [(1, 5, 37), (3, 7, 37), (2, 1, 37), (13, 37)])
@pytest.mark.parametrize("inductor", [False, True])
def test_packed_linears_equal_a_float64_oracle(shape, inductor):
    torch.manual_seed(sum(shape))
    module, x = Block().eval(), torch.randn(*shape)
    compiled, backend = _compile(module, LinearChooser(force="packed"), inductor)
    with torch.no_grad():
        out, side = compiled(x)
        plain_side = module.side(x.to(torch.bfloat16))
    torch.testing.assert_close(out, _oracle(module, x), rtol=1e-4, atol=1e-4)
    assert torch.equal(side, plain_side)  # bf16: left as traced
    report = backend.reports[-1]
    assert sorted(report.linears.values()) == ["packed"] * 4  # up, down, up, down; the bf16 linear is not eligible
    gm = backend.graph_modules[-1]
    packed_inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n.target.startswith("dustin_packed_")]
    assert len(packed_inputs) == 2  # one per weight, however often it is used


def test_a_transposed_weight_is_not_packed():
    module, x = Block().eval(), torch.randn(1, 5, 37)
    with torch.no_grad():
        module.up.weight = torch.nn.Parameter(module.up.weight.t().contiguous().t())  # same values, column-major
    compiled, backend = _compile(module, LinearChooser(force="packed"))
    with torch.no_grad():
        out, _ = compiled(x)
    torch.testing.assert_close(out, _oracle(module, x), rtol=1e-4, atol=1e-4)
    assert sorted(backend.reports[-1].linears.values()) == ["packed"] * 2  # the two down linears only


def test_plain_choice_leaves_the_graph_alone():
    module, x = Block().eval(), torch.randn(1, 5, 37)
    compiled, backend = _compile(module, LinearChooser(force="plain"))
    with torch.no_grad():
        out, _ = compiled(x)
    torch.testing.assert_close(out, _oracle(module, x), rtol=1e-4, atol=1e-4)
    gm = backend.graph_modules[-1]
    assert not any(n.op == "placeholder" and n.target.startswith("dustin_packed_") for n in gm.graph.nodes)
    assert set(backend.reports[-1].linears.values()) == {"plain"}


def test_a_weight_edited_in_place_is_packed_again():
    """Silent wrong output guard: a packed copy made before an in-place edit must never be used after it."""
    torch.manual_seed(1)
    module, x = Block().eval(), torch.randn(1, 5, 37)
    compiled, _ = _compile(module, LinearChooser(force="packed"))
    with torch.no_grad():
        compiled(x)
        module.up.weight.mul_(-0.5)
        module.down.weight.add_(0.25)
        out, _ = compiled(x)
    torch.testing.assert_close(out, _oracle(module, x), rtol=1e-4, atol=1e-4)


def test_choices_are_measured_once_and_kept_on_disk(tmp_path):
    path = tmp_path / "linear-choices.json"
    weight = torch.randn(96, 80)
    chooser = LinearChooser(path)
    assert chooser.choose([weight], 1, [None]) == "plain"  # one row: not measured
    assert not chooser.needs_measuring([weight], 1, [None])
    assert chooser.needs_measuring([weight], 5, [None])  # what pack_linears counts for its progress bar
    choice = chooser.choose([weight, weight * 2], 5, [None, None])
    assert not chooser.needs_measuring([weight], 5, [None]) and chooser.needs_measuring([weight], 6, [None])
    assert not LinearChooser(force="plain").needs_measuring([weight], 5, [None])
    assert choice in ("plain", "packed")
    saved = json.loads(path.read_text())
    assert len(saved) == 1 and all(len(v) == 2 and min(v) > 0 for v in saved.values())
    again = LinearChooser(path)
    assert again.timings == chooser.timings  # read back, not measured again
    assert again.choose([weight], 5, [None]) == choice
    path.write_text("{not json")
    assert LinearChooser(path).timings == {}  # a damaged file is measured again, never trusted
    with pytest.raises(ValueError, match="force"):
        LinearChooser(force="fast")


@pytest.mark.parametrize("shape", [(1536, 1536), (256, 1536), (8960, 1536), (151936, 1536), (4864, 896), (37, 53)])
@pytest.mark.parametrize("rows", [2, 5, 20, 512, 2048])
def test_a_measurement_streams_past_the_cache_and_stops_once_compute_bound(shape, rows):
    """The real pair's weight shapes (on the meta device: no memory): enough weights to stream TIMED_BYTES from
    memory, unless that many would compute more than TIMED_FLOPS (prefill sizes, where one weight is compute-bound)
    or the graph has fewer; never one more than needed."""
    weight = torch.empty(shape, device="meta")
    size, flops = weight.numel() * 4, 2 * rows * weight.numel()
    for available in (1, 3, 28):
        count = timed_weights(weight, rows, available)
        assert 1 <= count <= available
        assert count == available or count * size >= TIMED_BYTES or count * flops >= TIMED_FLOPS
        assert count == 1 or ((count - 1) * size < TIMED_BYTES and (count - 1) * flops < TIMED_FLOPS)


def test_a_measurement_touches_only_the_weights_it_times(monkeypatch):
    """Weights past ``timed_weights``' count are never run (here: meta tensors, which MKL would refuse)."""
    monkeypatch.setattr(linear_pass, "TIMED_BYTES", 1)
    weight = torch.randn(96, 80)
    timing = LinearChooser()._measure([weight] + [torch.empty(96, 80, device="meta")] * 5, 7, [None] * 6)
    assert timing.plain_ms > 0 and timing.packed_ms > 0


def test_config_field():
    assert dustin.DustinConfig().linear == "auto"
    with pytest.raises(ValueError, match="linear"):
        dustin.DustinConfig(linear="fast")


@pytest.mark.parametrize("mode,fuse", [("dense", False), ("sparse", False), ("exact", False), ("dense", True),
                                       ("exact", True)])
def test_generation_with_packed_linears_equals_plain(mode, fuse):
    """Whole pairs: every step's linears packed (even 1-row ones, forced; ``fuse``: each layer's q/k/v fused in the
    multi-row steps) decode what the plain graphs decode; in the lossless modes that is the target's own greedy
    decoding."""
    target = tiny_model("qwen2", num_hidden_layers=3, tie_word_embeddings=True, seed=3)
    draft = tiny_model("qwen2", num_hidden_layers=1, seed=4)
    ids, mask = left_padded(random_prompts([37, 21], seed=5))
    opts = dict(mode=mode, gamma=3, budget=16, n_sink=2, window=4, backend="eager", exact_every=3)
    plain = dustin.compile(target, draft, linear="plain", **opts)
    packed = plain.with_config(linear="auto")
    packed._linear.force, packed._linear.fuse = "packed", fuse
    expected = plain.generate(ids, mask, max_new_tokens=17).sequences
    got = packed.generate(ids, mask, max_new_tokens=17).sequences
    assert torch.equal(got, expected)
    reports = [g.report.linears for g in packed._graphs.values() if g.report.linears]
    assert reports and all(set(r.values()) <= {"packed", "fused"} and "packed" in r.values() for r in reports)
    fused = [r for r in reports if "fused" in r.values()]
    assert bool(fused) == fuse
    for r in fused:  # every layer's q/k/v (and gate/up: small enough here too)
        assert all(v == "fused" for name, v in r.items() if any(p in name for p in ("q_proj", "k_proj", "v_proj"))), r
    if mode != "sparse":
        assert torch.equal(got, plain.generate(ids, mask, max_new_tokens=17, use_draft=False).sequences)


class Siblings(torch.nn.Module):
    """An attention layer's input projections (three linears of one input, with bias, odd widths), an MLP pair
    (two without bias), a linear of another input, and q's output viewed per head as attention does."""

    def __init__(self, width: int = 37) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(width, n) for n in (24, 8, 8))
        self.gate, self.up = (torch.nn.Linear(width, 19, bias=False) for _ in range(2))
        self.out = torch.nn.Linear(19, width, bias=False)

    def forward(self, x):
        q = self.q(x).view(*x.shape[:-1], 3, 8).transpose(-2, -3)
        attn = torch.softmax(q @ self.k(x).unsqueeze(-3).transpose(-1, -2), dim=-1) @ self.v(x).unsqueeze(-3)
        h = self.out(torch.nn.functional.silu(self.gate(x)) * self.up(x))
        return attn.transpose(-2, -3).flatten(-2), h


def _siblings_oracle(module, x):
    copy = Siblings(x.shape[-1]).double()
    copy.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    with torch.no_grad():
        return tuple(t.float() for t in copy(x.double()))


def _compile_siblings(module, chooser, inductor=False):
    torch._dynamo.reset()
    backend = DustinBackend(RewritePlan(attention="keep"), dict, name="siblings", inductor=inductor, linear=chooser)
    return torch.compile(module, backend=backend, fullgraph=True, dynamic=False), backend


@pytest.mark.parametrize("shape", [(1, 5, 37), (2, 3, 37), (7, 37)])
@pytest.mark.parametrize("inductor", [False, True])
def test_fused_siblings_equal_a_float64_oracle(shape, inductor):
    """q/k/v (with bias) and gate/up (without) each run as one packed GEMM whose output is split; equal to float64
    within fp32 tolerance, one packed concatenation per group (and one bias), the other linear packed alone."""
    torch.manual_seed(sum(shape))
    module, x = Siblings().eval(), torch.randn(*shape)
    compiled, backend = _compile_siblings(module, LinearChooser(force="packed", fuse=True), inductor)
    with torch.no_grad():
        got = compiled(x)
    for a, b in zip(got, _siblings_oracle(module, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert sorted(backend.reports[-1].linears.values()) == ["fused"] * 5 + ["packed"]
    names = sorted(n.target for n in backend.graph_modules[-1].graph.nodes if n.op == "placeholder"
                   and n.target.startswith("dustin_packed_"))
    assert names == ["dustin_packed_0", "dustin_packed_cat0", "dustin_packed_cat0_bias", "dustin_packed_cat1"]


def test_fused_siblings_follow_in_place_edits():
    """Silent wrong output guard: editing one member's weight or bias in place packs the concatenation again."""
    torch.manual_seed(2)
    module, x = Siblings().eval(), torch.randn(1, 5, 37)
    compiled, _ = _compile_siblings(module, LinearChooser(force="packed", fuse=True))
    with torch.no_grad():
        compiled(x)
        module.k.weight.mul_(-2.0)
        module.v.bias.add_(0.5)
        module.up.weight.mul_(0.25)
        got = compiled(x)
    for a, b in zip(got, _siblings_oracle(module, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["fuse off", "too large", "one row", "plain forced"])
def test_siblings_stay_apart(case, monkeypatch):
    """Not fused: when the chooser says no, when the siblings' weights together exceed FUSE_BYTES, in a one-row
    graph, and when every linear is forced plain."""
    fuse, force, shape = case != "fuse off", "plain" if case == "plain forced" else "packed", (1, 5, 37)
    if case == "too large":
        monkeypatch.setattr(linear_pass, "FUSE_BYTES", 37 * 19 * 4 * 2 - 1)  # gate + up: one byte too many
    if case == "one row":
        shape = (1, 1, 37)
    torch.manual_seed(3)
    module, x = Siblings().eval(), torch.randn(*shape)
    compiled, backend = _compile_siblings(module, LinearChooser(force=force, fuse=fuse))
    with torch.no_grad():
        got = compiled(x)
    for a, b in zip(got, _siblings_oracle(module, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert "fused" not in backend.reports[-1].linears.values()


def test_fusion_is_measured_once_and_kept_on_disk(tmp_path):
    """The fusion choice per signature is timed (members apart vs fused), saved, and read back, not measured again."""
    path = tmp_path / "linear-choices.json"
    groups = [[torch.randn(n, 80) for n in (64, 16, 16)] for _ in range(3)]
    biases = [[torch.randn(n) for n in (64, 16, 16)] for _ in range(3)]
    apart = ["packed", "plain", "plain"]
    chooser = LinearChooser(path)
    assert chooser.needs_measuring_fused(groups[0], 5, biases[0], apart)
    assert not chooser.choose_fused(groups, 1, biases, apart)  # one row: never fused, not measured
    fuse = chooser.choose_fused(groups, 5, biases, apart)
    assert not chooser.needs_measuring_fused(groups[0], 5, biases[0], apart)
    assert chooser.needs_measuring_fused(groups[0], 5, biases[0], ["plain"] * 3)  # apart differently: its own key
    again = LinearChooser(path)
    assert not again.needs_measuring_fused(groups[0], 5, biases[0], apart)
    assert again.choose_fused(groups, 5, biases, apart) == fuse
    assert not LinearChooser(path, fuse=False).choose_fused(groups, 5, biases, apart)
    with pytest.raises(ValueError, match="fuse"):
        LinearChooser(fuse="yes")
