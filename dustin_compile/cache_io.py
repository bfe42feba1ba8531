"""Exported step programs with their in-place writes turned into outputs: what Torch-TensorRT can compile.

Why: a program from ``dustin.export`` writes its inputs in place (the new K/V rows into every layer's caches, the
query taps into ``dustin_query_record``, the score taps into ``dustin_lookahead``): user-input mutations of the
export signature, which ``ExportedProgram.module()`` performs with trailing ``copy_`` nodes. Torch-TensorRT 2.14
keeps mutations of *buffers* (its KV-cache lifting) but not of user inputs: its post-lowering pass
``remove_num_users_is_0_nodes`` deletes those ``copy_`` nodes (nothing uses their result), so a compiled program
would return its logits and silently stop writing the cache. ``explicit_io`` rewrites such a program into one that
mutates nothing:

- every input stays an input, read only;
- a cache written by the model's row scatter (``cache.scatter(2, position_ids, rows)``, what ``RowCache`` does)
  returns the T new rows ``[B, Hkv, T, D]`` (kind ``"rows"``) instead of an updated cache, and the attention ops that
  read that cache take the new rows directly (``kernels.lowering.*_new_rows``): the program never copies a cache;
- any other written input (the taps) returns its whole new value (kind ``"value"``);
- outputs: the program's own outputs first (kind ``"output"``), then one per written input, in input order.

``write_back(outputs, tensors, results)`` applies them (rows at ``position_ids``, values copied) and returns the
program's own outputs: after it, the caller's tensors hold what the original program would have left there.
Reading the new rows from the op arguments rather than the cache assumes the exporter's contract
``position_ids[b] == seq_lens[b] + arange(T)`` (export.py): the attention reads its new rows at seq_lens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import fx

from dustin.kernels import lowering

# Ops between ``position_ids`` and the scatter's index that only reshape it (RowCache: [:, None, :, None].expand).
_VIEWS = {torch.ops.aten.unsqueeze.default, torch.ops.aten.expand.default, torch.ops.aten.view.default,
          torch.ops.aten.reshape.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.alias.default,
          torch.ops.aten.clone.default, torch.ops.aten.slice.Tensor}
# By name: the op objects are replaced if the kernels are ever registered again (kernels/lowering.py, decompositions).
_NEW_ROWS = {"dustin::sparse_attention": lowering.sparse_attention_new_rows,
             "dustin::dense_attention": lowering.dense_attention_new_rows}


@dataclasses.dataclass(frozen=True)
class ExplicitOutput:
    """One output of an ``explicit_io`` program: ``kind`` ``"output"`` (the program's own, ``name`` = its index),
    ``"rows"`` (new rows of the input ``name``, to write at ``position_ids``) or ``"value"`` (the new ``name``)."""

    name: str
    kind: str


@dataclasses.dataclass
class ExplicitProgram:
    """``program`` (no input mutated), its ``inputs`` (names, in order), ``outputs`` and which caches still had to
    be copied whole because something other than an attention op read them after the write (``full_copies``)."""

    program: torch.export.ExportedProgram
    inputs: list[str]
    outputs: list[ExplicitOutput]
    full_copies: list[str]


def _from_placeholder(node: fx.Node, placeholder: fx.Node) -> bool:
    while node is not placeholder:
        if node.op != "call_function" or node.target not in _VIEWS or not isinstance(node.args[0], fx.Node):
            return False
        node = node.args[0]
    return True


def _row_write(value: fx.Node, cache: fx.Node, position_ids: fx.Node | None) -> fx.Node | None:
    """The new rows if ``value`` is ``scatter(cache, 2, position_ids[:, None, :, None].expand(..), rows)``."""
    if position_ids is None or value.op != "call_function" or value.target != torch.ops.aten.scatter.src:
        return None
    source, dim, index, rows = value.args
    if source is not cache or dim not in (2, -2) or not _from_placeholder(index, position_ids):
        return None
    return rows


def explicit_io(ep: torch.export.ExportedProgram, input_names: Sequence[str] | None = None) -> ExplicitProgram:
    """``ep`` without input mutations (see the module docstring); ``input_names`` name its user inputs (default:
    the placeholder names; ``dustin.export`` bundles list them in ``manifest["programs"][role]["inputs"]``)."""
    functional = ep.run_decompositions({})  # functional ATen, dustin ops kept: a write is a value, then a copy_
    gm = functional.module()
    gm.graph._codegen = fx.graph.CodeGen()  # flat positional inputs, no check of the original pytree signature
    gm._forward_pre_hooks.clear()
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    names = list(input_names) if input_names is not None else [n.name for n in placeholders]
    if len(names) != len(placeholders):
        raise ValueError(f"`input_names` has {len(names)} names for {len(placeholders)} program inputs")
    by_node = dict(zip(placeholders, names))
    position_ids = next((n for n, name in by_node.items() if name == "position_ids"), None)

    writes: dict[fx.Node, fx.Node] = {}  # written input -> its new value
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.copy_.default and node.args[0] in by_node:
            writes[node.args[0]] = node.args[1]
            graph.erase_node(node)
    rows = {p: r for p, v in writes.items() if (r := _row_write(v, p, position_ids)) is not None}
    scatter_of = {writes[p]: p for p in rows}

    for node in list(graph.nodes):  # attention over a just-written cache: read the new rows from the op's inputs
        attention = node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) \
            and node.target.name() in _NEW_ROWS
        k, v = (node.args[1], node.args[2]) if attention else (None, None)
        if k in scatter_of and v in scatter_of:
            kp, vp = scatter_of[k], scatter_of[v]
            q, _, _, *rest = node.args
            with graph.inserting_before(node):
                new = graph.call_function(_NEW_ROWS[node.target.name()], (q, kp, vp, rows[kp], rows[vp], *rest))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)

    output = next(n for n in graph.nodes if n.op == "output")
    own = list(output.args[0]) if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    outputs = [ExplicitOutput(str(i), "output") for i in range(len(own))]
    extra = []
    for p in placeholders:  # input order
        if p in writes:
            extra.append(rows.get(p, writes[p]))
            outputs.append(ExplicitOutput(by_node[p], "rows" if p in rows else "value"))
    output.args = (tuple(own + extra),)
    full = [by_node[p] for p in rows if writes[p].users]  # read after the write by something else: kept whole
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    example = tuple(torch.zeros(p.meta["val"].shape, dtype=p.meta["val"].dtype) for p in placeholders)
    with torch.no_grad():
        program = torch.export.export(gm, example, strict=False)
    return ExplicitProgram(program, names, outputs, full)


def write_back(outputs: Sequence[ExplicitOutput], tensors: Mapping[str, torch.Tensor],
               results: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Apply an ``explicit_io`` program's ``results`` to the caller's ``tensors`` (by input name; ``position_ids``
    among them): rows scattered at ``position_ids``, values copied. Returns the program's own outputs."""
    own = []
    for spec, result in zip(outputs, results, strict=True):
        if spec.kind == "output":
            own.append(result)
        elif spec.kind == "rows":
            cache = tensors[spec.name]
            index = tensors["position_ids"][:, None, :, None].expand(result.shape).to(cache.device)
            cache.scatter_(2, index, result.to(cache.dtype))
        else:
            tensors[spec.name].copy_(result)
    return own
