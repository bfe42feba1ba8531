"""Quickstart: dustin on a small model pair built from configs (CPU, nothing downloaded).

    python examples/quickstart.py                    # Inductor-compiled graphs (the product path; ~1 min of compiles)
    python examples/quickstart.py --backend eager    # the same rewritten graphs without code generation (seconds)

The pair is dustin's demo pair: a random 6-layer Llama target and its first 3 layers as the draft (layer-skip
self-speculation, so they share the "tokenizer"). Random weights say nothing about accuracy; what this shows is
the API, the modes and their guarantees: `dense` and `exact` reproduce the target's own greedy decoding token for
token, `sparse` (Dustin as published) may drift from it.
"""

from __future__ import annotations

import argparse

import torch

import dustin
from dustin.tiny import DEMO_CONFIG, demo_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("inductor", "eager"), default="inductor")
    parser.add_argument("--context", type=int, default=384, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()

    target, draft = demo_pair()
    # Two prompts of different lengths, left-padded as for transformers' generate.
    g = torch.Generator().manual_seed(0)
    long = torch.randint(10, DEMO_CONFIG["vocab_size"], (args.context,), generator=g)
    short = torch.randint(10, DEMO_CONFIG["vocab_size"], (args.context // 2,), generator=g)
    input_ids = torch.zeros(2, args.context, dtype=torch.long)
    attention_mask = torch.zeros(2, args.context, dtype=torch.long)
    input_ids[0], attention_mask[0] = long, 1
    input_ids[1, -len(short):], attention_mask[1, -len(short):] = short, 1

    with torch.no_grad():
        reference = target.generate(input_ids, attention_mask=attention_mask, max_new_tokens=args.new_tokens,
                                    do_sample=False, eos_token_id=None, pad_token_id=0)

    # budget 64 of a 384-token context: every layer of the target attends to 64 cached positions + the new rows.
    base = dustin.compile(target, draft, budget=64, n_sink=4, window=16, backend=args.backend)
    for mode in ("dense", "sparse", "exact"):
        model = base.with_config(mode=mode)  # shares base's KV caches: the prompts are prefilled once
        # Optional: prefill and compile every decode graph now, so the statistics below time decoding only.
        model.warmup(input_ids, attention_mask=attention_mask, max_new_tokens=args.new_tokens)
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=args.new_tokens,
                             eos_token_id=[])
        same = (out.sequences == reference).all(1).tolist()
        print(f"\n== mode={mode}: rows equal to the target's greedy decoding: {same}")
        print(out.stats.table())
        if mode == "sparse":
            print(model.report)  # which attention nodes of the verification graph the pass rewrote
        if mode in ("dense", "exact") and not all(same):
            raise SystemExit(f"mode={mode} must reproduce the target's greedy decoding")

    # Speculative sampling: the draft proposes, the target's distribution decides (top-p / temperature applied to
    # both); exact mode keeps that guarantee with sparse verification.
    model = base.with_config(mode="exact")
    sampled = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=args.new_tokens,
                             do_sample=True, temperature=0.8, top_p=0.95, eos_token_id=[],
                             generator=torch.Generator().manual_seed(1))
    print(f"\n== sampling (exact mode): {sampled.stats.new_tokens} new tokens, tau {sampled.stats.tau:.2f}")


if __name__ == "__main__":
    main()
