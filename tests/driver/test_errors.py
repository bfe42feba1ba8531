"""Bad input gets a clear error naming the argument and the fix, raised before any work is done."""

from __future__ import annotations

import pytest
import torch

import dustin
from helpers import tiny_model, word_tokenizer


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def draft():
    return tiny_model("llama", seed=1, num_hidden_layers=1)


@pytest.fixture(scope="module")
def model(target, draft):
    return dustin.compile(target, draft, backend="eager", max_length=64)


def test_unknown_override_lists_valid_fields(target, draft):
    with pytest.raises(TypeError, match=r"unknown DustinConfig field\(s\) \['gama'\]; valid fields are: mode, gamma"):
        dustin.compile(target, draft, gama=3)


def test_gamma_below_one(target, draft):
    with pytest.raises(ValueError, match=r"DustinConfig.gamma must be an integer >= 1 or 'auto', got 0"):
        dustin.compile(target, draft, gamma=0)


def test_unknown_mode(target, draft):
    with pytest.raises(ValueError, match=r"DustinConfig.mode must be one of"):
        dustin.compile(target, draft, mode="fast")


def test_draft_vocab_larger_than_target(target):
    big = tiny_model("llama", seed=1, vocab_size=256)
    with pytest.raises(dustin.ModelPairError, match=r"draft vocabulary \(256\) is larger than the target's \(128\)"):
        dustin.compile(target, big)


def test_special_tokens_disagree(target):
    other = tiny_model("llama", seed=1, eos_token_id=7)
    with pytest.raises(dustin.ModelPairError, match=r"disagree on special tokens .*eos_token_id.*do not share a tokenizer"):
        dustin.compile(target, other)


def test_tokenizer_mismatch(target, draft):
    with pytest.raises(dustin.ModelPairError, match=r"different vocabularies"):
        dustin.compile(target, draft, tokenizer=word_tokenizer("abc"), draft_tokenizer=word_tokenizer("xyz"))


def test_not_a_causal_lm(draft):
    from transformers import LlamaModel

    base = LlamaModel(tiny_model("llama").config)
    with pytest.raises(dustin.ModelPairError, match=r"`target` must be a Hugging Face causal LM .*got LlamaModel"):
        dustin.compile(base, draft)
    with pytest.raises(dustin.ModelPairError, match=r"`draft` must be a Hugging Face causal LM .*got str"):
        dustin.compile(draft, "not a model")


def test_attention_implementation(target):
    eager = tiny_model("llama", seed=1, attn_implementation="eager")
    with pytest.raises(dustin.ModelPairError, match=r"`draft` uses attn_implementation='eager'.*attn_implementation='sdpa'"):
        dustin.compile(target, eager)


def test_dtype_and_device_mismatch(target):
    half = tiny_model("llama", seed=1, dtype=torch.bfloat16)
    with pytest.raises(dustin.ModelPairError, match=r"target dtype torch.float32 differs from draft dtype torch.bfloat16"):
        dustin.compile(target, half)
    meta = tiny_model("llama", seed=1).to("meta")
    with pytest.raises(dustin.ModelPairError, match=r"target is on cpu but draft on meta"):
        dustin.compile(target, meta)


def test_prompt_longer_than_max_length(model):
    with pytest.raises(ValueError, match=r"more than DustinConfig.max_length=64; raise max_length"):
        model.generate(torch.ones(1, 60, dtype=torch.long), max_new_tokens=8)


@pytest.mark.parametrize("ids, match", [
    (torch.ones(1, 0, dtype=torch.long), r"`input_ids` is empty"),
    (torch.ones(2, 3), r"`input_ids` must be an integer torch.Tensor"),
    ([[1, 2, 3]], r"`input_ids` must be an integer torch.Tensor"),
])
def test_bad_input_ids(model, ids, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(ids, max_new_tokens=4)


@pytest.mark.parametrize("bad", [128, -1])
def test_token_ids_outside_the_vocabulary(model, bad):
    ids = torch.tensor([[5, 9, 11], [4, bad, 6]])
    with pytest.raises(ValueError, match=rf"`input_ids` row 1 holds token id {bad} outside the target's vocabulary "
                                         r"\[0, 128\): encode the prompt with the pair's tokenizer"):
        model.generate(ids, max_new_tokens=4)


def test_empty_prompt_in_a_batch(model):
    ids = torch.ones(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"`attention_mask` row 1 is all zeros: prompt 1 is empty"):
        model.generate(ids, mask, max_new_tokens=4)


def test_right_padding_is_refused(model):
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"expects left padding"):
        model.generate(ids, torch.tensor([[1, 1, 0, 0]]), max_new_tokens=4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), r"`max_new_tokens` must be an integer >= 1, got 0"),
    (dict(), r"`max_new_tokens` must be an integer >= 1, got None"),
    (dict(max_new_tokens=4, do_sample=True, temperature=0.0), r"`temperature` must be > 0"),
    (dict(max_new_tokens=4, do_sample=True, top_p=1.5), r"`top_p` must be in \(0, 1\]"),
    (dict(max_new_tokens=4, do_sample=True, top_k=-1), r"`top_k` must be an integer >= 0"),
    (dict(max_new_tokens=4, eos_token_id=500), r"`eos_token_id` \[500\] outside the vocabulary"),
    (dict(max_new_tokens=4, generator=123), r"`generator` must be a torch.Generator"),
])
def test_bad_generate_arguments(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(torch.ones(1, 4, dtype=torch.long), **kwargs)


def test_streamer_needs_batch_one(model):
    with pytest.raises(ValueError, match=r"`streamer` supports batch size 1"):
        model.generate(torch.ones(2, 4, dtype=torch.long), max_new_tokens=2, streamer=object())


def test_errors_leave_the_model_usable(model):
    """A refused call corrupts nothing: the next good call still matches the target's greedy output."""
    with pytest.raises(ValueError):
        model.generate(torch.ones(1, 60, dtype=torch.long), max_new_tokens=8)
    ids = torch.tensor([[5, 9, 11, 3]])
    out = model.generate(ids, max_new_tokens=6, eos_token_id=[])
    expected = model.target.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out.sequences, expected)
