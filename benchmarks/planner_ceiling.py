"""What a ``gamma="auto"`` arm of benchmarks/e2e.py could reach with the costs it measured: its planner's table at
the end of the arm (``e2e-*-planner.json``) replayed through the planner's own model, against the ``ar`` rate
measured in the same run (``e2e-*.csv``).

    python benchmarks/planner_ceiling.py RESULTS/e2e-STAMP-planner.json RESULTS/e2e-STAMP.csv --targets 1.15 1.5

Per arm, a table per gamma: the draft's and the verification's measured ms, E(gamma) = the tokens an iteration
commits on average with the measured acceptance, T(gamma) = the iteration's time (draft + verification + selection
+ the loop's other work, dustin.adaptive.GammaPlanner.iteration_time), the predicted tokens/s E / T and its ratio
to ``ar``; then, for each target ratio, the acceptance per draft position (one value for every position) that the
best gamma would need to reach it with these costs. A target above what acceptance 1.0 reaches cannot be met by
better drafts or selection alone: the steps themselves cost too much.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from dustin.adaptive import GammaPlanner, context_bucket


def planner_from(table: dict) -> GammaPlanner:
    """A planner holding exactly the table's costs (at its context's bucket) and acceptance."""
    acceptance = table["acceptance"]
    planner = GammaPlanner(gamma_max=len(acceptance))
    bucket = context_bucket(table["context"])
    for kind, steps in table["ms_by_rows"].items():
        for rows, ms in steps.items():
            planner.costs[(kind, int(rows), bucket)] = ms / 1e3
    planner.tried, planner.accepted = [1.0] * len(acceptance), list(acceptance)
    return planner


def best_rate(planner: GammaPlanner, context: int, kind: str, alpha: float) -> float:
    """The best gamma's predicted tokens/s with acceptance ``alpha`` at every draft position."""
    planner.accepted = [alpha] * planner.gamma_max
    return max(r for r in planner.predict(context, kind).values() if r is not None)


def acceptance_needed(table: dict, rate: float, kind: str) -> float | None:
    """The smallest acceptance per position (the same at each) at which the best gamma predicts ``rate``; None
    where even acceptance 1.0 does not."""
    planner, context = planner_from(table), table["context"]
    if best_rate(planner, context, kind, 1.0) < rate:
        return None
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if best_rate(planner, context, kind, mid) < rate else (low, mid)
    return high


def ar_rates(path: Path) -> dict[tuple[int, int], float]:
    """(context, batch) -> the ar arm's decode tokens/s in that run (the median over ar rows if several)."""
    rates: dict[tuple[int, int], list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row["arm"] == "ar":
                rates.setdefault((int(row["context"]), int(row["batch"])), []).append(float(row["decode_tps"]))
    return {key: sorted(v)[len(v) // 2] for key, v in rates.items()}


def print_kind(planner: GammaPlanner, table: dict, kind: str, plain: float | None, targets: list[float]) -> None:
    """The per-gamma table of one verification kind (``verify``: the mode's own, sparse in the sparse modes;
    ``verify_dense``: exact mode's dense verification), and the acceptance each target needs."""
    context = table["context"]
    print(f"{kind}:\n| gamma | draft ms | verify ms | E(gamma) | T(gamma) ms | predicted tok/s | vs ar |\n"
          "|---|---|---|---|---|---|---|")
    for gamma, rate in planner.predict(context, kind).items():
        if rate is None:
            continue
        draft = planner.cost("draft", gamma, context) if gamma else 0.0
        verify, total = planner.cost(kind, gamma + 1, context), planner.iteration_time(gamma, context, kind)
        print(f"| {gamma} | {1e3 * (draft or 0):.0f} | {1e3 * verify:.0f} | {planner.expected_tokens(gamma):.2f} | "
              f"{1e3 * total:.0f} | {rate:.2f} | " + (f"{rate / plain:.2f}x |" if plain else "|"))
    for target in targets if plain else []:
        need = acceptance_needed(table, target * plain, kind)
        print(f"  {target:.2f}x ar needs acceptance " + (f"{need:.2f} at every position" if need is not None
                                                       else "> 1.0: not reachable with these step costs"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("planner", type=Path, help="e2e-*-planner.json")
    p.add_argument("csv", type=Path, help="the e2e-*.csv of the same run (for the ar rate)")
    p.add_argument("--targets", type=float, nargs="+", default=[1.15, 1.5, 2.0], help="ratios to ar to solve for")
    args = p.parse_args(argv)
    tables, ar = json.loads(args.planner.read_text()), ar_rates(args.csv)
    for name, table in tables.items():
        context, batch = (int(x) for x in name.split(" ", 1)[0].split("x"))
        total = ar.get((context, batch))
        plain = total / batch if total else None  # the planner's rates are per row; the csv's count every row
        planner = planner_from(table)
        print(f"\n{name}: acceptance per position " + " ".join(f"{a:.2f}" for a in table["acceptance"])
              + (f"; ar {total:.2f} tok/s ({plain:.2f} per row)" if total else "; no ar arm in the csv"))
        for kind in (k for k in ("verify", "verify_dense") if k in table["ms_by_rows"]):
            print_kind(planner, table, kind, plain, args.targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
