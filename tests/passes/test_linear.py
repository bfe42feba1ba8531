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


@pytest.mark.parametrize("mode", ["dense", "sparse", "exact"])
def test_generation_with_packed_linears_equals_plain(mode):
    """Whole pairs: every step's linears packed (even 1-row ones, forced) decode what the plain graphs decode; in
    the lossless modes that is the target's own greedy decoding."""
    target = tiny_model("qwen2", num_hidden_layers=3, tie_word_embeddings=True, seed=3)
    draft = tiny_model("qwen2", num_hidden_layers=1, seed=4)
    ids, mask = left_padded(random_prompts([37, 21], seed=5))
    opts = dict(mode=mode, gamma=3, budget=16, n_sink=2, window=4, backend="eager", exact_every=3)
    plain = dustin.compile(target, draft, linear="plain", **opts)
    packed = plain.with_config(linear="auto")
    packed._linear.force = "packed"
    expected = plain.generate(ids, mask, max_new_tokens=17).sequences
    got = packed.generate(ids, mask, max_new_tokens=17).sequences
    assert torch.equal(got, expected)
    assert any(g.report.linears and set(g.report.linears.values()) == {"packed"} for g in packed._graphs.values())
    if mode != "sparse":
        assert torch.equal(got, plain.generate(ids, mask, max_new_tokens=17, use_draft=False).sequences)
