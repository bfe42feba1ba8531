"""``python -m dustin eval``: the evaluation protocol on any pair (or ``--tiny``), to CSV files, tables and plots.

Per context, on one pair:

- ``fidelity``: teacher-forced sparse vs dense verification on held-out text, per budget x selector
  (``dustin.fidelity``): agreement, KL, PPL ratio, per-layer recovery;
- ``free``: greedy continuations of one shared prefill by ``ar``, ``dense`` and, per budget, ``sparse`` and
  ``exact`` (``dustin.freerun``); ``exact`` must equal ``ar`` in every row, else the command fails (exit 1, after
  writing its files);
- ``needle``: invented facts at depths 10..90 % of a haystack, the question at the end (``dustin.needles``),
  answered greedily by ``ar`` and, per budget, ``sparse`` and ``exact``.

The fidelity passages are the first ``--passages`` consecutive pieces of ``--text``, each ``context + (windows + 1)
x (gamma + 1)`` tokens; free-running continues their first ``context`` tokens, so it reuses the fidelity prefill.
Everything is prepared (texts tokenized, prompts built, settings checked) before the first model call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import prefill_chunks
from .config import SELECTORS, DustinConfig, field_names
from .eval_output import Results, merge
from .eval_inputs import load_pair, prepare
from .fidelity import fidelity
from .flags import NOT_FLAGS, add_config_arguments
from .freerun import EXTRA_KINDS, Arm, exact_mismatches, free_row, run_arm
from .model import compile as compile_pair
from .needles import correct

PARTS = ("fidelity", "free", "needle")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# DustinConfig fields the harness sets itself: per arm, and the cache size (one for every arm of a context, so that
# they share one prefill)
SET_PER_ARM = ("mode", "budget", "selector", "max_length")
DEFAULTS = {"real": dict(contexts=[4096, 8192], budgets=[128, 256, 512, 1024, 2048], windows=16, max_new_tokens=32),
            "tiny": dict(contexts=[384], budgets=[32, 96], windows=2, max_new_tokens=8)}
TINY_CONFIG = {"n_sink": 2, "window": 8}  # the real defaults (4 + 64) do not fit the tiny budgets


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Teacher-forced fidelity, free-running arms and needle retrieval on one pair; CSV files, tables and plots. "
        "Defaults that differ from DustinConfig's: --backend eager (Inductor's first compile of a large model's "
        "graphs takes minutes on a CPU); with --tiny also --n-sink 2 --window 8 (to fit its small budgets). "
        "--mode, --budget, --selector and --max-length are set by the harness (--budgets, --selectors).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pair", help="a model pair of dustin.assets [qwen2.5-coder-1.5b+0.5b]")
    source.add_argument("--pair-dir", help="a local directory holding target/ and draft/ checkpoints")
    source.add_argument("--tiny", action="store_true", help="small random models, a character tokenizer and a "
                                                            "synthetic text (no downloads; mechanics only)")
    parser.add_argument("--profile", help="calibration profile JSON [the pair's shipped profile; none for --pair-dir]")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--contexts", type=int, nargs="+", help="prompt lengths in tokens [4096 8192; --tiny 384]")
    parser.add_argument("--budgets", type=int, nargs="+", help="sparse budgets [128 256 512 1024 2048; --tiny 32 96]")
    parser.add_argument("--selectors", default=",".join(SELECTORS), help="fidelity: comma-separated selectors")
    parser.add_argument("--free-selectors", default="", help="free-running: extra sparse arms with these selectors "
                                                             "(the sparse and exact arms use dustin)")
    parser.add_argument("--free-arms", default="", help="free-running: extra arms per budget, of "
                                                        f"{','.join(EXTRA_KINDS)} (guarded: dense verification when the "
                                                        "estimated recovery drops; sparse-ar: the target alone, sparse "
                                                        "attention, history selector)")
    parser.add_argument("--windows", type=int, help="fidelity: measured windows per passage [16; --tiny 2]")
    parser.add_argument("--passages", type=int, default=1, help="fidelity and free-running: passages (batch) [1]")
    parser.add_argument("--text", help="fidelity and free-running text, a name of dustin.assets.text "
                                       "[austen:persuasion]")
    parser.add_argument("--text-file", help="fidelity and free-running text from this file (instead of --text)")
    parser.add_argument("--needle-text", help="needle haystack, a name of dustin.assets.text [essays]")
    parser.add_argument("--needle-text-file", help="needle haystack from this file (instead of --needle-text)")
    parser.add_argument("--needle-rounds", type=int, default=1, help="needle prompts per depth (other facts and "
                                                                     "haystack pieces) [1]")
    parser.add_argument("--max-new-tokens", type=int, help="free-running and needle answers [32; --tiny 8]")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="weights and caches [float32]")
    parser.add_argument("--device", help="torch device [cuda when available, else cpu]")
    parser.add_argument("--out", help="output directory [benchmarks/results/eval-<timestamp>/]")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="measure nothing: merge the CSVs of earlier runs "
                        "(e.g. budgets or contexts run separately) into --out, with tables and plots")
    add_config_arguments(parser, tuple(f for f in field_names() if f not in SET_PER_ARM + NOT_FLAGS))


@dataclass
class Plan:
    """The checked settings of one evaluation."""

    parts: tuple[str, ...]
    contexts: list[int]
    budgets: list[int]
    selectors: list[str]
    free_selectors: list[str]
    free_arms: list[str]
    windows: int
    passages: int
    max_new_tokens: int
    rounds: int
    text: str  # a name of dustin.assets.text, or a file (--text-file)
    needle_text: str
    dtype: str
    device: str
    out: Path
    plots: bool
    config: dict  # DustinConfig overrides shared by every arm


def plan_from(args: argparse.Namespace, overrides: dict) -> Plan:
    """Every setting checked, with an error naming the flag and the fix."""
    defaults = DEFAULTS["tiny" if args.tiny else "real"]
    real_only = [f for f in ("text", "text_file", "needle_text", "needle_text_file", "profile") if getattr(args, f)]
    if args.tiny and real_only:
        raise SystemExit(f"--{real_only[0].replace('_', '-')} is for real pairs; --tiny uses a synthetic text and the "
                         "default profile")
    for flag, name, path in (("--text", args.text, args.text_file), ("--needle-text", args.needle_text,
                                                                     args.needle_text_file)):
        if name and path:
            raise SystemExit(f"give {flag} or {flag}-file, not both")
        if path and not os.path.isfile(path):
            raise SystemExit(f"{flag}-file: {path!r} is not a file")
    parts = _names(args.parts, PARTS, "--parts")
    selectors = _names(args.selectors, SELECTORS, "--selectors")
    free_selectors = _names(args.free_selectors, SELECTORS, "--free-selectors", allow_empty=True)
    free_arms = _names(args.free_arms, EXTRA_KINDS, "--free-arms", allow_empty=True)
    config = {"backend": "eager", **(TINY_CONFIG if args.tiny else {}), **overrides}
    chosen = {**defaults, **{k: getattr(args, k) for k in defaults if getattr(args, k) is not None}}
    plan = Plan(parts, chosen["contexts"], chosen["budgets"], selectors, free_selectors, free_arms, chosen["windows"],
                args.passages, chosen["max_new_tokens"], args.needle_rounds,
                args.text_file or args.text or "austen:persuasion",
                args.needle_text_file or args.needle_text or "essays", args.dtype,
                args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
                Path(args.out or f"benchmarks/results/eval-{time.strftime('%Y%m%d-%H%M%S')}"), not args.no_plots,
                config)
    for flag, values in (("--contexts", plan.contexts), ("--budgets", plan.budgets)):
        if any(v < 16 for v in values) or len(set(values)) != len(values):
            raise SystemExit(f"{flag} must be distinct integers >= 16, got {values}")
    for flag, value in (("--windows", plan.windows), ("--passages", plan.passages),
                        ("--max-new-tokens", plan.max_new_tokens), ("--needle-rounds", plan.rounds)):
        if value < 1:
            raise SystemExit(f"{flag} must be >= 1, got {value}")
    for budget in plan.budgets:
        try:
            DustinConfig(**{**config, "mode": "sparse", "budget": budget})
        except (TypeError, ValueError) as error:
            raise SystemExit(f"--budgets {budget}: {error}") from None
    return plan


def _names(value: str, allowed: tuple[str, ...], flag: str, allow_empty: bool = False) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or (not names and not allow_empty) or len(set(names)) != len(names):
        raise SystemExit(f"{flag}: expected distinct comma-separated names of {', '.join(allowed)}, got {value!r}")
    return names


def capacity(config: DustinConfig, longest: int, new: int) -> int:
    """Cache positions for every arm of one context (as ``DustinModel`` counts them, exact mode's check included),
    fixed so that siblings share one cache and the prompt is prefilled once."""
    ahead = config.positions_ahead
    prefill_end = sum(prefill_chunks(longest - 1, config.prefill_chunk)[-1])
    return -(-max(longest + new + ahead, prefill_end) // 256) * 256


def run_eval(args: argparse.Namespace, overrides: dict) -> int:
    if args.merge:
        return _merge(args)
    plan = plan_from(args, overrides)
    pair = load_pair(args, DTYPES[plan.dtype], plan.device)
    base_config = DustinConfig(**plan.config)
    gamma, span = base_config.max_draft, (plan.windows + 1) * (base_config.max_draft + 1)
    passages, needles = prepare(pair, plan, span)  # a bad setting fails here, before the first model call
    base = compile_pair(pair.target, pair.draft, tokenizer=pair.tokenizer, draft_tokenizer=pair.draft_tokenizer,
                        profile=pair.profile, **plan.config)
    machine = (torch.cuda.get_device_name() if plan.device.startswith("cuda") else
               f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    settings = dict(pair=pair.label, profile=pair.profile_label, text=plan.text, needle_text=plan.needle_text,
                    machine=machine, device=plan.device, dtype=plan.dtype, gamma=gamma, n_sink=base_config.n_sink,
                    window=base_config.window, draft_kv=base_config.draft_kv, backend=base_config.backend,
                    torch=torch.__version__)
    results = Results(plan.out, settings)
    print(f"dustin eval: {pair.label} ({plan.dtype}, {machine}), parts {','.join(plan.parts)}, contexts "
          f"{plan.contexts}, budgets {plan.budgets}; writing to {plan.out}")
    failures: list[str] = []
    for context in plan.contexts:
        model = base.with_config(max_length=capacity(base_config, context, max(span, plan.max_new_tokens)))
        if "fidelity" in plan.parts:
            _fidelity_part(model, plan, passages[context], context, results)
        if "free" in plan.parts:
            failures += _free_part(model, plan, passages[context][:, :context], context, results)
        if "needle" in plan.parts:
            failures += _needle_part(model, plan, pair.tokenizer, needles[context], context, results)
    print("\n" + results.tables())
    if plan.plots:
        for path in results.plots():
            print(f"wrote {path}")
    print(f"results in {plan.out}")
    if failures:
        print("\nFAILED: exact mode did not reproduce ar:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


def _merge(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.merge]
    missing = [str(d) for d in dirs if not (d / "settings.json").is_file()]
    if missing:
        raise SystemExit(f"--merge: {missing} hold no eval results (no settings.json)")
    if not args.out:
        raise SystemExit("--merge needs --out DIR (where the merged CSVs and plots go)")
    try:
        results = merge(dirs, Path(args.out))
    except ValueError as error:
        raise SystemExit(f"--merge: {error}") from None
    print(results.tables())
    if not args.no_plots:
        for path in results.plots():
            print(f"wrote {path}")
    return 0


def _fidelity_part(model, plan: Plan, passages: torch.Tensor, context: int, results: Results) -> None:
    runs = [(b, s) for b in plan.budgets for s in plan.selectors]
    sparse = None
    for budget, selector in tqdm(runs, desc=f"fidelity @{context}", unit="run"):
        if sparse is None or sparse.config.budget != budget:
            # selector "dustin": its draft graphs carry the score taps, so one sibling serves every selector
            sparse = model.with_config(mode="sparse", budget=budget, selector="dustin")
        start = time.perf_counter()
        result = fidelity(sparse, passages, context, plan.windows, selector=selector, progress=True)
        sparse_layers = [r for i, r in enumerate(result.recovery) if i not in sparse.dense_layers]
        results.add("fidelity", dict(
            context=context, budget=budget, selector=selector, windows=result.windows, passages=len(passages),
            rows=result.rows, agreement=round(result.agreement, 5), kl=result.kl,
            nll_sparse=round(result.nll_sparse, 6), nll_dense=round(result.nll_dense, 6),
            ppl_ratio=round(result.ppl_ratio, 6),
            recovery_mean=round(sum(sparse_layers) / len(sparse_layers), 5) if sparse_layers else "",
            recovery_min=round(min(sparse_layers), 5) if sparse_layers else "",
            estimated_recovery=round(result.estimated_recovery, 5),
            dense_layers=" ".join(map(str, sorted(sparse.dense_layers))),
            seconds=round(time.perf_counter() - start, 2)))  # the first run of a budget includes its graph captures
        for layer, value in enumerate(result.recovery):
            results.add("fidelity_layers", dict(context=context, budget=budget, selector=selector, layer=layer,
                                                dense=layer in sparse.dense_layers, recovery=round(value, 5)))


def _arms(model, arms: list[Arm], prompt: torch.Tensor, plan: Plan, where: str, report) -> list[str]:
    """Run ``arms`` (``ar`` first) on one shared prefill of ``prompt``; ``report(run, ar_run)`` after each, so an
    interrupted evaluation keeps what it measured. Returns the messages of exact runs that differ from ar."""
    runs, failures = [], []
    for arm in tqdm(arms, desc=where, unit="arm"):
        runs.append(run_arm(model, arm, prompt, plan.max_new_tokens))
        report(runs[-1], runs[0])
        for message in exact_mismatches([runs[0], runs[-1]] if arm.kind == "exact" else [], where):
            print(f"\nFAILURE: {message}", file=sys.stderr)  # now, and again at the end
            failures.append(message)
    return failures


def _free_part(model, plan: Plan, prompt: torch.Tensor, context: int, results: Results) -> list[str]:
    arms = [Arm("ar"), Arm("dense")]
    for budget in plan.budgets:
        arms += [Arm("sparse", budget, "dustin"), Arm("exact", budget, "dustin")]
        arms += [Arm("sparse", budget, s) for s in plan.free_selectors if s != "dustin"]
        arms += [Arm(kind, budget, "history" if kind == "sparse-ar" else "dustin") for kind in plan.free_arms]

    def report(run, reference):
        results.add("free", dict(context=context, passages=len(prompt), **free_row(run, reference)))

    return _arms(model, arms, prompt, plan, f"free-running, context {context}", report)


def _needle_part(model, plan: Plan, tokenizer, rounds, context: int, results: Results) -> list[str]:
    arms = [Arm("ar")] + [Arm(kind, b, "dustin") for b in plan.budgets for kind in ("sparse", "exact")]
    failures = []
    for r, prompts in enumerate(rounds):
        def report(run, _reference, r=r, prompts=prompts):
            for p, tokens in zip(prompts, run.tokens):
                answer = tokenizer.decode(tokens, skip_special_tokens=True)
                results.add("needle", dict(context=context, arm=run.arm.label, budget=run.arm.budget or "",
                                           selector=run.arm.selector or "", round=r, depth=p.depth,
                                           needle_start=p.needle_start, expected=p.fact.answer,
                                           correct=correct(answer, p.fact.answer), answer=" ".join(answer.split())))

        batch = torch.stack([p.ids for p in prompts])  # every prompt is exactly `context` tokens
        failures += _arms(model, arms, batch, plan, f"needle, context {context}, round {r}", report)
    return failures
