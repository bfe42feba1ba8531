"""The TensorRT build check, on a CPU (``make test-tensorrt``; run with .venv-trt/bin/python).

A tiny random pair (dustin.tiny, no downloads) is compiled in sparse mode and its verification step exported;
then, for that program:

1. the program handed to TensorRT (cache writes as outputs, dustin ops lowered to core ATen) is run by PyTorch
   (torch 2.14, the TensorRT venv's) and must leave the same logits and caches as the exported program;
2. ``dustin.export_tensorrt(..., allow_cpu_build=True)`` lowers, partitions and builds every TensorRT engine and
   serialises it (TensorRT-RTX builds without a GPU; nothing is run);
3. every sparse layer's ``dustin::sparse_attention`` must lie wholly inside a TensorRT block (no PyTorch fallback),
   and the engines must serialise to files.

Prints the placement, engine sizes and layers (``--layers`` prints every layer); exits 1 on a failed check.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections import Counter

import torch


def _check_program_numerics(program, entry: dict) -> list[str]:
    """The explicit-I/O, lowered program equals the exported one on random inputs (PyTorch, CPU)."""
    from dustin.cache_io import explicit_io, write_back
    from dustin.kernels.lowering import lower

    g = torch.Generator().manual_seed(0)
    metas = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"][-len(entry["inputs"]):]
    batch, rows = metas[0].shape
    seq_lens = torch.tensor([40, 13, 0][:batch])
    tensors = {"input_ids": torch.randint(3, 200, (batch, rows), generator=g),
               "position_ids": seq_lens[:, None] + torch.arange(rows), "seq_lens": seq_lens}
    for name, meta in zip(entry["inputs"][3:], metas[3:]):
        if name == "dustin_indices":
            positions = torch.arange(meta.shape[1]).expand(meta.shape) * 2
            tensors[name] = torch.where(positions < seq_lens[:, None], positions, -1).to(meta.dtype)
        elif meta.dtype.is_floating_point:
            tensors[name] = torch.randn(meta.shape, generator=g).to(meta.dtype)
        else:
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype)
    expected = {n: t.clone() for n, t in tensors.items()}
    mine = {n: t.clone() for n, t in tensors.items()}
    explicit = explicit_io(program, entry["inputs"])
    with torch.no_grad():
        reference = program.module()(*expected.values())
        own = write_back(explicit.outputs, mine, lower(explicit.program).module()(*mine.values()))
    reference = reference[0] if isinstance(reference, (tuple, list)) else reference
    problems = []
    if not torch.allclose(own[0], reference, atol=1e-4, rtol=1e-4):
        problems.append(f"lowered logits differ by {(own[0] - reference).abs().max():.3g}")
    problems += [f"{n} written differently" for n in tensors if not torch.allclose(mine[n], expected[n], atol=1e-5)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where the engines and tensorrt.json go (default: a temporary directory)")
    parser.add_argument("--layers", action="store_true", help="print every engine layer")
    args = parser.parse_args(argv)

    import dustin
    from dustin.export_tensorrt import export_tensorrt, import_torch_tensorrt
    from dustin.tiny import TINY_CONFIG, tiny_pair

    start = time.perf_counter()
    torch_tensorrt = import_torch_tensorrt(allow_cpu_build=True)
    print(f"torch {torch.__version__}, torch_tensorrt {torch_tensorrt.__version__}, "
          f"CUDA {'available' if torch.cuda.is_available() else 'absent (CPU build: engines built, not run)'}")
    layers, dense = 4, (1,)
    target, draft = tiny_pair(0, {**TINY_CONFIG, "num_hidden_layers": layers})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no calibration profile: the default heads are fine here
        model = dustin.compile(target, draft, mode="sparse", backend="eager", gamma=3, budget=32, n_sink=2,
                               window=8, dense_layers=dense)
    ids = torch.randint(3, 200, (3, 60), generator=torch.Generator().manual_seed(0))
    bundle = dustin.export(model, ids, roles=("verify",), max_length=128)
    print(f"exported {sorted(bundle.programs)} ({time.perf_counter() - start:.1f} s)")

    problems = _check_program_numerics(bundle.programs["verify"], bundle.manifest["programs"]["verify"])
    print("lowered program == exported program (PyTorch, CPU):", "no" if problems else "yes")

    out = args.out or tempfile.mkdtemp(prefix="dustin-trt-")
    built = time.perf_counter()
    report = export_tensorrt(bundle, programs=("verify",), path=out, allow_cpu_build=True)
    print(f"engines built in {time.perf_counter() - built:.1f} s\n{report}")
    verify = report.programs["verify"]
    sparse = verify.ops.get("dustin::sparse_attention", {})
    expected = layers - len(dense)
    if sparse.get("instances") != expected or sparse.get("instances_in_trt") != expected:
        problems.append(f"sparse_attention: {sparse.get('instances_in_trt', 0)}/{sparse.get('instances', 0)} "
                        f"instances in TensorRT, expected {expected}/{expected} (one per sparse layer)")
    if sparse.get("torch_nodes"):
        problems.append(f"{sparse['torch_nodes']} nodes of sparse_attention run in PyTorch")
    files = [os.path.join(out, f"verify.{i}.engine") for i in range(len(verify.engine_bytes))]
    if not files or not all(os.path.getsize(f) > 0 for f in files):
        problems.append(f"no serialised engine under {out}")
    for i, names in enumerate(verify.layers):
        kinds = Counter(name.split("]")[0].lstrip("[") for name in names if name.startswith("["))
        print(f"engine {i}: {verify.engine_bytes[i] / 2**20:.2f} MiB, {len(names)} layers: {dict(kinds.most_common())}")
        attention = [n for n in names if "self_attn/" in n and any(k in n for k in ("GATHER", "SOFTMAX", "MATRIX"))]
        for name in names if args.layers else attention:
            print("   ", name)
    print(f"engines and tensorrt.json under {out}; total {time.perf_counter() - start:.1f} s")
    for problem in problems:
        print("FAILED:", problem)
    print("TensorRT check:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
