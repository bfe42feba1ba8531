"""What a plain iteration costs inside the speculative loop, against an ``ar`` step (real pair, batch > 1).

    python benchmarks/plain_in_loop.py                          # 2k context, batch 4, 48 new tokens, 4 rounds (~10 min)
    python benchmarks/plain_in_loop.py --context 8192 --rounds 3

``gamma="auto"`` decodes plainly (gamma = 0) wherever speculation does not pay, so its plain iterations must cost what
plain decoding costs. This runs, round by round on one prefilled cache (siblings of one compiled model, as
``benchmarks/e2e.py`` does):

- ``ar``: the target alone (``use_draft=False``);
- ``loop, gamma 0``: the speculative loop with the draft loaded and its planner told to choose gamma = 0 every time;
- ``loop, planner + gamma 0``: the same, but the planner first makes its real choice (its whole per-iteration work:
  cost model, batch's end) before gamma = 0 is taken;
- ``loop, gamma 2 x 2, then 0``: two speculative iterations first, so that the rows stand at different positions
  (each accepted its own drafts) for the plain iterations that follow.

Per arm: decode tokens/s, its ratio to ``ar`` in the same round (median over rounds), and the median time of its
one-row verifications (each verification is timed: the driver keeps only totals). Prints a table and writes a CSV.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dustin  # noqa: E402
from dustin import assets  # noqa: E402
from pair_args import load_pair  # noqa: E402
from scripted_loop import scripted, timed  # noqa: E402
from texts import long_prompts  # noqa: E402

ARMS = ("ar", "loop, gamma 0", "loop, planner + gamma 0", "loop, gamma 2 x 2, then 0")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "plain_in_loop.csv"))
    return p.parse_args()


def main() -> int:
    args = parse()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    target, draft, tokenizer = load_pair()
    ids = torch.tensor(long_prompts(tokenizer, args.context, args.batch))
    profile = dustin.DustinProfile.load(assets.pair_profile())
    max_length = -(-(args.context + args.new_tokens + 32) // 256) * 256
    first = dustin.compile(target, draft, mode="dense", max_length=max_length, profile=profile)
    start = time.perf_counter()
    first.warmup(ids, max_new_tokens=args.new_tokens, graphs=False, progress=True)
    print(f"prefill {time.perf_counter() - start:.0f} s", file=sys.stderr)
    ar, loop = first.with_config(mode="dense"), first.with_config(mode="dense")
    ar.warmup(ids, max_new_tokens=args.new_tokens, use_draft=False)
    loop.warmup(ids, max_new_tokens=args.new_tokens)
    loop.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[])  # the planner learns its costs
    real_choose = loop.planner.choose

    one_row: list[float] = []

    def record(generation, seconds):
        if not generation.gamma:
            one_row.append(seconds)

    # arm -> (model, use_draft, (the gammas before plain decoding, whether the planner's real choice is made first))
    setups = {"ar": (ar, False, None), "loop, gamma 0": (loop, True, ([], False)),
              "loop, planner + gamma 0": (loop, True, ([], True)),
              "loop, gamma 2 x 2, then 0": (loop, True, ([2, 2], False))}
    results = {arm: [] for arm in ARMS}
    with timed("verify", record):
        for n in range(args.rounds):
            for arm in ARMS:
                model, use_draft, script = setups[arm]
                if script is not None:
                    first, compute = script
                    model.planner.choose = scripted(model.planner, itertools.chain(first, itertools.repeat(0)),
                                                    real_choose if compute else None)
                one_row.clear()
                out = model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[], use_draft=use_draft)
                results[arm].append((out.stats.decode_tokens_per_second, statistics.median(one_row)))
            print(f"round {n + 1}: " + ", ".join(f"{arm} {results[arm][-1][0]:.2f} tok/s" for arm in ARMS),
                  file=sys.stderr)

    rows = []
    for arm in ARMS:
        ratios = [tps / ar_tps for (tps, _), (ar_tps, _) in zip(results[arm], results["ar"])]
        rows.append(dict(context=args.context, batch=args.batch, arm=arm,
                         decode_tps=statistics.median(t for t, _ in results[arm]),
                         vs_ar=statistics.median(ratios), vs_ar_by_round=" ".join(f"{r:.3f}" for r in ratios),
                         one_row_verify_ms=1000 * statistics.median(ms for _, ms in results[arm])))
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("| arm | decode tok/s | vs `ar` (median of rounds) | per round | one-row verification, median |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['decode_tps']:.2f} | {r['vs_ar']:.3f}× | {r['vs_ar_by_round']} | "
              f"{r['one_row_verify_ms']:.0f} ms |")
    print(f"CSV: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
