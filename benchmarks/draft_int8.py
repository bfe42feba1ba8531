"""What ``draft_quant="int8"`` buys and costs on the real draft: per-linear time at decode row counts, and acceptance.

    python benchmarks/draft_int8.py --rows 1 2 4 8 --tokens 1024

Per linear: every distinct linear of the draft (q/k/v/o, gate/up/down through all layers in turn, so the weights
leave the cache as in a real step; the LM head once), fp32 ``F.linear`` against ``Int8Linear``
(dustin_compile/draftquant.py: weight-only int8, one bf16 scale per output row) at each of ``--rows``, through
dustin's int8 kernel (kernels/linear/int8_linear.cpp, ``int8_ms``; where it is built) and through torch's
``_weight_int8pack_mm`` (``int8_torch_ms``), the three taking turns in each repeat; medians of ``--repeats``, and
the sum over the draft (what one decode step's linears cost). Acceptance: teacher-forced top-1 agreement of the draft
with the target on ``--tokens`` tokens of the essays (the share of positions where the draft's greedy token is the
target's, the acceptance of a greedy draft's first token), fp32 draft against its int8 views. Writes a CSV under
``--out``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dustin.draftquant import Int8Linear, convertible, int8_draft  # noqa: E402
from linear import linear_groups  # noqa: E402
from pair_args import add_pair_arguments, check_pair_arguments  # noqa: E402
from texts import long_prompts  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tokens", type=int, default=1024, help="teacher-forced tokens for the agreement (0: skip)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    check_pair_arguments(p, args)
    if min(args.rows) < 1 or args.repeats < 1 or args.tokens < 0:
        p.error("--rows and --repeats must be >= 1, --tokens >= 0")
    return args


def on_torch_kernel(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every ``Int8Linear`` in it running torch's kernel (bf16 activations), whichever one it chose:
    a shallow copy of an ``Int8Linear`` (its weights shared), any other module changed in place."""
    if isinstance(module, Int8Linear):
        module = copy.copy(module)
    for part in module.modules():
        if isinstance(part, Int8Linear):
            part.kernel = False
    return module


def per_linear(draft, rows: list[int], repeats: int) -> list[dict]:
    out = []
    for name, mods in linear_groups(draft).items():
        mods = [m for m in mods if convertible(m)]  # what draft_quant converts (the rest stays float)
        if not mods:
            continue
        with torch.no_grad():
            quantized = [Int8Linear(m) for m in mods]
        on_torch = [on_torch_kernel(m) for m in quantized]
        width = mods[0].in_features
        for n in rows:
            x = torch.randn(n, width)

            def run(layers):
                with torch.no_grad():
                    for layer in layers:
                        layer(x)

            arms = (("fp32", mods), ("int8", quantized), ("int8_torch", on_torch))
            for _, layers in arms:
                run(layers)  # warm-up
            times = {key: [] for key, _ in arms}
            for _ in range(repeats):  # in turn: a drift of the host moves all three alike
                for key, layers in arms:
                    start = time.perf_counter()
                    run(layers)
                    times[key].append((time.perf_counter() - start) * 1e3)
            fp32, int8, int8_torch = (sorted(times[k])[repeats // 2] for k in ("fp32", "int8", "int8_torch"))
            out.append({"linear": name, "shape": f"{mods[0].out_features}x{width}", "layers": len(mods), "rows": n,
                        "fp32_ms": round(fp32, 3), "int8_ms": round(int8, 3), "speedup": round(fp32 / int8, 2),
                        "int8_torch_ms": round(int8_torch, 3), "kernel": "dustin" if quantized[0].kernel else "torch",
                        "vs_torch_int8": round(int8_torch / int8, 2)})
            print(f"{name:<10} {out[-1]['shape']:>12} x{len(mods):<3} {n} rows: fp32 {fp32:8.2f} ms  "
                  f"int8 {int8:8.2f} ms  {fp32 / int8:5.2f}x  (torch's int8 {int8_torch:8.2f} ms: "
                  f"{int8_torch / int8:4.2f}x)", file=sys.stderr)
    return out


def agreement(target, draft, ids: torch.Tensor) -> dict[str, float]:
    """Share of positions where each draft's greedy next token equals the target's (teacher-forced)."""
    view = int8_draft(draft)
    on_torch = on_torch_kernel(int8_draft(draft))
    with torch.no_grad():
        want = target(ids).logits.argmax(-1)
        fp32 = draft(ids).logits.argmax(-1)
        int8 = view(ids).logits.argmax(-1)
        int8_torch = on_torch(ids).logits.argmax(-1)
    return {"fp32": (fp32 == want).float().mean().item(), "int8": (int8 == want).float().mean().item(),
            "int8_vs_fp32_draft": (int8 == fp32).float().mean().item(),
            "int8_torch": (int8_torch == want).float().mean().item(),
            "int8_torch_vs_fp32_draft": (int8_torch == fp32).float().mean().item()}


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"# draft_int8: {machine}; {args.draft}")
    rows = per_linear(draft, args.rows, args.repeats)
    print(f"{'rows':>4}  {'draft linears fp32 ms':>22}  {'int8 ms':>8}  speedup  {'torch int8 ms':>13}")
    for n in args.rows:
        fp32, int8, int8_torch = (sum(r[k] for r in rows if r["rows"] == n)
                                  for k in ("fp32_ms", "int8_ms", "int8_torch_ms"))
        print(f"{n:>4}  {fp32:>22.1f}  {int8:>8.1f}  {fp32 / int8:6.2f}x  {int8_torch:>13.1f}")
    if args.tokens:
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.target)
        ids = torch.tensor(long_prompts(tokenizer, args.tokens, 1))
        agree = agreement(target, draft, ids)
        print(f"teacher-forced top-1 agreement with the target on {args.tokens} essay tokens: fp32 draft "
              f"{agree['fp32']:.3f}, int8 draft {agree['int8']:.3f} (int8 vs fp32 draft: "
              f"{agree['int8_vs_fp32_draft']:.3f}); on torch's int8 kernel {agree['int8_torch']:.3f} "
              f"({agree['int8_torch_vs_fp32_draft']:.3f})")
        rows.append({"linear": "agreement", "shape": f"{args.tokens} tokens", **agree})
    path = os.path.join(args.out, f"draft_int8-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"csv: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
