"""The inputs of ``python -m dustin eval``: the pair (a real one, or ``--tiny``), its texts, and the passages and
needle prompts cut from them. Everything here runs before the first model call, so that a text too short for the
settings fails at once, naming the flag."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .needles import DEPTHS, NeedlePrompt, fact_for, needle_prompt


@dataclass
class Pair:
    label: str
    target: torch.nn.Module
    draft: torch.nn.Module
    tokenizer: object
    draft_tokenizer: object
    profile: object  # a profile JSON path (dustin.compile loads and checks it), or None: the default profile
    profile_label: str
    text: object  # a name of dustin.assets.text, or a file path -> its text


def load_pair(args: argparse.Namespace, dtype: torch.dtype, device: str) -> Pair:
    """The pair of ``--tiny``, ``--pair`` or ``--pair-dir``, on ``device`` in ``dtype``, with its profile."""
    if args.tiny:
        from .tiny import char_tokenizer, synthetic_text, tiny_pair

        target, draft = tiny_pair()
        tokenizer = char_tokenizer()
        return Pair("tiny-random", target.to(device, dtype), draft.to(device, dtype), tokenizer, tokenizer,
                    None, "default", lambda name: synthetic_text(200_000, seed=sum(map(ord, name))))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import assets

    name = args.pair or assets.DEFAULT_PAIR
    target_dir, draft_dir = assets.pair_dirs(name, source=args.pair_dir)
    load = dict(dtype=dtype, attn_implementation="sdpa")
    target = AutoModelForCausalLM.from_pretrained(target_dir, **load).to(device).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, **load).to(device).eval()
    tokenizer, draft_tokenizer = AutoTokenizer.from_pretrained(target_dir), AutoTokenizer.from_pretrained(draft_dir)
    if args.profile:
        if not os.path.isfile(args.profile):
            raise SystemExit(f"--profile: {args.profile!r} is not a file (a JSON from `python -m dustin calibrate`)")
        profile = args.profile
    else:  # a local pair has no shipped profile: the default one (dustin warns)
        profile = None if args.pair_dir else assets.pair_profile(name)
    profile_label = Path(profile).name if profile is not None else "default"
    files = {args.text_file, args.needle_text_file} - {None}
    return Pair(args.pair_dir or name, target, draft, tokenizer, draft_tokenizer, profile, profile_label,
                lambda source: Path(source).read_text(encoding="utf-8") if source in files else assets.text(source))


def tokens_of(pair: Pair, name: str, count: int, flag: str) -> list[int]:
    """The first ``count`` tokens of text ``name`` (no special tokens), or an error naming ``flag``."""
    text = pair.text(name)
    ids = pair.tokenizer(text[: count * 8], add_special_tokens=False).input_ids  # <= 8 characters per token
    if len(ids) < count:
        ids = pair.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < count:
        raise SystemExit(f"{flag} {name}: {len(ids)} tokens, but this evaluation needs {count}: use a longer text, "
                         "smaller --contexts, fewer --windows, --passages or --needle-rounds")
    return ids[:count]


def prepare(pair: Pair, plan, span: int) -> tuple[dict[int, torch.Tensor], dict[int, list[list[NeedlePrompt]]]]:
    """Per context: the fidelity passages ``[passages, context + span]`` (free-running continues their first
    ``context`` tokens), and the needle prompts of each round (one per depth; round r reads the r-th ``context``
    tokens of the haystack)."""
    passages, needles = {}, {}
    for context in plan.contexts:
        if "fidelity" in plan.parts or "free" in plan.parts:
            ids = tokens_of(pair, plan.text, plan.passages * (context + span), "--text")
            passages[context] = torch.tensor(ids).view(plan.passages, context + span)
        if "needle" in plan.parts:
            hay = tokens_of(pair, plan.needle_text, plan.rounds * context, "--needle-text")
            try:
                needles[context] = [[needle_prompt(pair.tokenizer, hay[r * context:(r + 1) * context],
                                                   fact_for(i, r), depth, context) for i, depth in enumerate(DEPTHS)]
                                    for r in range(plan.rounds)]
            except ValueError as error:
                raise SystemExit(f"--contexts {context}: {error}") from None
    return passages, needles
