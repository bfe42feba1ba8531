"""Fill a profile's ``frequent_tokens`` (what ``draft_vocab=K`` reads) from a long text, in place.

    python scripts/profile_frequent_tokens.py dustin_compile/profiles/qwen2.5-coder-1.5b+0.5b.json --text austen

The shipped profile of the default pair counts Jane Austen's six novels (``dustin.assets.text("austen")``, ~959k
tokens), not the essays the end-to-end benchmark prompts with, so that its measurements are not on the text the
list was counted on. The tokenizer is the default pair's (``--tokenizer`` for another).
"""

from __future__ import annotations

import argparse
import dataclasses

import dustin
from dustin import assets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", help="profile JSON to update in place")
    p.add_argument("--text", default="austen", help="a dustin.assets text name [austen]")
    p.add_argument("--tokenizer", help="tokenizer directory [the default pair's target]")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(assets.pair_dirs()[0]))
    paragraphs = [t for t in assets.text(args.text).split("\n\n") if t.strip()]
    ids = tokenizer(paragraphs).input_ids  # one call per paragraph batch: no single call sees the whole text
    profile = dustin.DustinProfile.load(args.profile)
    common = dustin.frequent_tokens(ids, len(tokenizer))
    dataclasses.replace(profile, frequent_tokens=common).save(args.profile)
    print(f"{args.profile}: {len(common)} most frequent of {len(tokenizer)} ids, from {sum(map(len, ids))} tokens "
          f"of {args.text!r}")


if __name__ == "__main__":
    main()
