"""The product path end to end: Inductor-compiled rewritten graphs (one test: cold compiles cost ~20 s each)."""

from __future__ import annotations

import torch

import dustin
from helpers import hf_greedy, left_padded, random_prompts, tiny_model


def test_inductor_exact_mode_equals_target_greedy():
    target, draft = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, num_hidden_layers=1)
    ids, mask = left_padded(random_prompts([37, 22], seed=31))
    reference = hf_greedy(target, ids, mask, 12, eos_token_id=[])
    model = dustin.compile(target, draft, mode="exact", budget=16, n_sink=2, window=4, gamma=3, exact_every=5,
                           backend="inductor")
    out = model.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(out.sequences, reference)
    assert model.report.count("sparse") == 2 and out.stats.sparse_passes > 0
