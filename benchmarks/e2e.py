"""End-to-end decode benchmark on a real (target, draft) pair: every arm on the same prompts, side by side.

    python benchmarks/e2e.py --context 4096 --batch 1 --new-tokens 64

Without ``--target``/``--draft`` it runs dustin.assets' default pair (fetched and converted once, then cached) with
the calibrated profile shipped for it.

Arms: ``ar`` (target alone, dense, the best dense path), ``sparse-ar`` (target alone, sparse attention
with history scores), ``dense`` (classic speculative decoding), ``sparse`` (Dustin), ``exact``, ``guarded``,
``sparse:<selector>`` (a selector baseline at the same budget), ``hf-ar`` / ``hf-assisted`` (transformers' own
generate, stock SDPA; their time includes prefill, reported separately). The dustin arms' one shared prefill is
timed on its own (printed before the table). Append ``+window`` to an arm to give its
draft a sink + recent KV window (``draft_kv="window"``). Every dustin arm shares one prefill
(``DustinModel.with_config``), compiles outside the timed calls (a ``gamma="auto"`` arm also decodes once untimed:
its planner measures every gamma once per context bucket, which a long-lived server pays once), and reports the median decode tokens/s of ``--repeats`` runs
(prefill excluded; the min-max is in the note), tau, passes,
the time split, agreement with the ``dense`` arm's greedy tokens, and ``vs_ar``: the ratio to the mean of the
nearest ``ar`` arms before and after it (``--interleave-ar`` puts one between every two arms; the machine drifts),
or with ``--round-robin`` (the repeats run round by round, every arm once per round) the median over rounds of its
ratio to that round's ``ar``: the tightest comparison a drifting machine allows. Prints a table, writes CSV and a
PNG plot, and
for ``gamma="auto"`` arms a JSON of every iteration's choice (context, gamma, why, the predicted tokens/s of each gamma;
the untimed learning run first, then the repeats) beside them, and one of each such arm's planner at its end
(acceptance per draft position, ms per step by kind and rows: what the choices were made from), and one of every dustin
arm's new tokens (``-tokens.json``: in the lossy modes each arm writes its own continuation from its first token
that differs from the target's, so their speeds also compare texts). ``--prompt-start`` runs the same settings on
another prompt (another place in the essays).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dustin  # noqa: E402
from dustin import assets  # noqa: E402
from dustin.kernels import cpu_ext  # noqa: E402
from dustin.flags import add_config_arguments, config_overrides  # noqa: E402
from pair_args import add_pair_arguments, check_pair_arguments, load_pair  # noqa: E402
from texts import ROW_STARTS, long_prompts  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p)
    p.add_argument("--context", type=int, nargs="+", default=[4096])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per arm after warm-up; the median is reported")
    p.add_argument("--arms", default="ar,sparse-ar,dense,sparse,exact,guarded")
    p.add_argument("--prompt-start", type=int, default=0, choices=range(ROW_STARTS), metavar=f"0..{ROW_STARTS - 1}",
                   help="where in the essays the prompts start (row b at place start + b of 7, spread evenly): the "
                        "same settings on another text [0]")
    p.add_argument("--interleave-ar", action="store_true",
                   help="run an ar arm between every two dustin arms (and first and last), so that each arm's vs_ar "
                        "compares it with ar measured just before and after it: this machine drifts within a run")
    p.add_argument("--round-robin", action="store_true",
                   help="run the timed repeats round by round, every arm once per round (ar first), and report "
                        "vs_ar as the median over rounds of the arm's tokens/s over that round's ar (added first if --arms "
                        "lacks it): each ratio then compares runs a minute or two apart, not the whole run")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    p.add_argument("--profile", help="calibration profile JSON, or 'none' for dustin's default score heads [the "
                                     "default pair's shipped profile; with --target/--draft: none]")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="a directory (the run's files are stamped e2e-YYYYMMDD-HHMMSS* inside it), or a file name "
                        "ending in .csv: X.csv, X-decisions.json, X-planner.json and X.png [benchmarks/results]")
    add_config_arguments(p, ("gamma", "budget", "n_sink", "window", "exact_every", "min_recovery", "draft_kv",
                             "backend", "draft_window", "m", "dense_layers"))
    args = p.parse_args()
    if args.interleave_ar and args.round_robin:
        p.error("--round-robin compares every arm with the ar of its own round: leave out --interleave-ar")
    if args.interleave_ar:
        args.arms = interleave_ar(args.arms.split(","))
    if args.round_robin:
        arms = args.arms.split(",")
        if len(set(arms)) != len(arms):
            p.error(f"--round-robin runs each arm once per round: name each once (--arms {args.arms})")
        args.arms = ",".join(["ar"] + [a for a in arms if a != "ar"])  # ar first in every round, added if missing
    check_pair_arguments(p, args, resolve=False)  # resolve_pair fills in the default pair and its profile
    args.config = dustin.DustinConfig(**config_overrides(args))  # DustinConfig's defaults for what is not given
    return args


def interleave_ar(arms: list[str]) -> str:
    """``arms`` with a plain ``ar`` before, between and after the others (an ``ar`` already in the list counts)."""
    out = []
    for arm in arms:
        if arm != "ar" and (not out or out[-1] != "ar"):
            out.append("ar")
        out.append(arm)
    if out and out[-1] != "ar":
        out.append("ar")
    return ",".join(out)


def vs_ar(rows: list[dict]) -> None:
    """Each row's ``vs_ar``: its tokens/s over the mean of the nearest plain ``ar`` rows before and after it in the
    same (context, batch) (one side where only one exists): a ratio to ar measured around it, not hours apart."""
    for i, row in enumerate(rows):
        same = [j for j, r in enumerate(rows) if (r["context"], r["batch"]) == (row["context"], row["batch"])
                and r["arm"] == "ar" and j != i]
        around = [max((j for j in same if j < i), default=None), min((j for j in same if j > i), default=None)]
        rates = [rows[j]["decode_tps"] for j in around if j is not None]
        row["vs_ar"] = row["decode_tps"] / (sum(rates) / len(rates)) if rates else ""


def vs_ar_by_round(rows: list[dict], rates: dict[str, list[float]]) -> None:
    """``--round-robin``: each row's ``vs_ar`` is the median over rounds of its tokens/s over the ``ar`` of the same
    round (``rates``: arm -> tokens/s per round, in round order, for one (context, batch)); the ratios go in the
    note. A row run once outside the rounds (``hf-*``) is divided by the median ``ar``."""
    ar = rates["ar"]
    for row in rows:
        if row["arm"] not in rates:
            row["vs_ar"] = row["decode_tps"] / statistics.median(ar)
            continue
        ratios = [mine / plain for mine, plain in zip(rates[row["arm"]], ar)]
        row["vs_ar"] = statistics.median(ratios)
        row["note"] += "; vs_ar by round " + " ".join(f"{r:.2f}" for r in ratios)


def resolve_pair(args) -> None:
    """Fill in the default pair's directories (fetched and converted on the first run only) and its profile."""
    if args.target is None:
        args.target, args.draft = map(str, assets.pair_dirs())
        args.profile = args.profile or assets.pair_profile()
    if args.profile == "none":
        args.profile = None




