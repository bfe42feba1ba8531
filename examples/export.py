"""Export: dustin's rewritten step graphs as torch.export programs, saved, loaded and decoded from (CPU).

    python examples/export.py                  # export -> save -> load -> generate, then compare
    python examples/export.py --mode sparse    # any mode; the lossless ones also equal target.generate()

`dustin.export(model, example_input_ids)` traces every decode role (prefill, draft, verify, and exact mode's
check) with the same graph pass `generate` runs, so the verification program holds `dustin::sparse_attention` in
every sparse layer and no SDPA. The bundle is a directory (manifest.json + one .pt2 per role) that loads without
the Hugging Face models: the weights live in the programs. Batch and KV-cache capacity are fixed at export.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import dustin
from dustin.tiny import DEMO_CONFIG, demo_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("dense", "sparse", "guarded", "exact"), default="exact")
    parser.add_argument("--context", type=int, default=300, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", help="where to save the bundle (default: a temporary directory)")
    args = parser.parse_args()

    target, draft = demo_pair()
    ids = torch.randint(10, DEMO_CONFIG["vocab_size"], (1, args.context), generator=torch.Generator().manual_seed(0))
    model = dustin.compile(target, draft, mode=args.mode, backend="eager", budget=64, n_sink=4, window=16)

    start = time.perf_counter()
    bundle = dustin.export(model, ids, max_new_tokens=args.new_tokens, progress=True)
    print(f"exported {len(bundle.programs)} programs in {time.perf_counter() - start:.1f} s "
          f"(batch {bundle.manifest['batch']}, max_length {bundle.manifest['capacity']})")
    for role, entry in bundle.manifest["programs"].items():
        print(f"  {role:<15} {entry['rows']:>3} rows  {entry['report']}")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, "bundle")
        bundle.save(path)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        print(f"saved to {path}: {sorted(os.listdir(path))}, {size / 2**20:.0f} MiB")
        loaded = dustin.load_exported(path)
        got = loaded.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[]).sequences

    want = model.generate(ids, max_new_tokens=args.new_tokens, eos_token_id=[]).sequences
    print("new tokens (loaded bundle):", got[0, args.context:].tolist())
    print(f"loaded bundle == DustinModel.generate: {torch.equal(got, want)}")
    if args.mode in ("dense", "exact"):
        with torch.no_grad():
            greedy = target.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)
        print(f"loaded bundle == target.generate(): {torch.equal(got, greedy)}")


if __name__ == "__main__":
    main()
