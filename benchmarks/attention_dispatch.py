"""What one cold call of ``dustin::sparse_attention`` pays for its dispatch: the op through its C++ CPU entry (the
fused kernel registered with the dispatcher, kernels/cpu_ext.cpp) against the same kernel reached through the
custom_op's Python layers (``dustin::_sparse_attention_cpu``, the path every call took before the registration).

    python benchmarks/attention_dispatch.py      # 7B geometry, 32k, batch 4, budget 512, bf16 + fp32 (~1 min)

Each arm runs right after a dense packed attention over the whole cache (as in benchmarks/attention.py, and as at a
decode step, where a layer's weights have just streamed through the CPU caches); the two arms swap places between
passes, and every pass reports medians of interleaved rounds (attention.py's ``measure_rounds``).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from attention import DTYPES, build_case, make_arms, measure_rounds
from dustin.kernels import cpu_ext


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context", type=int, default=32768)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--budget", type=int, default=512)
    p.add_argument("--passes", type=int, default=4, help="passes per dtype, the arms' order swapped in every other")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    if cpu_ext.load() is None:
        raise SystemExit(f"the C++ kernels did not build ({cpu_ext.build_error()}): nothing to compare")
    print("| dtype | pass | C++ entry ms | Python path ms | Python - C++ ms |\n|---|---|---|---|---|")
    for dtype in ("bf16", "fp32"):
        case = build_case("qwen2.5-7b", DTYPES[dtype], args.context, args.batch, 5, "cpu")
        arms, indices = make_arms(case, "qwen2.5-7b", [args.budget])
        scale = case["q"].shape[-1] ** -0.5
        paths = {
            "cpp": arms[f"attention_{args.budget}"],
            "python": lambda: torch.ops.dustin._sparse_attention_cpu(case["q"], case["k"], case["v"],
                                                                     indices[args.budget], case["seq_lens"], scale, 0),
        }
        for n in range(args.passes):
            first, second = ("cpp", "python") if n % 2 == 0 else ("python", "cpp")
            rounds = {"dense": arms["dense_packed"], first: paths[first], "dense_again": arms["dense_packed"],
                      second: paths[second]}
            samples, _ = measure_rounds(rounds, warmup=2, repeats=args.repeats, max_rounds=60)
            cpp, python = statistics.median(samples["cpp"]), statistics.median(samples["python"])
            print(f"| {dtype} | {n + 1} | {cpp:.3f} | {python:.3f} | {python - cpp:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
