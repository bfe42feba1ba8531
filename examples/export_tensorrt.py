"""TensorRT: dustin's exported step programs compiled to TensorRT engines (export -> export_tensorrt -> save).

    python examples/export_tensorrt.py                # GPU + torch_tensorrt: build, save, run one verify step
    .venv-trt/bin/python examples/export_tensorrt.py  # no GPU: the CPU build check (engines built, not run)

On any machine it first prepares what TensorRT gets: the verification program with its cache writes turned into
outputs (``dustin.cache_io``; Torch-TensorRT drops writes into inputs) and every dustin op lowered to core ATen
(``dustin.kernels.lowering``). Without ``torch_tensorrt`` it stops there and says how to get it (exit 0); with it
but without CUDA it builds and serialises the engines (``allow_cpu_build=True``); with CUDA it also runs the verify
engine once and compares it with the exported program run by PyTorch.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

import torch

import dustin
from dustin.cache_io import explicit_io, write_back
from dustin.export_tensorrt import export_tensorrt
from dustin.kernels.lowering import lower
from dustin.tiny import TINY_CONFIG, tiny_pair


def _inputs(bundle, role: str, device: str) -> dict[str, torch.Tensor]:
    """Inputs of one step by the manifest's names: a committed history of 40 tokens, a -1-padded selection."""
    entry = bundle.manifest["programs"][role]
    metas = [n.meta["val"] for n in bundle.programs[role].graph.nodes if n.op == "placeholder"][-len(entry["inputs"]):]
    batch, rows = metas[0].shape
    seq_lens = torch.full((batch,), 40, device=device)
    tensors = {"input_ids": torch.randint(3, 200, (batch, rows), device=device),
               "position_ids": seq_lens[:, None] + torch.arange(rows, device=device), "seq_lens": seq_lens}
    for name, meta in zip(entry["inputs"][3:], metas[3:]):
        if name == "dustin_indices":
            picked = torch.arange(meta.shape[1], device=device).expand(meta.shape) * 3
            tensors[name] = torch.where(picked < 40, picked, -1).to(meta.dtype)
        elif meta.dtype.is_floating_point:
            tensors[name] = torch.randn(meta.shape, device=device).to(meta.dtype)
        else:
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype, device=device)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="where the engines go (default: a temporary directory)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    target, draft = (m.to(device, dtype) for m in tiny_pair(0, {**TINY_CONFIG, "num_hidden_layers": 4}))
    model = dustin.compile(target, draft, mode="sparse", backend="eager", gamma=3, budget=32, n_sink=2, window=8,
                           dense_layers=(1,))
    ids = torch.randint(3, 200, (2, 60), device=device)
    start = time.perf_counter()
    have_trt = importlib.util.find_spec("torch_tensorrt") is not None
    roles = ("prefill", "draft", "verify") if have_trt else ("verify",)  # without TensorRT only verify is shown
    bundle = dustin.export(model, ids, roles=roles, max_length=128)
    print(f"exported {sorted(bundle.programs)} in {time.perf_counter() - start:.1f} s")

    entry = bundle.manifest["programs"]["verify"]
    explicit = explicit_io(bundle.programs["verify"], entry["inputs"])
    lowered = lower(explicit.program)
    left = sum(str(n.target).startswith("dustin.") for n in lowered.graph.nodes)
    print(f"lowered verify program: {left} dustin ops left, {len(lowered.graph.nodes)} nodes")
    print("  inputs (read only):", ", ".join(explicit.inputs))
    print("  outputs:", ", ".join(f"{o.name}:{o.kind}" for o in explicit.outputs),
          "(rows: new K/V to write at position_ids; value: a tap's new tensor)")

    if not have_trt:
        print("torch_tensorrt is not installed, so no engine is built here. On a CUDA machine: pip install "
              "torch==2.14.1 torch-tensorrt-rtx==2.14.0; without a GPU, `make test-tensorrt` builds .venv-trt and "
              "runs the CPU build check.")
        return

    out = args.out or tempfile.mkdtemp(prefix="dustin-trt-")
    report = export_tensorrt(bundle, path=out, allow_cpu_build=not cuda)
    print(report)
    print("saved:", ", ".join(sorted(os.listdir(out))))
    if not cuda:
        print("no CUDA device: engines built and serialised, not run")
        return
    verify = report.programs["verify"]
    tensors = _inputs(bundle, "verify", device)
    expected = {n: t.clone() for n, t in tensors.items()}
    with torch.no_grad():
        reference = bundle.programs["verify"].module()(*(expected[n] for n in verify.inputs))
        logits = write_back(verify.outputs, tensors, verify.module(*(tensors[n] for n in verify.inputs)))[0]
    reference = reference[0] if isinstance(reference, (tuple, list)) else reference
    same = torch.allclose(logits.float(), reference.float(), atol=3e-2, rtol=3e-2)
    caches = all(torch.allclose(tensors[n].float(), expected[n].float(), atol=3e-2) for n in tensors)
    print(f"TensorRT verify step == exported program (bf16 tolerance): logits {same}, caches {caches}")


if __name__ == "__main__":
    main()
