"""The ``--target`` / ``--draft`` arguments every real-pair benchmark takes: both, or neither (dustin.assets' default
pair, fetched and converted on the first run only)."""

from __future__ import annotations

import argparse

import torch

from dustin import assets


def add_pair_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help=f"target checkpoint directory [dustin.assets' {assets.DEFAULT_PAIR}]")
    p.add_argument("--draft", help="draft checkpoint directory [the default pair's, with --target unset]")


def check_pair_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, resolve: bool = True) -> None:
    """Refuse one of the two without the other; ``resolve``: fill in the default pair's directories."""
    if (args.target is None) != (args.draft is None):
        p.error("give both --target and --draft, or neither (dustin.assets' default pair)")
    if resolve and args.target is None:
        args.target, args.draft = map(str, assets.pair_dirs())


def load_pair(target: str | None = None, draft: str | None = None, dtype: torch.dtype = torch.float32):
    """(target, draft, tokenizer): both checkpoints in ``dtype`` with SDPA attention (what dustin rewrites), in eval
    mode, and the target's tokenizer; ``target`` and ``draft`` None: the default pair's directories."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if target is None:
        target, draft = map(str, assets.pair_dirs())
    models = [AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="sdpa").eval()
              for d in (target, draft)]
    return models[0], models[1], AutoTokenizer.from_pretrained(target)
