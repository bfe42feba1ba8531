"""Per model family: the sparse rewrite covers every layer, and with a budget covering the context it is exact."""

from __future__ import annotations

import pytest
import torch

import dustin
from dustin.cache import RowCache
from dustin.passes import DustinBackend, RewritePlan
from dustin.passes.match import SDPA_TARGETS
from helpers import FAMILIES, hf_greedy, left_padded, random_prompts, tiny_model
from test_match import B, S, T, verify_inputs

# fp32 logits of the rewritten graph vs the stock model (different summation order only)
TOLERANCE = {torch.float32: dict(atol=3e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_sparse_verify_logits_equal_dense_when_the_budget_covers_the_context(family, dtype):
    model = tiny_model(family, num_hidden_layers=3, dtype=dtype)
    cache = RowCache.for_model(model, B, S)
    step, args = verify_inputs(model, cache)
    seq_lens = args[1][:, 0].clone()
    prefix = torch.randn(B, 2, S, cache.layers[0].keys.shape[-1], dtype=dtype)  # arbitrary committed K/V
    for layer in cache.layers:
        layer.keys.copy_(prefix)
        layer.values.copy_(prefix.flip(2))
    with torch.no_grad():
        reference = step(*args)
    for layer in cache.layers:  # same cache again for the rewritten run
        layer.keys.copy_(prefix)
        layer.values.copy_(prefix.flip(2))
    every = torch.arange(S)[None].expand(B, S)
    indices = torch.where(every < seq_lens[:, None], every, -1)  # all committed positions, -1 padded
    captured = []

    class Keep(DustinBackend):
        def __call__(self, gm, example_inputs):
            run = super().__call__(gm, example_inputs)
            captured.append(self.reports[-1])
            return run

    backend = Keep(RewritePlan(attention="sparse"), lambda: {"indices": indices},
                   name="verify", inductor=False)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(step, backend=backend, fullgraph=True, dynamic=False)(*args)
    report = captured[0]
    assert report.rewritten == 3 and report.count("sparse") == 3
    torch.testing.assert_close(out, reference, **TOLERANCE[dtype])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sparse_generation_equals_target_greedy(family):
    target, draft = tiny_model(family, seed=0), tiny_model(family, seed=1, num_hidden_layers=1)
    ids, mask = left_padded(random_prompts([19, 33, 6], seed=51))
    reference = hf_greedy(target, ids, mask, 10, eos_token_id=[])
    model = dustin.compile(target, draft, mode="sparse", budget=64, n_sink=2, window=8, gamma=3, backend="eager")
    out = model.generate(ids, mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    layers = target.config.num_hidden_layers
    assert model.report.rewritten == layers == model.report.count("sparse")
    targets = [n.target for n in model.rewritten_graph("verify").graph.nodes if n.op == "call_function"]
    assert not any(t in SDPA_TARGETS for t in targets)
    assert targets.count(torch.ops.dustin.sparse_attention.default) == layers
    assert out.stats.sparse_passes > 0
