"""Does a longer draft select better? Teacher-forced sparse verification at several gammas, interleaved on one text.

    python benchmarks/gamma_selection.py --context 16384 --windows 40          # ~12 min here (prefill ~7 min)

In the lossy sparse modes the positions the target reads are chosen from the draft's lookahead attention over the
tokens it just drafted, so a longer draft might select better, and its first token might be accepted more often
than the same token drafted alone. Fixed-gamma arms of ``benchmarks/e2e.py`` cannot tell: each lossy arm writes its
own continuation (from the first token sparse verification gets wrong), so their acceptance compares different
texts. Here every gamma reads the same text and the same cache: one prefill, then windows of gamma + 1 text tokens,
the gammas taking turns (1, 2, 4, 1, 2, 4, ...), each verified sparsely and then densely (``dustin.fidelity``'s
teacher forcing: the draft runs over the text's own tokens, every window is committed in full, dense K/V kept).

Per gamma and verification row i (row i judges draft token i + 1; row 0 exists at every gamma): how often the draft's
own greedy token (its argmax, whatever the text says) equals the sparse target's argmax (what acceptance would be),
and the dense target's (classic speculative decoding's), how often sparse and dense argmax agree, and the attention
recovery (the share of the dense queries' attention on the selected positions, mean over sparse layers). Prints a
table and writes a CSV of every window and row.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dustin  # noqa: E402
from dustin import assets  # noqa: E402
from dustin.fidelity import TeacherForced  # noqa: E402
from pair_args import add_pair_arguments, check_pair_arguments, load_pair  # noqa: E402
from texts import long_prompts  # noqa: E402


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p)
    p.add_argument("--profile", help="calibration profile JSON [the default pair's shipped profile]")
    p.add_argument("--context", type=int, default=16384, help="tokens of the essays prefilled before the windows")
    p.add_argument("--windows", type=int, default=40, help="measured windows per gamma")
    p.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "gamma_selection.csv"))
    args = p.parse_args()
    check_pair_arguments(p, args, resolve=False)
    if not args.gammas or min(args.gammas) < 1:
        p.error("--gammas: each gamma must be >= 1 (gamma = 0 drafts nothing, so it selects nothing from a draft)")
    if args.windows < 1:
        p.error("--windows must be >= 1")
    return args


class Interleaved(TeacherForced):
    """Teacher forcing whose gamma changes from window to window, keeping the draft's own greedy tokens."""

    def __init__(self, model, passages, context, windows):
        super().__init__(model, passages, context, windows)
        self.draft_argmax: list[torch.Tensor] = []

    def propose(self, logits, step):
        self.draft_argmax.append(logits.argmax(-1))
        return super().propose(logits, step)

    def window_at(self, gamma: int):
        """One window of ``gamma`` drafts: (Window, the draft's argmax per step ``[B, gamma]``)."""
        self.gamma, self.verify_rows = gamma, gamma + 1
        self.lookahead = self.lookahead_taps
        self.draft_argmax = []
        window = self.window()
        return window, torch.stack(self.draft_argmax, 1)


def measure(model, passages: torch.Tensor, context: int, gammas: list[int], windows: int) -> list[dict]:
    """Every measured window's rows (the first window, a dense burn-in, is left out)."""
    turns = [gammas[0]] + [g for _ in range(windows) for g in gammas]
    rows = []
    with torch.no_grad():
        run = Interleaved(model, passages, context, len(turns) + 1)
        start = time.perf_counter()
        run.prefill()
        print(f"prefill of {context} tokens: {time.perf_counter() - start:.0f} s", flush=True)
        for turn, gamma in enumerate(tqdm(turns, desc="windows", unit="window")):
            window, drafted = run.window_at(gamma)
            if not window.sparse:
                continue
            sparse, dense = window.sparse_logits.argmax(-1), window.dense_logits.argmax(-1)  # [B, gamma + 1]
            sparse_layers = [r for i, r in enumerate(window.recovery.tolist()) if i not in model.dense_layers]
            recovery = sum(sparse_layers) / len(sparse_layers)
            for b in range(sparse.shape[0]):
                for i in range(gamma + 1):
                    judged = i < gamma  # row i judges draft token i + 1; the last row only adds a token
                    rows.append(dict(
                        turn=turn, position=window.start + i, gamma=gamma, row=i,
                        sparse_equals_dense=int(sparse[b, i] == dense[b, i]),
                        draft_equals_sparse=int(drafted[b, i] == sparse[b, i]) if judged else "",
                        draft_equals_dense=int(drafted[b, i] == dense[b, i]) if judged else "",
                        recovery=round(recovery, 5), estimated_recovery=round(float(window.estimated[b]), 5)))
    return rows


def _mean(cell: list[dict], key: str) -> float:
    values = [r[key] for r in cell if r[key] != ""]  # "" where a row judges no draft
    return sum(values) / len(values) if values else float("nan")


def summary(rows: list[dict], gammas: list[int]) -> list[dict]:
    """Per gamma and row: means of the 0/1 columns and the recovery (each window's counted once per row)."""
    out = []
    for gamma in gammas:
        for i in range(gamma + 1):
            cell = [r for r in rows if r["gamma"] == gamma and r["row"] == i]
            if cell:
                out.append(dict(gamma=gamma, row=i, n=len(cell),
                                **{key: _mean(cell, key) for key in ("draft_equals_sparse", "draft_equals_dense",
                                                                     "sparse_equals_dense", "recovery",
                                                                     "estimated_recovery")}))
    return out


def main() -> int:
    args = parse()
    if args.target is None:
        args.profile = args.profile or assets.pair_profile()
    target, draft, tokenizer = load_pair(args.target, args.draft)
    need = args.context + (len(args.gammas) * args.windows + 2) * (max(args.gammas) + 1)
    passages = torch.tensor(long_prompts(tokenizer, need, 1))
    model = dustin.compile(target, draft, profile=args.profile, mode="sparse", budget=args.budget, gamma="auto",
                           gamma_max=max(args.gammas), backend="eager")
    rows = measure(model, passages, args.context, args.gammas, args.windows)
    table = summary(rows, args.gammas)
    print(f"\ncontext {args.context}, budget {args.budget}, {args.windows} windows per gamma, interleaved "
          f"({' '.join(map(str, args.gammas))})")
    print("gamma row    n  draft=sparse  draft=dense  sparse=dense  recovery  estimated")
    for t in table:
        print(f"{t['gamma']:5d} {t['row']:3d} {t['n']:4d}  {t['draft_equals_sparse']:12.3f} {t['draft_equals_dense']:12.3f}"
              f" {t['sparse_equals_dense']:13.3f} {t['recovery']:9.3f} {t['estimated_recovery']:10.3f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
