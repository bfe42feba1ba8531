"""dustin.cache_io (CPU, no TensorRT): a program whose cache writes became outputs, lowered to core ATen, leaves
the caller's tensors exactly as the exported program leaves them, once ``write_back`` applied its outputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import dustin
from dustin.cache_io import explicit_io, write_back
from dustin.kernels.lowering import lower
from dustin.tiny import TINY_CONFIG, tiny_pair
from export_programs import run, verify_program


def _check(program, explicit, tensors, atol=2e-5):
    assert explicit.program.graph_signature.user_inputs_to_mutate == {}  # nothing written in place any more
    expected, written = run(program, tensors)
    mine = {name: t.clone() for name, t in tensors.items()}
    with torch.no_grad():
        results = lower(explicit.program).module()(*(mine[name] for name in explicit.inputs))
    own = write_back(explicit.outputs, mine, results)
    torch.testing.assert_close(own[0], expected[0], atol=atol, rtol=1e-4)
    for name in tensors:
        torch.testing.assert_close(mine[name], written[name], atol=atol, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["sparse", "dense"])
def test_rows_become_outputs_and_write_back_restores_the_writes(attention):
    program, tensors = verify_program(attention, use_sliding_window=True, sliding_window=6, max_window_layers=1)
    explicit = explicit_io(program, list(tensors))
    caches = [n for n in tensors if "_cache_" in n]
    assert [(o.name, o.kind) for o in explicit.outputs] == [("0", "output")] + [(n, "rows") for n in caches]
    assert explicit.full_copies == []  # the attention reads the new rows from the program: no cache copied
    targets = {str(n.target) for n in explicit.program.graph.nodes}
    assert not any("scatter" in t for t in targets) and not any(f"{attention}_attention" in t for t in targets)
    _check(program, explicit, tensors)


def _bundle_inputs(bundle, role: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of a bundle program by its manifest: committed history, contiguous new positions."""
    g = torch.Generator().manual_seed(seed)
    entry = bundle.manifest["programs"][role]
    metas = [n.meta["val"] for n in bundle.programs[role].graph.nodes if n.op == "placeholder"][-len(entry["inputs"]):]
    batch, rows = metas[0].shape
    seq_lens = torch.tensor([23, 9][:batch])
    tensors = {"input_ids": torch.randint(3, 200, (batch, rows), generator=g),
               "position_ids": seq_lens[:, None] + torch.arange(rows), "seq_lens": seq_lens}
    for name, meta in zip(entry["inputs"][3:], metas[3:]):
        if name == "dustin_indices":
            indices = torch.full(meta.shape, -1, dtype=meta.dtype)
            for b in range(batch):
                chosen = torch.randperm(int(seq_lens[b]), generator=g)[: meta.shape[1] - 3]
                indices[b, torch.randperm(meta.shape[1], generator=g)[: len(chosen)]] = chosen
            tensors[name] = indices
        elif name == "dustin_lookahead_seq_lens":
            tensors[name] = seq_lens + 1  # the committed history, the pending token included
        elif meta.dtype.is_floating_point:
            tensors[name] = torch.randn(meta.shape, generator=g).to(meta.dtype)
        else:
            tensors[name] = torch.zeros(meta.shape, dtype=meta.dtype)
    return tensors


def test_bundle_programs_with_taps():
    """dustin.export's draft (score taps into dustin_lookahead) and verify (query tap) programs: the taps come back
    as whole values; a cache a score tap reads after the write is kept whole (reported)."""
    target, draft = tiny_pair(1, {**TINY_CONFIG, "num_hidden_layers": 2})
    model = dustin.compile(target, draft, mode="sparse", backend="eager", gamma=2, budget=12, n_sink=2, window=4)
    bundle = dustin.export(model, torch.randint(3, 200, (2, 30)), roles=("draft", "verify"), max_length=64)
    for role in ("draft_1", "verify"):
        tensors = _bundle_inputs(bundle, role)
        explicit = explicit_io(bundle.programs[role], bundle.manifest["programs"][role]["inputs"])
        kinds = {o.name: o.kind for o in explicit.outputs}
        tap = "dustin_lookahead" if role == "draft_1" else "dustin_query_record"
        assert kinds[tap] == "value" and kinds["k_cache_0"] == "rows"
        _check(bundle.programs[role], explicit, tensors)


def test_export_tensorrt_says_what_is_missing():
    """Without torch_tensorrt: what to install and where the CPU check is; with it but without CUDA: the opt-in."""
    from dustin.export_tensorrt import import_torch_tensorrt

    if importlib.util.find_spec("torch_tensorrt") is None:
        with pytest.raises(ImportError, match=r"torch-tensorrt-rtx==2\.14\.0.*NVIDIA's own package index.*"
                                              r"make test-tensorrt"):
            import_torch_tensorrt()
    elif not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="allow_cpu_build=True"):
            import_torch_tensorrt()
