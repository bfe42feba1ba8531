"""Exported step programs of tiny models, built here from dustin.passes (the tests of the lowering and of the
explicit cache I/O need a real rewritten program, independent of dustin.export's bundle)."""

from __future__ import annotations

import torch

from dustin.cache import RowCache
from dustin.masks import mask_spec
from dustin.passes import RewritePlan, run_passes
from dustin.steps import _make_forward
from helpers import tiny_model


class _Step(torch.nn.Module):
    """The driver's step with the caches as explicit inputs, written in place (the export contract)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.masks = model, mask_spec(model)

    def forward(self, input_ids, position_ids, seq_lens, *kv):
        cache = RowCache.wrap(list(kv[0::2]), list(kv[1::2]))
        return _make_forward(self.model, lambda: cache, self.masks, True)(input_ids, position_ids, seq_lens)


def verify_program(attention: str = "sparse", batch: int = 3, rows: int = 5, capacity: int = 48, budget: int = 8,
                   family: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """(program, inputs by name): a tiny model's verification step rewritten with ``attention`` ("sparse" or
    "dense"), exported; the inputs are random caches, ragged ``seq_lens`` and a -1-padded selection."""
    model = tiny_model(family, seed=seed, dtype=dtype, **overrides)
    cache = RowCache.for_model(model, batch, capacity)
    g = torch.Generator().manual_seed(seed)
    kv = [torch.randn(t.shape, generator=g).to(dtype) for layer in cache.layers for t in (layer.keys, layer.values)]
    seq_lens = torch.tensor([capacity - rows - 3, 0, 11][:batch] + [7] * max(0, batch - 3))
    pos = seq_lens[:, None] + torch.arange(rows)
    ids = torch.randint(3, 128, (batch, rows), generator=g)
    with torch.no_grad():
        gm = torch.export.export(_Step(model), (ids, pos, seq_lens, *kv), strict=False).module()
    gm.graph._codegen = torch.fx.graph.CodeGen()  # flat positional inputs: the pass appends the state
    gm._forward_pre_hooks.clear()
    gm.recompile()
    indices = torch.full((batch, budget), -1, dtype=torch.long)
    for b in range(batch):
        chosen = torch.randperm(int(seq_lens[b]), generator=g)[: budget - 2]
        indices[b, torch.randperm(budget, generator=g)[: len(chosen)]] = chosen  # -1 anywhere
    state = {"indices": indices} if attention == "sparse" else {}
    report = run_passes(gm, RewritePlan(attention=attention), state, "verify")
    assert report.rewritten == model.config.num_hidden_layers
    names = ["input_ids", "position_ids", "seq_lens"]
    names += [f"{kind}_cache_{i}" for i in range(len(cache.layers)) for kind in ("k", "v")]
    tensors = dict(zip(names, (ids, pos, seq_lens, *kv)))
    if attention == "sparse":
        names.append("dustin_indices")
        tensors["dustin_indices"] = indices
    with torch.no_grad():
        program = torch.export.export(gm, tuple(tensors[n] for n in names), strict=False)
    return program, tensors


def run(program: torch.export.ExportedProgram, tensors: dict[str, torch.Tensor]):
    """(outputs, tensors after the call): the program on clones of ``tensors``, so its in-place writes show."""
    mine = {name: t.clone() for name, t in tensors.items()}
    with torch.no_grad():
        out = program.module()(*mine.values())
    return (list(out) if isinstance(out, (tuple, list)) else [out]), mine
