"""``verify_graph``: check a rewritten graph before it is handed to the compiler."""

from __future__ import annotations

import torch
import torch.fx as fx

from .errors import PassError

from .match import SDPA_TARGETS, node_value
from .rewrite import is_impure

DUSTIN_ATTENTION = ("dustin::sparse_attention", "dustin::dense_attention")


def _as_meta(node: fx.Node) -> torch.Tensor:
    value = node_value(node)
    if value is None:
        raise PassError(f"verify_graph: node {node.name} has no recorded shape")
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def _fake_run(node: fx.Node) -> torch.Tensor:
    """Run the replacement's fake (meta) implementation on meta copies of its inputs' recorded values: a fresh
    evaluation, independent of the fake mode that recorded the graph."""
    return node.target(*fx.node.map_arg(node.args, _as_meta))


def verify_graph(gm: fx.GraphModule, before: dict[str, tuple[torch.Size, torch.dtype]], pass_name: str) -> None:
    """Lint; every replaced node's fake output equals the original's shape/dtype; no matched SDPA survives; no
    stray (unused, pure) nodes. ``before`` maps each replaced SDPA node's name to its recorded (shape, dtype)."""
    try:
        gm.graph.lint()
    except Exception as exc:  # lint raises plain RuntimeErrors
        raise PassError(f"{pass_name}: graph fails lint after rewriting: {exc}") from exc
    names = {n.name for n in gm.graph.nodes}
    for name in before:
        if name in names and any(n.name == name and n.target in SDPA_TARGETS for n in gm.graph.nodes):
            raise PassError(f"{pass_name}: matched attention node {name} survived the rewrite")
    for node in gm.graph.nodes:
        if isinstance(node.target, torch._ops.OpOverload) and node.target.name() in DUSTIN_ATTENTION:
            original = node.meta.get("dustin_replaced")
            if original is None or original not in before:
                continue
            shape, dtype = before[original]
            out = _fake_run(node)
            if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
                raise PassError(
                    f"{pass_name}: node {node.name} (replacing {original}) gives {tuple(out.shape)} {out.dtype}, "
                    f"the original gave {tuple(shape)} {dtype}"
                )
        if node.op not in ("placeholder", "output") and not node.users and not is_impure(node):
            raise PassError(f"{pass_name}: stray node {node.name} ({node.target}) has no users after clean-up")
