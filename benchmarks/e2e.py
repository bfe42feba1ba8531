"""End-to-end decode benchmark on a real (target, draft) pair: every arm on the same prompts, side by side.

    python benchmarks/e2e.py --context 4096 --batch 1 --new-tokens 64

Arms (EVAL.md): ``ar`` (target alone, dense, the best dense path), ``sparse-ar`` (target alone, sparse attention
with history scores), ``dense`` (classic speculative decoding), ``sparse`` (Dustin), ``exact``, ``guarded``,
``sparse:<selector>`` (a selector baseline at the same budget), ``hf-ar`` / ``hf-assisted`` (transformers' own
generate, stock SDPA; their time includes prefill, reported separately). Append ``+window`` to an arm to give its
draft a sink + recent KV window (``draft_kv="window"``). Every dustin arm shares one prefill (the
caches are copied), compiles outside the timed calls, and reports the median decode tokens/s of ``--repeats`` runs
(prefill excluded; the min-max is in the note), tau, passes,
the time split, and agreement with the ``dense`` arm's greedy tokens. Prints a table, writes CSV and a PNG plot.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dustin  # noqa: E402
from texts import long_prompts  # noqa: E402

REAL_PAIR = os.path.expanduser("~/.cache/dustin-real-pair")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=os.path.join(REAL_PAIR, "target"))
    p.add_argument("--draft", default=os.path.join(REAL_PAIR, "draft"))
    p.add_argument("--context", type=int, nargs="+", default=[4096])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per arm after warm-up; the median is reported")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--n-sink", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--exact-every", type=int, default=8)
    p.add_argument("--min-recovery", type=float, default=0.9)
    p.add_argument("--draft-kv", default="full", choices=("full", "window"))
    p.add_argument("--arms", default="ar,sparse-ar,dense,sparse,exact,guarded")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--backend", default="eager", choices=("eager", "inductor"))
    p.add_argument("--profile", default=None, help="calibration profile JSON (default: the documented default)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


def load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = DTYPES[args.dtype]
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype, attn_implementation="sdpa")
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=dtype, attn_implementation="sdpa")
    return target.eval(), draft.eval(), AutoTokenizer.from_pretrained(args.target)


def arm_config(arm: str, args) -> tuple[dict, bool]:
    """(DustinConfig overrides, use_draft) for a dustin arm; a ``+window`` suffix gives the draft a KV window."""
    draft_kv = args.draft_kv
    if arm.endswith("+window"):
        arm, draft_kv = arm.removesuffix("+window"), "window"
    common = dict(gamma=args.gamma, budget=args.budget, n_sink=args.n_sink, window=args.window,
                  backend=args.backend, exact_every=args.exact_every, draft_kv=draft_kv)
    if arm == "ar":
        return dict(common, mode="dense"), False
    if arm == "sparse-ar":
        return dict(common, mode="sparse", selector="history"), False
    if arm.startswith("sparse:"):
        return dict(common, mode="sparse", selector=arm.split(":", 1)[1]), True
    if arm == "guarded":
        return dict(common, mode="guarded", min_recovery=args.min_recovery), True
    return dict(common, mode=arm), True


def share_prefill(src: dustin.DustinModel, dst: dustin.DustinModel, batch: int, max_length: int) -> None:
    """Give ``dst`` a copy of ``src``'s prefilled caches (same models, same capacity): one prefill for all arms."""
    ws = dst._workspace(batch, max_length)
    for mine, theirs in ((ws.target_cache, src._ws.target_cache), (ws.draft_cache, src._ws.draft_cache)):
        for a, b in zip(mine.layers, theirs.layers):
            a.keys.copy_(b.keys)
            a.values.copy_(b.values)
    ws.prefilled = src._ws.prefilled


