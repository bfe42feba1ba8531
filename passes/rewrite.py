"""Rewrite matched attention into dustin ops (``rewrite_attention``), and the graph plumbing it needs.

The driver owns all selection state (``indices``, tap buffers). A pass adds each as a new placeholder at the end of
the graph's inputs (``add_state_inputs``); the backend appends the driver's tensors to every call, and
``torch.export`` sees them as explicit inputs. Where each sequence's rows start (``seq_lens``) and the sliding
window come from the matched ``dustin::causal_mask`` node itself, so a replacement computes exactly what the masked
SDPA computed. Replacements call ``torch.ops.dustin.*`` overloads, which are never matchable, so a second run
rewrites 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx

import dustin.kernels  # noqa: F401  (registers torch.ops.dustin.*)

from .match import AttentionMatch

STATE_PREFIX = "dustin_"
# What a ``portable`` plan may leave in a graph: ops with plain schemas (tests/kernels/test_export_schemas.py).
EXPORT_OPS = (torch.ops.dustin.sparse_attention.default, torch.ops.dustin.dense_attention.default,
              torch.ops.dustin.causal_mask.default, torch.ops.dustin.score_heads_t.default)


@dataclass(frozen=True)
class RewritePlan:
    """What one captured graph becomes.

    attention: ``"dense"`` rewrites every matched attention to the packed dense op; ``"sparse"`` to
        ``dustin::sparse_attention`` except for ``dense_layers``; ``"keep"`` leaves attention as traced.
    query_taps: record the post-RoPE query (all heads, all rows) of each listed layer into ``query_record[i]``
        (state buffer ``[len(query_taps), B, Hq, T, D]``).
    score_taps: ``((layer, (head, ...)), ...)``: add ``score_heads`` of the last ``score_rows`` query rows over the
        history (``< lookahead_seq_lens``) into the ``lookahead`` state buffer, at each listed layer.
    window_attention: rewrite dense attention to ``sparse_attention`` with the ``window_indices`` state (the draft's
        own sink + recent-window KV), keeping the score taps on the full cache.
    portable: for ``torch.export`` / TensorRT: only ops with plain schemas (tensors first, no lists, no optionals,
        no mutating custom op): the score taps call ``score_heads_t`` and add its result into ``lookahead``.
    """

    attention: str = "dense"
    dense_layers: frozenset[int] = frozenset()
    query_taps: tuple[int, ...] = ()
    score_taps: tuple[tuple[int, tuple[int, ...]], ...] = ()
    score_rows: int = 1
    window_attention: bool = False
    portable: bool = False

    def state_names(self) -> tuple[str, ...]:
        names = []
        if self.attention == "sparse":
            names.append("indices")
        if self.window_attention:
            names.append("window_indices")
        if self.query_taps:
            names.append("query_record")
        if self.score_taps:
            names += ["lookahead", "lookahead_seq_lens"]
        return tuple(names)


@dataclass
class RewriteRecord:
    """What happened to one attention node (a row of the pass report)."""

    layer: int
    node: str
    action: str
    reason: str = ""


@dataclass
class RewriteResult:
    count: int = 0
    records: list[RewriteRecord] = field(default_factory=list)


def add_state_inputs(gm: fx.GraphModule, examples: dict[str, torch.Tensor]) -> dict[str, fx.Node]:
    """Append a placeholder per driver-owned state tensor (after the existing inputs), with fake-shape metadata."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    existing = {n.target: n for n in placeholders}
    nodes: dict[str, fx.Node] = {}
    anchor = placeholders[-1] if placeholders else None
    for name, example in examples.items():
        target = STATE_PREFIX + name
        if target in existing:
            nodes[name] = existing[target]
            continue
        if anchor is None:
            with graph.inserting_before(next(iter(graph.nodes))):
                node = graph.placeholder(target)
        else:
            with graph.inserting_after(anchor):
                node = graph.placeholder(target)
        node.meta["val"] = _fake_like(example, placeholders)
        node.meta["example_value"] = node.meta["val"]
        nodes[name] = anchor = node
    return nodes


def _fake_like(example: torch.Tensor, placeholders: list[fx.Node]) -> torch.Tensor:
    """A fake tensor in the graph's fake mode (so shape propagation can mix it with recorded values)."""
    from torch._guards import detect_fake_mode

    vals = [p.meta.get("val", p.meta.get("example_value")) for p in placeholders]
    mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    if mode is None:
        return example
    return mode.from_tensor(example, static_shapes=True)


def _replace(gm: fx.GraphModule, old: fx.Node, target, args: tuple) -> fx.Node:
    with gm.graph.inserting_before(old):
        new = gm.graph.call_function(target, args)
    new.meta = copy.copy(old.meta)  # keeps nn_module_stack/stack_trace for debugging and the report
    new.meta["dustin_replaced"] = old.name
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)
    return new


def rewrite_attention(
    gm: fx.GraphModule, matches: list[AttentionMatch], plan: RewritePlan, state: dict[str, fx.Node]
) -> RewriteResult:
    """Replace each matched attention per ``plan``; returns the count and a record per node. No clean-up here."""
    result = RewriteResult()
    if plan.attention == "keep":
        result.records = [RewriteRecord(m.layer, m.node.name, "kept", "plan keeps attention") for m in matches]
        return result
    ops = torch.ops.dustin
    for m in matches:
        name = m.node.name
        sparse = plan.attention == "sparse" and m.layer not in plan.dense_layers
        if sparse:
            args = (m.query, m.key_cache, m.value_cache, state["indices"], m.seq_lens, m.scale, m.window)
            _replace(gm, m.node, ops.sparse_attention.default, args)
            action = "sparse"
        elif plan.window_attention:
            args = (m.query, m.key_cache, m.value_cache, state["window_indices"], m.seq_lens, m.scale, m.window)
            _replace(gm, m.node, ops.sparse_attention.default, args)
            action = "window"
        else:
            args = (m.query, m.key_cache, m.value_cache, m.seq_lens, m.scale, m.window)
            _replace(gm, m.node, ops.dense_attention.default, args)
            action = "dense" + (" (dense_layers)" if plan.attention == "sparse" else "")
        result.records.append(RewriteRecord(m.layer, name, action, f"sliding window {m.window}" if m.window else ""))
        result.count += 1
    return result


def is_impure(node: fx.Node) -> bool:
    """FX's purity check misses in-place ``call_method`` nodes (``cache.scatter_(...)``): keep those too."""
    if node.is_impure():
        return True
    return node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).startswith("__")


def clean_up(gm: fx.GraphModule) -> None:
    """One clean-up after a changed graph: DCE (keeping cache writes), lint, recompile."""
    gm.graph.eliminate_dead_code(is_impure_node=is_impure)
    gm.graph.lint()
    gm.recompile()
