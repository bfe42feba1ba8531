"""What a verification costs inside the loop when its row count changes from one iteration to the next (real pair).

    python benchmarks/verify_switch.py --context 4096               # ~8 min here
    python benchmarks/verify_switch.py --context 16384              # ~14 min here (prefill and graphs ~8 min)

``gamma="auto"`` learns each gamma's cost from the iterations that ran it, and a gamma it takes rarely (a probe, a
re-measured stale cost) runs between long streaks of another. If a verification of a row count costs more when the
iterations before it used other row counts (other graphs; at 4-5 rows other weight formulations, ``passes/linear.py``),
the planner prices rarely taken gammas above what a fixed gamma pays for them. On one prefilled cache, round by round,
the speculative loop runs scripted gamma sequences (the planner's choice replaced, nothing else changed):

- ``gamma 1``, ``gamma 2``, ``gamma 4``: one gamma throughout (a streak);
- ``gamma 1 and 2 in turn``;
- ``gamma 1 x 7, then 4``: a 5-row verification after seven 2-row ones, as a probe of gamma = 4 would run.

Each verification and draft phase is timed (the driver keeps only totals); per sequence and row count it prints the
median, and writes a CSV.
"""

from __future__ import annotations

import argparse
import collections
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

SEQUENCES = {"gamma 1": [1], "gamma 2": [2], "gamma 4": [4], "gamma 1 and 2 in turn": [1, 2],
             "gamma 1 x 7, then 4": [1] * 7 + [4]}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--mode", default="sparse", choices=("dense", "sparse"))
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "verify_switch.csv"))
    return p.parse_args()


def main() -> int:
    args = parse()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    target, draft, tokenizer = load_pair()
    ids = torch.tensor(long_prompts(tokenizer, args.context, 1))
    max_length = -(-(args.context + args.new_tokens + 32) // 256) * 256
    loop = dustin.compile(target, draft, mode=args.mode, max_length=max_length,
                          profile=dustin.DustinProfile.load(assets.pair_profile()))
    start = time.perf_counter()
    loop.warmup(ids, max_new_tokens=args.new_tokens, progress=True)  # prefill + every gamma's graphs
    print(f"prefill and graphs {time.perf_counter() - start:.0f} s", file=sys.stderr)

    current = [""]
    verify_ms, draft_ms = collections.defaultdict(list), collections.defaultdict(list)

    def record(into):
        def add(generation, seconds):
            if generation.gamma:  # every iteration here speculates; keyed by the rows its verification had
                into[(current[0], generation.gamma + 1)].append(1e3 * seconds)
        return add

    with timed("verify", record(verify_ms)), timed("draft", record(draft_ms)):
        for n in range(args.rounds):
            for name, pattern in SEQUENCES.items():
                loop.planner.choose = scripted(loop.planner, itertools.cycle(pattern))
                current[0] = name
                loop.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[])
            print(f"round {n + 1} of {args.rounds}", file=sys.stderr)

    rows = [dict(context=args.context, mode=args.mode, sequence=name, rows=r, verifications=len(times),
                 verify_ms=statistics.median(times), draft_ms=statistics.median(draft_ms[(name, r)]))
            for (name, r), times in sorted(verify_ms.items(), key=lambda kv: (list(SEQUENCES).index(kv[0][0]), kv[0][1]))]
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"| sequence | rows verified | verifications | verification, median | draft phase, median |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sequence']} | {r['rows']} | {r['verifications']} | {r['verify_ms']:.0f} ms | {r['draft_ms']:.0f} ms |")
    print(f"CSV: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
