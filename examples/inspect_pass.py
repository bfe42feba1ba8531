"""What the compiler pass does to a Hugging Face model: pass reports, the rewritten graph, and declined attention.

    python examples/inspect_pass.py

`dustin.compile` captures every step (prefill, draft, verify, ...) with `torch.compile` and dustin's backend, which
runs `dustin.passes` on the dynamo graph: `find_attention` (SDPA, looking through `repeat_kv` to the un-repeated
cache) -> score/query taps -> `rewrite_attention` -> clean-up -> `verify_graph`. This prints what happened to each
graph, the dustin ops in the rewritten verification graph, and how the matcher declines attention it cannot
rewrite (with the reason). Set DUSTIN_DEBUG_GRAPHS=/some/dir to dump every rewritten graph's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import dustin
from dustin.tiny import DEMO_CONFIG, demo_pair
from dustin.passes import find_attention


def rewritten_pair_reports() -> None:
    target, draft = demo_pair()
    model = dustin.compile(target, draft, mode="sparse", budget=64, n_sink=4, window=16, draft_window=64,
                           dense_layers=(5,), backend="eager")
    prompt = torch.randint(10, DEMO_CONFIG["vocab_size"], (2, 200), generator=torch.Generator().manual_seed(0))
    model.warmup(prompt, max_new_tokens=8)  # captures and rewrites every graph this call shape needs
    for role, report in model.reports.items():
        print(f"\n{report}")
    code = model.rewritten_graph("verify").code
    calls = [line.strip().split(";")[0] for line in code.splitlines() if "torch.ops.dustin" in line]
    print(f"\nverify graph: {len(calls)} dustin op calls, e.g.\n  " + "\n  ".join(calls[:3]))


def declined_attention() -> None:
    """Graphs the pass must not rewrite: it says why instead of guessing."""
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 4, 32, 16), torch.randn(1, 4, 32, 16)
    bias = torch.randn(1, 1, 5, 32)

    def with_bias(q, k, v, bias):  # an additive float mask (e.g. ALiBi): not a selection of positions
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def bidirectional(q, k, v):  # no mask and not causal: an encoder
        return F.scaled_dot_product_attention(q, k, v)

    def padded(q, k, v, keep_positions):  # a bool mask the driver did not build: it cannot be proven causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep_positions)

    torch.compile(with_bias, backend=keep, fullgraph=True)(q, k, v, bias)
    torch.compile(bidirectional, backend=keep, fullgraph=True)(q, k, v)
    torch.compile(padded, backend=keep, fullgraph=True)(q, k, v, torch.rand(1, 1, 5, 32) > 0.2)
    print()
    for gm in graphs:
        matches, declined = find_attention(gm)
        for node, reason in declined:
            print(f"declined {node.name}: {reason}")


if __name__ == "__main__":
    rewritten_pair_reports()
    declined_attention()
