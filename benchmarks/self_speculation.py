"""Self-speculation against the two-model pair on the real target: tokens/s, tau, tokens per target pass.

    python benchmarks/self_speculation.py --context 2048 --new-tokens 32

Arms (greedy, one timed run each after warm-up, ratios within this one run): ``ar`` (the target alone), ``pair``
(classic speculative decoding with the 0.5B draft, ``mode=dense``), and for each ``--draft-layers`` set a
self-draft (``dustin.compile(target, draft_layers=...)``: the target's own layers, a StreamingLLM window of
``n_sink`` + ``draft_window`` positions, one shared KV cache), all in ``mode=dense`` (lossless: every arm must
equal ``ar`` token for token; the script fails loudly if one does not). Prompt: the first ``--context`` tokens of
*Persuasion* (dustin.assets). Writes a CSV under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
import warnings

import torch

import dustin
from dustin import assets
from dustin.freerun import Arm, agreement, run_arm


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--draft-window", type=int, default=512)
    p.add_argument("--layer-sets", default="all,first:14,every:2",
                   help="self-draft layer sets: all, first:N (layers 0..N-1), every:K (every K-th layer)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def layer_set(spec: str, total: int) -> tuple[int, ...]:
    if spec == "all":
        return ()
    kind, _, value = spec.partition(":")
    if kind == "first":
        return tuple(range(int(value)))
    if kind == "every":
        return tuple(range(0, total, int(value)))
    raise SystemExit(f"--layer-sets: unknown set {spec!r} (all, first:N, every:K)")


def main() -> int:
    args = parse()
    warnings.filterwarnings("ignore", message=".*profile was calibrated.*")
    target, draft, tokenizer = assets.load_pair(dtype=torch.float32)
    text = assets.text("austen:persuasion")
    ids = tokenizer(text[: args.context * 8], return_tensors="pt").input_ids[:, : args.context]
    common = dict(backend="eager", gamma=args.gamma, draft_window=args.draft_window)
    pair = dustin.compile(target, draft, mode="dense", profile=assets.pair_profile(), **common)
    total = target.config.num_hidden_layers
    runs = []
    print(f"self-speculation: context {args.context}, {args.new_tokens} new tokens, gamma {args.gamma}, "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}")
    start = time.perf_counter()
    runs.append(("ar", "", run_arm(pair, Arm("ar"), ids, args.new_tokens, progress=True)))
    runs.append(("pair (0.5B draft)", "", run_arm(pair, Arm("dense"), ids, args.new_tokens, progress=True)))
    for spec in args.layer_sets.split(","):
        layers = layer_set(spec, total)
        model = dustin.compile(target, mode="dense", draft_layers=layers, **common)
        run = run_arm(model, Arm("dense"), ids, args.new_tokens, progress=True)
        runs.append((f"self ({spec}: {len(layers) or total} layers, window {args.draft_window})", spec, run))
        del model
    reference = runs[0][2]
    rows, failed = [], []
    for name, spec, run in runs:
        share, first = agreement(run.tokens, reference.tokens)
        s = run.stats
        rows.append(dict(arm=name, layers=spec, context=args.context, gamma=args.gamma,
                         tokens_per_s=round(s.decode_tokens_per_second, 3),
                         vs_ar=round(s.decode_tokens_per_second / reference.stats.decode_tokens_per_second, 3),
                         tau=round(s.tau, 3), tokens_per_target_pass=round(s.tokens_per_pass, 3),
                         draft_s=round(s.time_draft, 2), verify_s=round(s.time_verify, 2), equals_ar=share == 1.0))
        if share != 1.0:
            failed.append(f"{name}: differs from ar at new token {first}")
    print(f"\n{'arm':52s} {'tok/s':>6s} {'vs ar':>6s} {'tau':>5s} {'tok/pass':>8s} {'draft s':>7s} {'verify s':>8s}")
    for r in rows:
        print(f"{r['arm']:52s} {r['tokens_per_s']:6.2f} {r['vs_ar']:5.2f}x {r['tau']:5.2f} "
              f"{r['tokens_per_target_pass']:8.2f} {r['draft_s']:7.1f} {r['verify_s']:8.1f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"self-speculation-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s in all)")
    if failed:
        print("FAILED (lossless arms must equal ar):\n" + "\n".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
