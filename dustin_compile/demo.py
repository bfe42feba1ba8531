"""``python -m dustin demo``: dustin end to end on small models built from configs — nothing is downloaded.

The target is a randomly initialised Llama whose token embeddings are scaled up (x20), so that the residual stream
is dominated by the current token and the model behaves like a smooth n-gram model; the draft is the target's first
half of layers with the same embeddings and LM head (layer-skip self-speculation), so the pair shares a "tokenizer"
and agrees often enough to show acceptance (unscaled random models flip their argmax under any change). Random
weights say nothing about accuracy: this shows the mechanics, the pass report and the timing split. The
real-model numbers come from ``benchmarks/e2e.py``.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

DEMO_CONFIG = dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768,
                   tie_word_embeddings=False, rope_theta=10000.0)


def demo_pair(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    target = LlamaForCausalLM(LlamaConfig(**DEMO_CONFIG, attn_implementation="sdpa")).eval()
    target.model.embed_tokens.weight.data *= 20
    draft = copy.deepcopy(target)
    draft.model.layers = draft.model.layers[: len(draft.model.layers) // 2]
    draft.config.num_hidden_layers = len(draft.model.layers)
    return target, draft


def run_demo(args: argparse.Namespace, overrides: dict) -> int:
    """The demo for the CLI's parsed ``args`` (context, batch, new tokens) and ``DustinConfig`` ``overrides``."""
    from .model import compile as compile_pair

    print("dustin demo: small random Llama models built from configs (no downloads, says nothing about accuracy)")
    target, draft = demo_pair()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, DEMO_CONFIG["vocab_size"], (args.batch, args.context), generator=generator)
    with torch.no_grad():
        start = time.perf_counter()
        reference = target.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)
        hf_seconds = time.perf_counter() - start
    base = compile_pair(target, draft, **overrides)
    print(f"target: {DEMO_CONFIG['num_hidden_layers']} layers, draft: {draft.config.num_hidden_layers} layers; "
          f"batch {args.batch}, context {args.context}, {args.max_new_tokens} new tokens, gamma {base.config.gamma}")
    rows = [("HF generate (target only, incl. prefill)", args.max_new_tokens * args.batch / hf_seconds,
             float("nan"), float("nan"), 1.0)]
    arms = [("dense", False), ("dense", True), ("sparse", True), ("exact", True)] if base.config.mode == "dense" \
        else [(base.config.mode, True)]
    for mode, use_draft in arms:
        model = base.with_config(mode=mode)  # shares the prefilled caches
        model.warmup(prompt, max_new_tokens=args.max_new_tokens, use_draft=use_draft)  # prefill + capture, untimed
        out = model.generate(prompt, max_new_tokens=args.max_new_tokens, eos_token_id=[], use_draft=use_draft)
        new = slice(prompt.shape[1], None)  # generated tokens only: the prompt always agrees
        same = (out.sequences[:, new] == reference[:, new]).float().mean().item()
        name = f"dustin {mode}" + ("" if use_draft else " (target only)")
        rows.append((name, out.stats.decode_tokens_per_second, out.stats.tau, out.stats.tokens_per_pass, same))
        if mode == "sparse":
            print(model.report)
    print(f"\n{'arm':42s} {'decode tok/s':>12s} {'tau':>6s} {'tok/pass':>8s} {'new tokens = target greedy':>27s}")
    for name, tps, tau, per_pass, same in rows:
        print(f"{name:42s} {tps:12.1f} {tau:6.2f} {per_pass:8.2f} {same:27.3f}")
    return 0
