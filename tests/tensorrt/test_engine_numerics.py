"""TensorRT engines of a tiny pair (GPU only): engine outputs == the exported programs run by PyTorch, within bf16
tolerance, for the logits and for every tensor the step writes (through ``cache_io.write_back``).

Skipped without ``torch_tensorrt`` or without CUDA (main CI has neither; ``make test-tensorrt`` checks the CPU
build). Run on a GPU machine in the TensorRT venv: ``.venv-trt/bin/python -m pytest tests/tensorrt -q``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

if importlib.util.find_spec("torch_tensorrt") is None:
    pytest.skip("torch_tensorrt is not installed (scripts/tensorrt/setup-venv.sh builds a venv with it)",
                allow_module_level=True)
if not torch.cuda.is_available():
    pytest.skip("TensorRT engines run on CUDA; no CUDA device here (make test-tensorrt checks the CPU build)",
                allow_module_level=True)

import dustin  # noqa: E402
from dustin.cache_io import write_back  # noqa: E402
from dustin.export_tensorrt import export_tensorrt  # noqa: E402
from dustin.tiny import TINY_CONFIG, tiny_pair  # noqa: E402

BF16 = dict(atol=3e-2, rtol=3e-2)


@pytest.fixture(scope="module")
def built():
    target, draft = tiny_pair(2, {**TINY_CONFIG, "num_hidden_layers": 4})
    target, draft = target.to("cuda", torch.bfloat16), draft.to("cuda", torch.bfloat16)
    model = dustin.compile(target, draft, mode="sparse", backend="eager", gamma=3, budget=16, n_sink=2, window=4,
                           dense_layers=(1,))
    ids = torch.randint(3, 200, (2, 40), device="cuda")
    bundle = dustin.export(model, ids, roles=("draft", "verify"), max_length=128)
    return bundle, export_tensorrt(bundle)


def _inputs(bundle, role: str) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    entry = bundle.manifest["programs"][role]
    metas = [n.meta["val"] for n in bundle.programs[role].graph.nodes if n.op == "placeholder"][-len(entry["inputs"]):]
    batch, rows = metas[0].shape
    seq_lens = torch.tensor([57, 20][:batch], device="cuda")
    tensors = {"input_ids": torch.randint(3, 200, (batch, rows), device="cuda", generator=g),
               "position_ids": seq_lens[:, None] + torch.arange(rows, device="cuda"), "seq_lens": seq_lens}
    for name, meta in zip(entry["inputs"][3:], metas[3:]):
        if name == "dustin_indices":  # the first positions of each row's history, -1 padded
            positions = torch.arange(meta.shape[1], device="cuda").expand(meta.shape)
            tensors[name] = torch.where(positions < seq_lens[:, None] - 3, positions, -1).to(meta.dtype)
        elif name == "dustin_lookahead_seq_lens":
            tensors[name] = seq_lens + 1
        elif meta.dtype.is_floating_point:
            tensors[name] = torch.randn(meta.shape, device="cuda", generator=g).to(meta.dtype)
        else:
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype, device="cuda")
    return tensors


@pytest.mark.parametrize("role", ["verify", "draft_1", "draft_2"])
def test_engine_equals_the_program(built, role):
    bundle, report = built
    program = report.programs[role]
    assert all(c["instances_in_trt"] == c["instances"] for c in program.ops.values()), program.ops
    tensors = _inputs(bundle, role)
    expected = {name: t.clone() for name, t in tensors.items()}
    mine = {name: t.clone() for name, t in tensors.items()}
    with torch.no_grad():
        reference = bundle.programs[role].module()(*(expected[n] for n in program.inputs))
        results = program.module(*(mine[n] for n in program.inputs))
    reference = reference[0] if isinstance(reference, (tuple, list)) else reference
    own = write_back(program.outputs, mine, results)
    torch.testing.assert_close(own[0].float(), reference.float(), **BF16)
    for name in tensors:
        torch.testing.assert_close(mine[name].float(), expected[name].float(), **BF16, msg=name)


def test_save_writes_a_program_per_role(built, tmp_path):
    bundle, _ = built
    report = export_tensorrt(bundle, programs=("verify",), path=str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"verify.ep", "tensorrt.json"}
    assert report.path == str(tmp_path) and report.built_on == "cuda"
