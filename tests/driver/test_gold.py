"""Gold test of the driver: greedy speculative output == the target's own greedy ``generate``, token for token."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GenerationConfig

import dustin
from helpers import always_wrong_draft, hf_greedy, left_padded, random_prompts, tiny_model

FAMILIES = ["llama", "qwen2", "mistral"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    target = tiny_model(request.param, seed=0)
    draft = tiny_model(request.param, seed=1, num_hidden_layers=1)
    return request.param, target, draft


def _compare(target, draft, prompts, max_new_tokens, gamma, eos=None, mode="dense"):
    ids, mask = left_padded(prompts)
    expected = hf_greedy(target, ids, mask, max_new_tokens, eos_token_id=eos)
    model = dustin.compile(target, draft, mode=mode, gamma=gamma, backend="eager")
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         eos_token_id=eos, pad_token_id=0)
    assert out.sequences.shape == expected.shape, (out.sequences.shape, expected.shape)
    assert torch.equal(out.sequences, expected), f"first mismatch at {(out.sequences != expected).nonzero()[:3]}"
    return out


@pytest.mark.parametrize("gamma", [1, 3, 4])
def test_batch_one(pair, gamma):
    _, target, draft = pair
    out = _compare(target, draft, random_prompts([9], seed=gamma), max_new_tokens=13, gamma=gamma, eos=[])
    assert out.stats.new_tokens == [13]
    assert out.stats.target_passes == out.stats.row_passes[0] >= 13 / (gamma + 1)


@pytest.mark.parametrize("gamma", [2, 5])
def test_ragged_batch(pair, gamma):
    _, target, draft = pair
    prompts = random_prompts([3, 17, 1, 8], seed=10 + gamma)
    out = _compare(target, draft, prompts, max_new_tokens=11, gamma=gamma, eos=[])
    assert out.stats.new_tokens == [11] * 4


def test_eos_in_the_middle(pair):
    _, target, draft = pair
    prompts = random_prompts([5, 12, 7], seed=3)
    ids, mask = left_padded(prompts)
    free = hf_greedy(target, ids, mask, 16, eos_token_id=[])
    eos = int(free[1, ids.shape[1] + 4])  # the 5th token row 1 generates: it stops there, others maybe elsewhere
    out = _compare(target, draft, prompts, max_new_tokens=16, gamma=3, eos=eos)
    assert out.stats.new_tokens[1] <= 5


def test_draft_always_right(pair):
    _, target, _ = pair
    out = _compare(target, copy.deepcopy(target), random_prompts([6, 10], seed=4), max_new_tokens=14, gamma=4,
                   eos=[])
    # 14 tokens = 5 + 5 + 4: every drafted token accepted, three passes per row (the last cut at max_new_tokens)
    assert out.stats.row_passes == [3, 3]
    assert out.stats.accepted == [4 + 4 + 4] * 2  # the last pass commits 4 drafted tokens, no correction


def test_draft_always_wrong(pair):
    _, target, _ = pair
    out = _compare(target, always_wrong_draft(target), random_prompts([6, 10], seed=5), max_new_tokens=7, gamma=3,
                   eos=[])
    assert out.stats.accepted == [0, 0]
    assert out.stats.row_passes == [7, 7]  # one correction token per pass


def test_generation_config_and_model_eos(pair):
    """A GenerationConfig fills the knobs left at their defaults; eos defaults to the target's."""
    _, target, draft = pair
    prompts = random_prompts([4, 9], seed=6)
    ids, mask = left_padded(prompts)
    expected = hf_greedy(target, ids, mask, 9, eos_token_id=target.generation_config.eos_token_id)
    model = dustin.compile(target, draft, gamma=2, backend="eager")
    out = model.generate(ids, mask, generation_config=GenerationConfig(max_new_tokens=9, do_sample=False),
                         pad_token_id=0)
    assert torch.equal(out.sequences, expected)


def test_generation_config_max_length_counts_the_prompt(pair):
    """transformers' max_length includes the (padded) prompt width, as in ``target.generate``."""
    _, target, draft = pair
    ids, mask = left_padded(random_prompts([4, 9], seed=7))
    config = GenerationConfig(max_length=ids.shape[1] + 6, do_sample=False)
    with torch.no_grad():
        expected = target.generate(ids, attention_mask=mask, generation_config=config, pad_token_id=0,
                                   eos_token_id=None)
    model = dustin.compile(target, draft, gamma=2, backend="eager")
    out = model.generate(ids, mask, generation_config=config, pad_token_id=0, eos_token_id=[])
    assert out.sequences.shape[1] == ids.shape[1] + 6 and torch.equal(out.sequences, expected)
    with pytest.raises(ValueError, match=r"`generation_config.max_length` \(9\) leaves no room after the prompt"):
        model.generate(ids, mask, generation_config=GenerationConfig(max_length=9))


def test_streamer_receives_prompt_then_every_token(pair):
    _, target, draft = pair

    class Collect:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, value):
            self.chunks.append(value.tolist())

        def end(self):
            self.ended = True

    ids = torch.tensor([random_prompts([7], seed=8)[0]])
    streamer = Collect()
    out = dustin.compile(target, draft, gamma=3, backend="eager").generate(
        ids, max_new_tokens=10, eos_token_id=[], streamer=streamer)
    assert streamer.chunks[0] == ids[0].tolist()
    assert sum(streamer.chunks[1:], []) == out.sequences[0, 7:].tolist()
    assert streamer.ended


def test_repeated_prompts_reuse_the_prefilled_cache(pair):
    _, target, draft = pair
    prompts = random_prompts([21, 9], seed=41)
    ids, mask = left_padded(prompts)
    model = dustin.compile(target, draft, gamma=3, backend="eager")
    first = model.generate(ids, mask, max_new_tokens=10, eos_token_id=[])
    again = model.generate(ids, mask, max_new_tokens=10, eos_token_id=[])
    other = model.generate(*left_padded(random_prompts([21, 9], seed=42)), max_new_tokens=4, eos_token_id=[])
    assert first.stats.prefill_passes == 1 and again.stats.prefill_passes == 0 and other.stats.prefill_passes == 1
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(again.sequences, hf_greedy(target, ids, mask, 10, eos_token_id=[]))


def test_draft_with_a_smaller_vocabulary(pair):
    """A target table padded past the draft's (e.g. Qwen2.5-7B vs its 0.5B draft): target ids the draft has no row
    for must not break the draft's graphs, and the output stays the target's."""
    family, target, _ = pair
    draft = tiny_model(family, seed=1, num_hidden_layers=1, vocab_size=64)
    prompts = random_prompts([9, 14], vocab=64, seed=12)
    ids, mask = left_padded(prompts)
    expected = hf_greedy(target, ids, mask, 12, eos_token_id=[])
    assert int(expected[:, ids.shape[1]:].max()) >= 64  # the target does emit ids beyond the draft's table
    out = dustin.compile(target, draft, gamma=3, backend="eager").generate(ids, mask, max_new_tokens=12,
                                                                           eos_token_id=[])
    assert torch.equal(out.sequences, expected)