def arm_config(arm: str) -> tuple[dict, bool]:
    """(DustinConfig overrides, use_draft) for a dustin arm; a ``+window`` suffix gives the draft a KV window;
    ``@g<N>`` fixes gamma (``@auto``: chosen per iteration), ``@plain`` keeps every linear as traced (no packed
    multi-row GEMMs), ``@v<K>`` lets the draft score only the profile's K most frequent tokens (``draft_vocab``),
    ``@q8`` runs every convertible linear of the draft's decode steps on int8 weights (``draft_quant="int8"``; the
    default ``"auto"`` converts only its linears of >= 1 MiB), ``@f32`` keeps the draft as given (``draft_quant=None``),
    ``@b<N>`` sets this arm's sparse ``budget`` (positions per layer), ``@eager`` / ``@inductor`` override
    ``--backend`` for this arm (to compare both in one run), ``@ref`` runs the ops' torch references instead of
    the C++ CPU kernels (``DUSTIN_CPU_KERNELS=reference`` while the arm runs; see ``cpu_kernels``):
    ``dense@g4``, ``ar@plain``, ``sparse+window@auto``, ``dense@g1@v16384``, ``dense@q8``, ``dense@f32``,
    ``sparse@b2048``, ``ar@inductor``, ``sparse@ref``."""
    arm, *tags = arm.split("@")
    overrides = {}
    for tag in tags:
        if tag == "plain":
            overrides["linear"] = "plain"
        elif tag == "auto":
            overrides["gamma"] = "auto"
        elif tag in ("eager", "inductor"):
            overrides["backend"] = tag
        elif tag.startswith("g") and tag[1:].isdigit():
            overrides["gamma"] = int(tag[1:])
        elif tag.startswith("v") and tag[1:].isdigit():
            overrides["draft_vocab"] = int(tag[1:])
        elif tag.startswith("b") and tag[1:].isdigit():
            overrides["budget"] = int(tag[1:])
        elif tag == "q8":
            overrides["draft_quant"] = "int8"
        elif tag == "f32":
            overrides["draft_quant"] = None
        elif tag == "ref":
            pass  # not a config setting: cpu_kernels() switches the ops' CPU path while the arm runs
        else:
            raise SystemExit(f"--arms: unknown tag @{tag} (use @g<N>, @auto, @plain, @v<K>, @b<N>, @q8, @f32, "
                             "@ref, @eager or @inductor)")
    if arm.endswith("+window"):
        arm, overrides["draft_kv"] = arm.removesuffix("+window"), "window"
    if arm == "ar":
        return dict(overrides, mode="dense"), False
    if arm == "sparse-ar":
        return dict(overrides, mode="sparse", selector="history"), False
    if arm.startswith("sparse:"):
        return dict(overrides, mode="sparse", selector=arm.split(":", 1)[1]), True
    return dict(overrides, mode=arm), True


