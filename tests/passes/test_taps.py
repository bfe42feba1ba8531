"""The taps record exactly what the eager model computes (hooks on an eager transformers run are the oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import dustin
from dustin.profile import DustinProfile, config_hash
from helpers import hf_greedy, random_prompts, tiny_model

GAMMA, LAYER, DRAFT_LAYER = 3, 1, 2
RECORDED: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _recording_sdpa(module, query, key, value, attention_mask, **kwargs):
    RECORDED[module.layer_idx] = (query.detach().clone(), key.detach().clone())
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("dustin_test_record", _recording_sdpa)


def _eager_qk(model, ids: torch.Tensor, layer: int):
    """Post-RoPE queries and keys of ``layer`` for every position of ``ids``, from a plain eager forward."""
    recorder = copy.deepcopy(model)
    recorder.set_attn_implementation("dustin_test_record")
    RECORDED.clear()
    with torch.no_grad():
        recorder(ids)
    return RECORDED[layer]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_query_and_score_taps_match_eager_hooks(family):
    target = tiny_model(family, num_hidden_layers=3)
    draft = copy.deepcopy(target)  # always right: the drafted tokens are the target's greedy continuation
    heads = (0, 3)
    profile = DustinProfile(config_hash(target), config_hash(draft), history_layer=LAYER, history_heads=(1, 2),
                            draft_layers=((DRAFT_LAYER, heads),))
    prompt = torch.tensor([random_prompts([30], seed=4)[0]])
    model = dustin.compile(target, draft, profile=profile, mode="sparse", budget=64, n_sink=2, window=4,
                           gamma=GAMMA, backend="eager")
    # Two iterations, every draft accepted: the first verification is dense (it seeds q*), the second sparse.
    model.generate(prompt, max_new_tokens=2 * (GAMMA + 1), eos_token_id=[])
    greedy = hf_greedy(target, prompt, None, 2 * GAMMA + 1, eos_token_id=[])
    start = 29 + GAMMA + 1  # the second verification's rows sit at positions start .. start + γ

    # Query tap: the sparse verify graph's layer-LAYER queries of its γ+1 rows.
    q_eager, _ = _eager_qk(target, greedy, LAYER)
    recorded = model.query_record("verify", GAMMA + 1)[0]
    torch.testing.assert_close(recorded, q_eager[:, :, start:], atol=1e-5, rtol=1e-5)

    # Score tap: the draft's lookahead = Σ over its γ query rows (positions start .. start+γ-1) and `heads` of the
    # softmax over the history positions < start, recomputed here in float64.
    q_d, k_d = _eager_qk(draft, greedy[:, :-1], DRAFT_LAYER)
    group = q_d.shape[1] // k_d.shape[1]
    expected = torch.zeros(start + GAMMA, dtype=torch.float64)
    for h in heads:
        logits = q_d[0, h, start:].double() @ k_d[0, h // group, :start].double().T / q_d.shape[-1] ** 0.5
        expected[:start] += logits.softmax(-1).sum(0)
    lookahead = model.state.lookahead[0, : start + GAMMA]
    torch.testing.assert_close(lookahead.double(), expected, atol=1e-5, rtol=1e-4)
    assert model.reports["draft_1"].count("score tap") == 1 and model.report.count("query tap") == 1
