"""Offline stand-ins for ``demo --tiny``, ``eval --tiny`` and the examples: small random models, a character
tokenizer built in memory and a synthetic text. Nothing is downloaded; random weights say nothing about accuracy,
only the mechanics.

The target is a random Llama whose token embeddings are scaled up (x20, so that the residual stream is dominated by
the current token and the model behaves like a smooth n-gram model; unscaled random models flip their argmax under
any change) and the draft is its first half of layers with the same embeddings and LM head (layer-skip
self-speculation), so the pair shares a "tokenizer" and drafts are often accepted.
"""

from __future__ import annotations

import copy
import random
import string

import torch

VOCAB = 256
# eval --tiny: two layers, a character vocabulary
TINY_CONFIG = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                   tie_word_embeddings=False, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# demo --tiny and the examples: six layers, a 4k vocabulary
DEMO_CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
                   tie_word_embeddings=False, rope_theta=10000.0)
ALPHABET = string.ascii_letters + string.digits + " .,!?'-:;\n"
WORDS = ("the", "a", "river", "stone", "garden", "letter", "quiet", "morning", "walked", "under", "old", "bridge",
         "and", "of", "to", "in", "her", "his", "window", "light", "was", "had", "never", "before", "small", "house",
         "near", "field", "rain", "winter", "soon", "every", "evening", "friend", "wrote", "about", "music", "long",
         "road", "clock", "table", "bread", "warm", "cold", "after", "which", "story", "mountain", "ship", "harbour")


def tiny_pair(seed: int = 0, config: dict | None = None):
    """(target, draft): random Llama models built from ``config`` (default ``TINY_CONFIG``), in eval mode, SDPA
    attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    target = LlamaForCausalLM(LlamaConfig(**(config or TINY_CONFIG), attn_implementation="sdpa")).eval()
    target.model.embed_tokens.weight.data *= 20
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[: len(draft.model.layers) // 2]
    draft.config.num_hidden_layers = len(draft.model.layers)
    return target, draft


def demo_pair(seed: int = 0):
    """(target, draft) of ``demo --tiny`` and the examples: ``tiny_pair`` with ``DEMO_CONFIG``."""
    return tiny_pair(seed, DEMO_CONFIG)


def char_tokenizer():
    """A character-level fast tokenizer of ``VOCAB`` entries: <pad>=0, <s>=1, </s>=2, <unk>=3, the alphabet, then
    filler symbols. No chat template (the plain-text frame is used)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<s>", "</s>", "<unk>", *ALPHABET]
    symbols += [f"<x{i}>" for i in range(VOCAB - len(symbols))]
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def synthetic_text(characters: int, seed: int = 0) -> str:
    """At least ``characters`` characters of sentences of random words (deterministic for a seed)."""
    rng = random.Random(seed)
    sentences, total = [], 0
    while total < characters:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        sentence = " ".join(words).capitalize() + "."
        sentences.append(sentence)
        total += len(sentence) + 1
    return " ".join(sentences)