@contextlib.contextmanager
def cpu_kernels(arm: str):
    """``@ref``: the arm runs with ``DUSTIN_CPU_KERNELS=reference`` (the ops read it per call), restored after."""
    if "ref" not in arm.split("@")[1:]:
        yield
        return
    before = os.environ.get(cpu_ext.ENV)
    os.environ[cpu_ext.ENV] = "reference"
    try:
        yield
    finally:
        if before is None:
            del os.environ[cpu_ext.ENV]
        else:
            os.environ[cpu_ext.ENV] = before


def prepare_dustin(arm, args, first, ids) -> dict:
    """One arm on ``first``'s caches (``with_config``: the prompts are prefilled once, by the first arm), compiled,
    and for ``gamma="auto"`` after one untimed run in which its planner learns its costs (as a long-lived server
    would); ``runs`` collects its timed runs."""
    overrides, use_draft = arm_config(arm)
    model = first.with_config(**overrides)
    entry = dict(arm=arm, model=model, use_draft=use_draft, learning=[], runs=[])
    start = time.perf_counter()
    model.warmup(ids, max_new_tokens=args.new_tokens, use_draft=use_draft)  # prefill (first arm) + compiles
    if model.config.adaptive and use_draft:
        entry["learning"].append(generate_once(entry, args, ids))
    entry["warm_s"] = time.perf_counter() - start
    return entry


def generate_once(entry, args, ids):
    """One timed run of an arm, on the prefilled cache (no prefill inside it)."""
    return entry["model"].generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[], use_draft=entry["use_draft"])


def run_dustin(arm, args, first, ids) -> dict:
    """An arm prepared, then its ``--repeats`` timed runs back to back."""
    entry = prepare_dustin(arm, args, first, ids)
    entry["runs"] = [generate_once(entry, args, ids) for _ in range(args.repeats)]
    return entry