def run_dustin(arm, args, target, draft, ids, max_length, first, profile):
    overrides, use_draft = arm_config(arm, args)
    model = dustin.compile(target, draft, profile=profile, max_length=max_length, **overrides)
    if first is not None:
        share_prefill(first, model, ids.shape[0], max_length)
    start = time.perf_counter()
    model.warmup(ids, max_new_tokens=args.new_tokens, use_draft=use_draft)  # prefill (first arm) + compiles
    warm_s = time.perf_counter() - start
    # Repeats run back to back on the prefilled cache (no prefill inside them); the median run is reported.
    runs = [model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[], use_draft=use_draft)
            for _ in range(args.repeats)]
    runs.sort(key=lambda out: out.stats.decode_tokens_per_second)
    spread = f"{runs[0].stats.decode_tokens_per_second:.2f}-{runs[-1].stats.decode_tokens_per_second:.2f}"
    return model, runs[len(runs) // 2], warm_s, spread


def run_hf(arm, args, target, draft, ids):
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    if arm == "hf-assisted":
        kwargs["assistant_model"] = draft
    with torch.no_grad():
        start = time.perf_counter()
        target(ids[:, :-1])  # stock prefill, timed separately to subtract
        if arm == "hf-assisted":
            draft(ids[:, :-1])
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        seqs = target.generate(ids, **kwargs)
        total = time.perf_counter() - start
    return seqs, total, prefill


def main() -> int:
    args = parse()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    target, draft, tokenizer = load(args)
    profile = dustin.DustinProfile.load(args.profile) if args.profile else None
    rows = []
    for context in args.context:
        for batch in args.batch:
            ids = torch.tensor(long_prompts(tokenizer, context, batch))
            margin = args.gamma + 1 + args.exact_every + args.gamma
            max_length = -(-(context + args.new_tokens + margin) // 256) * 256
            first, reference = None, None
            for arm in args.arms.split(","):
                print(f"[{context} x {batch}] {arm} ...", file=sys.stderr, flush=True)
                if arm.startswith("hf-"):
                    if batch != 1:
                        continue
                    seqs, total, prefill = run_hf(arm, args, target, draft, ids)
                    tps = args.new_tokens / max(total - prefill, 1e-9)
                    rows.append(dict(context=context, batch=batch, arm=arm, decode_tps=tps, tau="", target_passes="",
                                     draft_s="", select_s="", verify_s="", other_s="", agree=_agree(seqs, reference, context),
                                     recovery="", note=f"stock SDPA; {total:.1f}s incl. {prefill:.1f}s prefill"))
                    continue
                model, out, prefill_s, spread = run_dustin(arm, args, target, draft, ids, max_length, first, profile)
                first = first or model
                if arm == "dense":
                    reference = out.sequences
                s = out.stats
                rows.append(dict(context=context, batch=batch, arm=arm, decode_tps=s.decode_tokens_per_second,
                                 tau=s.tau, target_passes=s.target_passes, draft_s=s.time_draft,
                                 select_s=s.time_select, verify_s=s.time_verify, other_s=s.time_other,
                                 agree=_agree(out.sequences, reference, context),
                                 recovery=sum(s.recovery) / len(s.recovery) if s.recovery else "",
                                 note=f"median of {args.repeats} (tok/s {spread}); warm-up {prefill_s:.1f}s"))
                print(_format([rows[-1]]), file=sys.stderr)
    report(rows, args)
    return 0


def _agree(seqs, reference, prompt_len: int) -> str:
    """Fraction of generated tokens equal to the dense arm's greedy tokens, and the earliest divergence."""
    if reference is None or seqs.shape != reference.shape:
        return ""
    same = seqs[:, prompt_len:] == reference[:, prompt_len:]
    diverged = [int((~row).nonzero()[0]) for row in same if (~row).any()]
    return f"{same.float().mean().item():.3f} (first diff {min(diverged) if diverged else 'none'})"


def _format(rows) -> str:
    cols = ("context", "batch", "arm", "decode_tps", "tau", "target_passes", "draft_s", "verify_s", "select_s",
            "agree", "recovery", "note")
    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    table = [cols] + [tuple(cell(r[c]) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table)


def report(rows, args) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"\n# e2e: {machine}; {args.dtype}; gamma {args.gamma}; budget {args.budget}; backend {args.backend}")
    print(_format(rows))
    path = os.path.join(args.out, f"e2e-{stamp}.csv")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"csv: {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = sorted({(r["context"], r["batch"]) for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    width = 0.8 / max(1, len(groups))
    for g, (context, batch) in enumerate(groups):
        values = [next((r["decode_tps"] for r in rows if (r["context"], r["batch"], r["arm"]) == (context, batch, a)), 0)
                  for a in arms]
        ax.bar([i + g * width for i in range(len(arms))], values, width, label=f"{context} tok x {batch}")
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(arms))], arms, rotation=30)
    ax.set_ylabel("decode tokens/s (prefill excluded)")
    ax.set_title(f"dustin e2e ({args.dtype}, gamma {args.gamma}, budget {args.budget}; {machine})", fontsize=8)
    ax.legend()
    fig.tight_layout()
    png = os.path.join(args.out, f"e2e-{stamp}.png")
    fig.savefig(png, dpi=120)
    print(f"plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
