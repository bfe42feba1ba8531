"""Score taps: ops the pass inserts so the driver gets the selection signals without touching model code.

- Query taps (target verify graph): copy the post-RoPE query of a layer (all heads, all T rows) into the driver's
  ``query_record[i]``; the driver keeps the row of the last committed token as the history query ``q*`` (and
  calibration / the oracle selector record every layer).
- Score taps (draft graphs): at each listed draft layer, add ``score_heads`` of the last ``score_rows`` query rows
  over the history positions ``< lookahead_seq_lens`` into the driver's ``lookahead`` buffer (``[B, S]`` float32).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

import dustin.kernels  # noqa: F401  (registers torch.ops.dustin.*)

from .errors import PassError
from .match import AttentionMatch, node_value
from .rewrite import RewritePlan, RewriteRecord


def insert_taps(
    gm: fx.GraphModule, matches: list[AttentionMatch], plan: RewritePlan, state: dict[str, fx.Node]
) -> list[RewriteRecord]:
    """Insert the plan's taps before the matched attention nodes; returns a report record per tap."""
    records: list[RewriteRecord] = []
    by_layer = {m.layer: m for m in matches}
    wanted = list(plan.query_taps) + [layer for layer, _ in plan.score_taps]
    missing = [layer for layer in wanted if layer not in by_layer]
    if missing:
        raise PassError(
            f"score taps: layer(s) {missing} have no matched attention in this graph (matched layers: "
            f"{sorted(by_layer)}); choose tap layers among them"
        )
    graph = gm.graph
    for slot, layer in enumerate(plan.query_taps):
        m = by_layer[layer]
        with graph.inserting_before(m.node):
            target = graph.call_function(operator.getitem, (state["query_record"], slot))
            graph.call_function(torch.ops.aten.copy_.default, (target, m.query))
        records.append(RewriteRecord(m.layer, m.node.name, "query tap", f"query_record[{slot}]"))
    for layer, heads in plan.score_taps:
        m = by_layer[layer]
        with graph.inserting_before(m.node):
            rows = graph.call_function(
                operator.getitem, (m.query, (slice(None), slice(None), slice(-plan.score_rows, None)))
            )
            if plan.portable:  # a pure op plus an in-place add of the state input: export/TensorRT-friendly
                ids = graph.get_attr(_head_ids(gm, layer, heads, node_value(m.query).device))
                scores = graph.call_function(
                    torch.ops.dustin.score_heads_t.default,
                    (rows, m.key_cache, state["lookahead_seq_lens"], ids, m.scale),
                )
                graph.call_function(torch.ops.aten.add_.Tensor, (state["lookahead"], scores))
            else:
                graph.call_function(
                    torch.ops.dustin.score_heads_into.default,
                    (state["lookahead"], rows, m.key_cache, state["lookahead_seq_lens"], list(heads), m.scale),
                )
        records.append(RewriteRecord(m.layer, m.node.name, "score tap", f"heads {list(heads)}"))
    return records


def _head_ids(gm: fx.GraphModule, layer: int, heads: tuple[int, ...], device: torch.device) -> str:
    """A constant int64 tensor of ``heads`` registered on ``gm`` (a graph constant once exported)."""
    name = f"dustin_score_heads_{layer}"
    gm.register_buffer(name, torch.tensor(list(heads), dtype=torch.long, device=device))
    return name