def summarize(entry):
    """(model, the median run, warm-up seconds, the runs' tokens/s range, gamma="auto" decisions in run order)."""
    decisions = [out.stats.decisions for out in entry["learning"] + entry["runs"]]
    runs = sorted(entry["runs"], key=lambda out: out.stats.decode_tokens_per_second)
    spread = f"{runs[0].stats.decode_tokens_per_second:.2f}-{runs[-1].stats.decode_tokens_per_second:.2f}"
    return entry["model"], runs[len(runs) // 2], entry["warm_s"], spread, decisions


def run_hf(arm, args, target, draft, ids):
    """transformers' generate (one run): total seconds, and its prefill timed apart to subtract. generate prefills
    with ``logits_to_keep=1`` (one row of the LM head, not 4k): the subtracted forward must too, or it overstates the
    prefill by the whole-prompt LM head and the decode rate comes out several times too high."""
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    if arm == "hf-assisted":
        kwargs["assistant_model"] = draft
    with torch.no_grad():
        start = time.perf_counter()
        _prefill_like_generate(target, ids)
        if arm == "hf-assisted":  # the assistant prefills the prompt in its first call
            _prefill_like_generate(draft, ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        seqs = target.generate(ids, **kwargs)
        total = time.perf_counter() - start
    return seqs, total, prefill


def _prefill_like_generate(model, ids) -> None:
    """The prompt forward generate runs first: every prompt token, logits of the last one only (where supported)."""
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    model(ids, **({"logits_to_keep": 1} if keep else {}))


def main() -> int:
    args = parse()
    os.makedirs(os.path.dirname(output_stem(args.out, "")) or ".", exist_ok=True)  # unwritable: fail before prefill
    torch.manual_seed(0)
    resolve_pair(args)
    target, draft, tokenizer = load_pair(args.target, args.draft, DTYPES[args.dtype])
    profile = dustin.DustinProfile.load(args.profile) if args.profile else None
    rows, prefills, decisions, planners, tokens = [], {}, {}, {}, {}
    for context in args.context:
        for batch in args.batch:
            ids = torch.tensor(long_prompts(tokenizer, context, batch, args.prompt_start))
            cfg = args.config
            margin = cfg.max_draft + 1 + cfg.exact_every + cfg.max_draft
            max_length = -(-(context + args.new_tokens + margin) // 256) * 256
            # Every arm is a sibling of this one: one set of caches, one prefill.
            first = dustin.compile(target, draft, cfg.replace(max_length=max_length), profile=profile)
            if any(not arm.startswith("hf-") for arm in args.arms.split(",")):
                start = time.perf_counter()  # the one prefill every dustin arm shares (both models; no compiles)
                first.warmup(ids, max_new_tokens=args.new_tokens, graphs=False, progress=True)
                prefills[(context, batch)] = time.perf_counter() - start
                print(f"[{context} x {batch}] shared prefill: {prefills[(context, batch)]:.1f} s", file=sys.stderr)
            reference = None
            entries = {}
            if args.round_robin:  # every arm prepared first, then the timed runs round by round
                for arm in (a for a in args.arms.split(",") if not a.startswith("hf-")):
                    print(f"[{context} x {batch}] preparing {arm} ...", file=sys.stderr, flush=True)
                    with cpu_kernels(arm):
                        entries[arm] = prepare_dustin(arm, args, first, ids)
                for n in range(args.repeats):
                    print(f"[{context} x {batch}] round {n + 1} of {args.repeats} ...", file=sys.stderr, flush=True)
                    for arm, entry in entries.items():
                        with cpu_kernels(arm):
                            entry["runs"].append(generate_once(entry, args, ids))
            setting_rows = []
            for arm in args.arms.split(","):
                print(f"[{context} x {batch}] {arm} ...", file=sys.stderr, flush=True)
                if arm.startswith("hf-"):
                    if batch != 1:
                        continue
                    seqs, total, prefill = run_hf(arm, args, target, draft, ids)
                    tps = (args.new_tokens - 1) / max(total - prefill, 1e-9)  # the prefill yields the first token
                    setting_rows.append(dict(context=context, batch=batch, arm=arm, decode_tps=tps, tau="", per_pass="",
                                             target_passes="", draft_s="", select_s="", verify_s="", other_s="",
                                             agree=_agree(seqs, reference, context), recovery="",
                                             note=f"stock SDPA; {total:.1f}s incl. {prefill:.1f}s prefill"))
                    continue
                if arm not in entries:
                    with cpu_kernels(arm):
                        entries[arm] = run_dustin(arm, args, first, ids)
                model, out, warm_s, spread, trace = summarize(entries[arm])
                tokens[f"{context}x{batch} {arm}"] = out.sequences[:, context:].tolist()
                if reference is None and arm.split("@")[0] in ("dense", "ar"):
                    reference = out.sequences  # the target's own greedy tokens
                s = out.stats
                setting_rows.append(dict(context=context, batch=batch, arm=arm, decode_tps=s.decode_tokens_per_second,
                                         tau=s.tau, per_pass=s.tokens_per_pass, target_passes=s.target_passes,
                                         draft_s=s.time_draft, select_s=s.time_select, verify_s=s.time_verify,
                                         other_s=s.time_other, agree=_agree(out.sequences, reference, context),
                                         recovery=sum(s.recovery) / len(s.recovery) if s.recovery else "",
                                         note=f"median of {args.repeats} (tok/s {spread}); warm-up {warm_s:.1f}s"
                                              + (f"; draft {model.draft_quant or 'as given'}" if arm_config(arm)[1]
                                                 else "") + _gamma_note(s)))
                print(_format([setting_rows[-1]]), file=sys.stderr)
                if model.planner is not None and arm_config(arm)[1]:
                    planners[f"{context}x{batch} {arm}"] = _planner_table(model.planner, context)
                    print(_planner_costs(planners[f"{context}x{batch} {arm}"]), file=sys.stderr)
                    decisions[f"{context}x{batch} {arm}"] = trace
            if args.round_robin:
                vs_ar_by_round(setting_rows, {arm: [out.stats.decode_tokens_per_second for out in entry["runs"]]
                                              for arm, entry in entries.items()})
            rows += setting_rows
            entries.clear()
    if not args.round_robin:
        vs_ar(rows)
    report(rows, args, prefills, decisions, planners, tokens)
    return 0


def _planner_table(planner, context) -> dict:
    """gamma="auto": what its model holds at this context (acceptance per draft position; ms per step by kind and
    rows): the numbers behind its choices, for a reader asking why it chose what it chose."""
    # The full batch's costs (what most choices were made from; a batch's last iterations, with rows finished, keep
    # their own table and the driver resets the count at the next choice).
    planner.live, planner.tail = max(planner.tables, default=planner.live), False
    costs = {}
    for kind in sorted({k for k, _, _ in planner.costs}):
        costs[kind] = {rows: 1e3 * cost for rows in range(0, planner.gamma_max + 2)
                       if (cost := planner.cost(kind, rows, context)) is not None and (rows or kind == "draft")}
    return dict(context=context, acceptance=planner.alphas(), acceptance_after_clean=planner.state_alphas(True),
                acceptance_after_rejection=planner.state_alphas(False), ms_by_rows=costs)


def _planner_costs(table: dict) -> str:
    lines = [f"  planner at {table['context']}: acceptance per draft position "
             + " ".join(f"{a:.2f}" for a in table["acceptance"])
             + "; after a clean iteration " + " ".join(f"{a:.2f}" for a in table["acceptance_after_clean"])
             + "; after a rejection " + " ".join(f"{a:.2f}" for a in table["acceptance_after_rejection"])]
    for kind, steps in table["ms_by_rows"].items():
        lines.append(f"  {kind:<12} ms by rows  " + " ".join(f"{rows}:{ms:.0f}" for rows, ms in steps.items()))
    return "\n".join(lines)


def _gamma_note(stats) -> str:
    """gamma="auto": the chosen gammas (iterations each) and the planner's predicted tokens/s."""
    if not stats.gammas:
        return ""
    chosen = " ".join(f"{g}:{n}" for g, n in sorted(stats.gammas.items()))
    note = f"; gamma {chosen}; predicted {stats.predicted_tokens_per_second:.2f} tok/s"
    if stats.intervals:  # exact mode: how it verified, and its check intervals (sparse runs each)
        every = " ".join(f"{i}:{n}" for i, n in sorted(stats.intervals.items()))
        note += (f"; verifications sparse {stats.sparse_passes} / dense {stats.dense_passes} (checks included);"
                 f" check after {every}; rolled back {stats.rolled_back}")
    return note


def _agree(seqs, reference, prompt_len: int) -> str:
    """Fraction of generated tokens equal to the dense arm's greedy tokens, and the earliest divergence."""
    if reference is None or seqs.shape != reference.shape:
        return ""
    same = seqs[:, prompt_len:] == reference[:, prompt_len:]
    diverged = [int((~row).nonzero()[0]) for row in same if (~row).any()]
    return f"{same.float().mean().item():.3f} (first diff {min(diverged) if diverged else 'none'})"


def _format(rows) -> str:
    cols = ("context", "batch", "arm", "decode_tps", "vs_ar", "tau", "per_pass", "target_passes", "draft_s", "verify_s", "select_s",
            "agree", "recovery", "note")
    rows = [{"vs_ar": "", **r} for r in rows]  # printed as each arm finishes, before vs_ar is known

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    table = [cols] + [tuple(cell(r[c]) for c in cols) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table)


def output_stem(out: str, stamp: str) -> str:
    """The run's files without their endings: ``out`` ending in .csv names them (what docs/speed keeps), else ``out``
    is a directory and they are stamped inside it."""
    return out[: -len(".csv")] if out.endswith(".csv") else os.path.join(out, f"e2e-{stamp}")


def report(rows, args, prefills, decisions, planners, tokens) -> None:
    stem = output_stem(args.out, time.strftime("%Y%m%d-%H%M%S"))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    cfg = args.config
    print(f"\n# e2e: {machine}; {args.dtype}; gamma {cfg.gamma}; budget {cfg.budget}; backend {cfg.backend}")
    for (context, batch), seconds in prefills.items():
        print(f"# shared prefill (target + draft), {batch} x {context} tokens: {seconds:.1f} s")
    print(_format(rows))
    path = f"{stem}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"csv: {path}")
    path = f"{stem}-tokens.json"  # each dustin arm's new tokens per row (greedy: every run of an arm writes the same)
    with open(path, "w") as f:
        json.dump(tokens, f)
    print(f"new tokens per arm: {path}")
    if decisions:  # gamma="auto": every iteration's choice, why, and the tokens/s the planner predicted per gamma
        path = f"{stem}-decisions.json"
        with open(path, "w") as f:
            json.dump({arm: [[dict(context=c, gamma=g, why=w, rates=r) for c, g, w, r in run] for run in runs]
                       for arm, runs in decisions.items()}, f)
        print(f"gamma=auto decisions: {path}")
        path = f"{stem}-planner.json"
        with open(path, "w") as f:
            json.dump(planners, f, indent=1)
        print(f"gamma=auto planner tables at the end of each arm: {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = sorted({(r["context"], r["batch"]) for r in rows})
    width = 0.8 / max(1, len(groups))
    arms = []  # in run order (an interleaved ar appears once per run of it)
    for g, (context, batch) in enumerate(groups):
        group = [r for r in rows if (r["context"], r["batch"]) == (context, batch)]
        arms = arms if len(arms) >= len(group) else [r["arm"] for r in group]
        ax.bar([i + g * width for i in range(len(group))], [r["decode_tps"] for r in group], width,
               label=f"{context} tok x {batch}")
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(arms))], arms, rotation=30)
    ax.set_ylabel("decode tokens/s (prefill excluded)")
    ax.set_title(f"dustin e2e ({args.dtype}, gamma {cfg.gamma}, budget {cfg.budget}; {machine})", fontsize=8)
    ax.legend()
    fig.tight_layout()
    png = f"{stem}.png"
    fig.savefig(png, dpi=120)
    print(f"plot: {png}")


if __name__ == "__main__":
    sys.exit(main())
