"""Calibrate a selection profile for a pair, save it as JSON, and use it for sparse and exact decoding.

    python examples/calibrate_profile.py [--backend eager] [--out profile.json]

Calibration records dense speculative trajectories on the texts, measures the true attention of the verification
queries, and picks the target layer/heads for the history signal, the draft layers/heads for the lookahead signal,
the draft's share `m` of the budget and the layers that stay dense (worst recovery first). On real models pass
long texts with `tokenizer=` (or use `python -m dustin calibrate`); here the texts are token ids and the models
are small and random, so the numbers show the mechanics, not accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import dustin
from dustin.tiny import DEMO_CONFIG, demo_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("inductor", "eager"), default="inductor")
    parser.add_argument("--out", type=Path, help="where to write the profile (default: a temporary file)")
    args = parser.parse_args()

    target, draft = demo_pair()
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(10, DEMO_CONFIG["vocab_size"], (400,), generator=g) for _ in range(2)]
    profile = dustin.calibrate(target, draft, texts, budget=64, n_sink=4, window=16, gamma=4, windows=4,
                               max_dense_layers=1)
    print(f"history: layer {profile.history_layer}, heads {list(profile.history_heads)}")
    print(f"lookahead: draft layers {[(layer, list(heads)) for layer, heads in profile.draft_layers]}")
    print(f"m = {profile.m_fraction:.2f} of the free budget; dense layers {list(profile.dense_layers)}")
    print("recovery per target layer at budget 64: " + " ".join(f"{r:.2f}" for r in profile.recovery))

    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or Path(tmp) / "profile.json"
        profile.save(str(path))
        # A profile is keyed by both models' config hashes: another pair is refused with a clear error.
        prompt = torch.randint(10, DEMO_CONFIG["vocab_size"], (1, 300), generator=g)
        with torch.no_grad():
            reference = target.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                        pad_token_id=0)
        for mode in ("sparse", "exact"):
            model = dustin.compile(target, draft, profile=str(path), mode=mode, budget=64, n_sink=4, window=16,
                                   backend=args.backend)
            out = model.generate(prompt, max_new_tokens=20, eos_token_id=[])
            agree = (out.sequences[0, 300:] == reference[0, 300:]).float().mean().item()
            print(f"{mode:6s}: tau {out.stats.tau:.2f}, sparse/dense passes {out.stats.sparse_passes}/"
                  f"{out.stats.dense_passes}, tokens equal to target greedy {agree:.2f}")
            if mode == "exact" and agree != 1.0:
                raise SystemExit("exact mode must reproduce the target's greedy decoding")
        if args.out:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
