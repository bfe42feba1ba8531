"""Tiny random Hugging Face models built from configs: the right tool for mechanics and exactness tests."""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=1,
            eos_token_id=2, pad_token_id=0)
# model_type -> extra config (every family must keep SDPA and full attention).
FAMILIES = {
    "llama": {},
    "qwen2": {},
    "mistral": {"sliding_window": None},
    "qwen3": {"head_dim": 16},
    "phi3": {},
    "olmo2": {},
}


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "sdpa", **overrides):
    cfg = AutoConfig.for_model(family, **{**TINY, **FAMILIES[family], **overrides})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation).to(dtype).eval()


def always_wrong_draft(target):
    """The target with its LM head rolled by one token: the draft's argmax is always target argmax + 1."""
    draft = copy.deepcopy(target)
    draft.lm_head.weight.data = target.lm_head.weight.data.roll(1, dims=0).clone()
    return draft


def deeper_twin(draft, extra_layers: int, seed: int = 0):
    """A target that predicts exactly what ``draft`` does but costs more per step: the draft's weights plus
    ``extra_layers`` decoder layers whose output projections are zero (each adds nothing to the residual stream)."""
    layers = draft.config.num_hidden_layers + extra_layers
    target = tiny_model(draft.config.model_type, seed=seed, num_hidden_layers=layers, dtype=draft.dtype)
    missing, unexpected = target.load_state_dict(draft.state_dict(), strict=False)
    assert not unexpected and all(".layers." in k for k in missing)
    with torch.no_grad():
        for layer in target.model.layers[draft.config.num_hidden_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return target


def twin_pair(family: str, seed: int):
    """(target, draft, profile): a tiny 2-layer target, its exact copy as the draft (always right in float, so a
    changed draft shows as rejections) and the default profile with ``frequent_tokens`` counted over a random text
    (what ``draft_vocab`` reads)."""
    import dataclasses

    import dustin
    from dustin.profile import default_profile

    target = tiny_model(family, num_hidden_layers=2, seed=seed)
    draft = copy.deepcopy(target)
    profile = dataclasses.replace(default_profile(target, draft, warn=False),
                                  frequent_tokens=dustin.frequent_tokens(random_prompts([300], seed=seed + 1), 128))
    return target, draft, profile


def assert_decodes_like(model, ids, mask, expected, max_new_tokens: int):
    """``model`` (a draft variant) decodes ``expected`` (the target's own greedy tokens) both greedily and by
    speculative sampling with top_k=1, which must collapse to greedy; returns the greedy output (its stats)."""
    out = model.generate(ids, mask, max_new_tokens=max_new_tokens)
    assert torch.equal(out.sequences, expected)
    g = torch.Generator().manual_seed(1)
    sampled = model.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=True, top_k=1, generator=g)
    assert torch.equal(sampled.sequences, expected)
    return out


def left_padded(prompts: list[list[int]], pad: int = 0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    return ids, mask


def random_prompts(lengths: list[int], vocab: int = 128, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, ids, mask, max_new_tokens, eos_token_id=None, pad_token_id=0):
    """transformers' own greedy generate. ``eos_token_id=None`` (here: not passing it) keeps the model's default
    eos; ``[]`` disables it (passed to transformers as an explicit ``None``)."""
    kwargs = {} if eos_token_id is None else {"eos_token_id": eos_token_id or None}
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=pad_token_id, **kwargs)


def word_tokenizer(alphabet: str = "abcdefghijklmnopqrstuvwxyz .,!?'", size: int = 128):
    """A character-level fast tokenizer built in memory (no downloads): <pad>=0, <s>=1, </s>=2, then the alphabet,
    then filler symbols up to ``size`` entries. Different alphabets give different vocabularies."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<s>", "</s>", "<unk>"] + list(dict.fromkeys(alphabet))
    symbols += [f"<x{i}>" for i in range(size - len(symbols))]
    vocab = {s: i for i, s in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
