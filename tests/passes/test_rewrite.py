"""rewrite_attention / run_passes / verify_graph on captured HF graphs."""

from __future__ import annotations

import pytest
import torch

from dustin import PassError
from dustin.cache import RowCache
from dustin.passes import RewritePlan, find_attention, rewrite_attention, run_passes, verify_graph
from dustin.passes.match import SDPA_TARGETS
from helpers import tiny_model
from test_match import B, S, T, capture, stock_step, verify_inputs


def _targets(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.fixture()
def captured():
    model = tiny_model("qwen2", num_hidden_layers=3)
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)
    cache.write_pos = args[1]
    with torch.no_grad():
        reference = step(*args)  # the stock model, writing the cache as the rewritten graph will
    return capture(step, *args), args, reference


def test_dense_rewrite_matches_the_model_and_is_idempotent(captured):
    gm, args, reference = captured
    report = run_passes(gm, RewritePlan(attention="dense"), {}, "verify")
    assert report.rewritten == 3 and report.count("dense") == 3
    assert not any(n.target in SDPA_TARGETS for n in gm.graph.nodes)
    assert _targets(gm).count("dustin.dense_attention.default") == 3
    repeated = [n for n in gm.graph.nodes if tuple(getattr(n.meta.get("example_value"), "shape", ())) == (B, 4, S, 16)]
    assert repeated == []  # no [B, Hq, S, D] tensor left: repeat_kv's copies went with the SDPA calls
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert not any(p.target.startswith("dustin_") for p in placeholders)  # a dense plan reads no driver state
    # the masks went with the SDPA calls: nothing builds them any more
    assert "dustin.causal_mask.default" not in _targets(gm)
    assert report.table().splitlines()[0] == "verify: 3 attention node(s) rewritten, 0 declined"
    assert report.summary() == "verify: 3 dense"
    # a second run finds nothing left to rewrite
    matches, declined = find_attention(gm)
    assert matches == [] and declined == []
    assert rewrite_attention(gm, matches, RewritePlan(attention="dense"), {}).count == 0


def test_rewritten_graph_computes_the_same_logits(captured):
    """The backend end to end: capture, rewrite, run with the driver's state appended == the stock model."""
    from dustin.passes import DustinBackend

    _, args, reference = captured
    model = tiny_model("qwen2", num_hidden_layers=3)  # same seed: same weights, fresh zero cache
    cache = RowCache.for_model(model, B, S)
    step, _ = verify_inputs(model, cache)
    backend = DustinBackend(RewritePlan(attention="dense"), lambda: {}, name="verify", inductor=False)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(step, backend=backend, fullgraph=True, dynamic=False)(*args)
    assert backend.reports[-1].rewritten == 3
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)


def test_verify_graph_names_the_pass_and_node(captured):
    gm, args, _ = captured
    matches, _ = find_attention(gm)
    before = {m.node.name: (m.node.meta["example_value"].shape, m.node.meta["example_value"].dtype) for m in matches}
    run_passes(gm, RewritePlan(attention="dense"), {}, "verify")
    wrong = {name: (torch.Size([1, 2, 3]), dtype) for name, (shape, dtype) in before.items()}
    with pytest.raises(PassError, match=r"verify: node .* \(replacing attn_output.*\) gives \(2, 4, 5, 16\)"):
        verify_graph(gm, wrong, "verify")
    output = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(output):
        gm.graph.call_function(torch.add, (next(iter(gm.graph.nodes)), 1))
    with pytest.raises(PassError, match=r"verify: stray node add"):
        verify_graph(gm, before, "verify")


def test_plan_keep_leaves_attention_and_reports_it(captured):
    gm, args, _ = captured
    report = run_passes(gm, RewritePlan(attention="keep"), {}, "verify")
    assert report.rewritten == 0 and report.count("kept") == 3
    assert sum(n.target in SDPA_TARGETS for n in gm.graph.nodes) == 3


@pytest.mark.parametrize("budget", [3, 5, 16])
def test_export_level_rewrite_with_state_as_explicit_inputs(budget):
    """The pass on a ``torch.export`` graph (aten level): the state tensors become explicit inputs, and the sparse
    verification equals the stock model run with a mask that hides every unselected committed position."""
    from dustin.kernels import causal_mask

    model = tiny_model("llama")
    cache = RowCache.for_model(model, B, S)
    generator = torch.Generator().manual_seed(budget)
    for layer in cache.layers:  # a committed history worth selecting from
        layer.keys.copy_(torch.randn(layer.keys.shape, generator=generator))
        layer.values.copy_(torch.randn(layer.values.shape, generator=generator))
    step, args = verify_inputs(model, cache)
    ids, pos, _ = args
    seq_lens = pos[:, 0].clone()  # 7 committed positions per row
    indices = torch.full((B, budget), -1, dtype=torch.long)
    for b in range(B):
        chosen = torch.randperm(int(seq_lens[b]), generator=generator)[:budget].sort().values
        indices[b, : len(chosen)] = chosen

    class Verify(torch.nn.Module):
        def forward(self, input_ids, position_ids, seq_lens):
            return step(input_ids, position_ids, seq_lens)

    gm = torch.export.export(Verify(), args, strict=False).module()
    report = run_passes(gm, RewritePlan(attention="sparse"), {"indices": indices}, "verify")
    assert report.rewritten == model.config.num_hidden_layers
    assert not any(n.target in SDPA_TARGETS for n in gm.graph.nodes)
    state_inputs = [n.target for n in gm.graph.nodes if n.op == "placeholder"][len(args):]
    assert state_inputs == ["dustin_indices"]
    state = {"dustin_indices": indices}
    with torch.no_grad():  # the exported module checks its original signature: run the graph directly
        out = torch.fx.Interpreter(gm).run(*args, *(state[name] for name in state_inputs))

    visible = causal_mask(seq_lens, T, S).clone()
    for b in range(B):
        hidden = torch.ones(S, dtype=torch.bool)
        hidden[int(seq_lens[b]):] = False  # the new tokens stay visible (causally)
        hidden[indices[b][indices[b] >= 0]] = False
        visible[b, :, :, hidden] = False
    with torch.no_grad():
        reference = stock_step(model, cache)(ids, pos, visible)
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
