"""Find the attention calls of an FX graph (``find_attention``); never mutates the graph.

We match the one SDPA op, not the math (Inductor's fuse_attention needs 18 decomposed patterns because it matches
math). The variants a Hugging Face causal LM emits are normalised here in one place:

| level  | op                                               | K/V form                                  |
|--------|--------------------------------------------------|-------------------------------------------|
| dynamo | ``torch._C._nn.scaled_dot_product_attention``,   | ``repeat_kv``: x[:, :, None].expand().reshape() |
|        | ``F.scaled_dot_product_attention``               | or the cache itself (no GQA / enable_gqa) |
| export | ``aten.scaled_dot_product_attention.default``    | unsqueeze/expand/clone/view chains        |

Masks: only an SDPA call whose mask is the output of ``dustin::causal_mask(seq_lens, T, S, window)`` is matched —
the driver's own mask, whose meaning (row t sees positions <= seq_lens + t, and > seq_lens + t - window) is exactly
what ``dense_attention`` computes. The match records that op's ``seq_lens`` input and window, so the rewrite is
equivalent by construction. Any other mask (a padding mask, a hand-made window, a random one, a float bias) and
``is_causal=True`` are declined with a reason: the pass never replaces a mask it cannot prove.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

import torch
import torch.fx as fx

import dustin.kernels  # noqa: F401  (registers torch.ops.dustin.*)

SDPA_TARGETS = {
    torch._C._nn.scaled_dot_product_attention: "dynamo",
    torch.nn.functional.scaled_dot_product_attention: "dynamo",
    torch.ops.aten.scaled_dot_product_attention.default: "export",
}
# Fused CPU/CUDA SDPA variants return (out, logsumexp, ...): we decline them, naming why, rather than miss them.
FUSED_SDPA_TARGETS = {
    getattr(torch.ops.aten, name)  # packets: dynamo records the packet, post-grad graphs the .default overload
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
}
CAUSAL_MASK = "dustin::causal_mask"  # the driver's mask (dustin.kernels.causal_mask)
SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
# Ops through which an un-repeated cache may flow into SDPA without changing its values.
_VIEW_METHODS = {"expand", "reshape", "view", "contiguous", "clone", "unsqueeze"}
_VIEW_ATEN = {
    torch.ops.aten.expand.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.view.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.clone.default,
    torch.ops.aten.unsqueeze.default,
    torch.ops.aten.alias.default,
}
# In-place (dynamo) and functional (export) cache writes: the written cache is still "the cache".
_CACHE_WRITES = {"scatter_", "index_copy_", "copy_", "index_put_"}
_CACHE_WRITE_OPS = {
    torch.ops.aten.scatter.src,
    torch.ops.aten.scatter_.src,
    torch.ops.aten.index_copy.default,
    torch.ops.aten.index_copy_.default,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
}
_LAYER_RE = re.compile(r"layers?[\._\[]+(\d+)")


@dataclass
class AttentionMatch:
    """One SDPA call, normalised. ``key_cache``/``value_cache`` are the un-repeated ``[B, Hkv, S, D]`` tensors."""

    node: fx.Node
    query: fx.Node
    key_cache: fx.Node
    value_cache: fx.Node
    mask: fx.Node  # the dustin::causal_mask node
    seq_lens: fx.Node  # its seq_lens input: where each sequence's query rows start
    window: int  # its sliding window (0 = none)
    scale: float  # the SDPA's scale, or its default 1/sqrt(D): the dustin ops take a plain float
    level: str  # "dynamo" or "export"
    layer: int
    q_heads: int
    kv_heads: int
    rows: int  # query rows T
    cache_len: int  # S


def node_value(node: object) -> torch.Tensor | None:
    """The fake/example tensor dynamo or export recorded for a node, if any."""
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("val", node.meta.get("example_value"))
    return val if isinstance(val, torch.Tensor) else None


def sdpa_arguments(node: fx.Node) -> dict:
    """SDPA's arguments by name, defaults filled in; works for the dynamo and the aten signature alike."""
    bound = dict(SDPA_DEFAULTS)
    bound.update(zip(SDPA_PARAMS, node.args))
    bound.update(node.kwargs)
    return bound


def _is_method(node: fx.Node, names: set[str]) -> bool:
    return node.op == "call_method" and node.target in names


def _is_new_axis_2(node: fx.Node) -> bool:
    """``x[:, :, None]`` (repeat_kv's first step) or ``x.unsqueeze(2)``."""
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        index = node.args[1]
        return (
            isinstance(index, tuple)
            and len(index) >= 3
            and all(isinstance(s, slice) and s == slice(None) for s in index[:2])
            and index[2] is None
            and all(s == slice(None) or s is Ellipsis for s in index[3:])
        )
    if _is_method(node, {"unsqueeze"}) or node.target is torch.ops.aten.unsqueeze.default:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return dim == 2
    return False


def _is_view_like(node: fx.Node) -> bool:
    return _is_method(node, _VIEW_METHODS) or (node.op == "call_function" and node.target in _VIEW_ATEN)


def unrepeat(node: fx.Node) -> fx.Node:
    """Follow ``repeat_kv`` (new axis 2 → expand → reshape, plus clones/views) back to the un-repeated tensor.

    Returns ``node`` itself when it is not a repeat. The caller checks shapes: the source must be ``[B, Hkv, S, D]``.
    """
    current = node
    saw_new_axis = False
    for _ in range(8):  # repeat_kv is 3 ops; export adds clone/_unsafe_view
        if _is_new_axis_2(current):
            saw_new_axis = True
            current = current.args[0]
            break
        if not _is_view_like(current) or not isinstance(current.args[0], fx.Node):
            return node
        current = current.args[0]
    return current if saw_new_axis else node


def cache_root(node: fx.Node) -> fx.Node | None:
    """The graph input behind a K/V tensor: a placeholder/get_attr, possibly through an (in-place) cache write."""
    for _ in range(4):
        if node.op in ("placeholder", "get_attr"):
            return node
        written = _is_method(node, _CACHE_WRITES) or (node.op == "call_function" and node.target in _CACHE_WRITE_OPS)
        if not written or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return None


def layer_of(node: fx.Node, fallback: int) -> int:
    """Decoder layer index from dynamo's ``nn_module_stack`` (``...layers.3.self_attn``), else call order."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in reversed(list(stack.values())):
        found = _LAYER_RE.findall(str(path))
        if found:
            return int(found[-1])
    return fallback


def op_name(target: object) -> str | None:
    """``"namespace::name"`` of an op overload or packet (dynamo records packets, export overloads; packets are
    compared by name: the namespace may hand out a new packet object after more ops are registered)."""
    packet = getattr(target, "overloadpacket", target)
    return getattr(packet, "_qualified_op_name", None)


def _causal_mask(args: dict, rows: int, cache_len: int) -> fx.Node | str:
    """The ``dustin::causal_mask`` node masking this call, or why the mask is not provably the driver's."""
    mask = args["attn_mask"]
    if mask is None:
        why = "is_causal=True" if args["is_causal"] else "no mask (bidirectional attention)"
        return f"{why}: only attention masked by dustin's causal_mask op is rewritten"
    if args["is_causal"]:
        return "both a mask and is_causal=True"
    if not isinstance(mask, fx.Node) or mask.op != "call_function" or op_name(mask.target) != CAUSAL_MASK:
        value = node_value(mask)
        what = f"a {value.dtype} mask" if value is not None else "a mask"
        if value is not None and value.dtype != torch.bool:
            what += " (additive/float masks, e.g. biases, are not rewritten)"
        origin = mask.name if isinstance(mask, fx.Node) else repr(mask)
        return (f"unsupported mask: {what} from `{origin}`, not dustin's causal_mask op: a padding, windowed or "
                "custom mask cannot be proven equivalent; build it with dustin.kernels.causal_mask(seq_lens, rows, "
                "capacity, window)")
    if len(mask.args) != 4 or mask.kwargs:
        return f"causal_mask called as {mask.format_node()}: expected (seq_lens, rows, capacity, window)"
    _, mask_rows, mask_capacity, _ = mask.args
    if (mask_rows, mask_capacity) != (rows, cache_len):
        return f"causal_mask for {mask_rows} rows x {mask_capacity} positions masks a {rows} x {cache_len} call"
    return mask


def _check_match(node: fx.Node, args: dict, order: int, level: str) -> AttentionMatch | str:
    """A match record, or the reason this SDPA call cannot be rewritten."""
    if args["dropout_p"] not in (0, 0.0):
        return f"dropout_p={args['dropout_p']} (only inference attention is rewritten)"
    q, k, v = args["query"], args["key"], args["value"]
    qv = node_value(q)
    if qv is None or qv.dim() != 4:
        return "query is not a 4-D tensor with recorded shape"
    k_src, v_src = unrepeat(k), unrepeat(v)
    kv, vv = node_value(k_src), node_value(v_src)
    if kv is None or vv is None or kv.dim() != 4 or kv.shape != vv.shape:
        return "key/value are not 4-D [B, Hkv, S, D] tensors of equal shape"
    if qv.shape[1] % kv.shape[1] or qv.shape[3] != kv.shape[3]:
        return f"query heads {qv.shape[1]} / head dim {qv.shape[3]} do not fit KV {tuple(kv.shape)}"
    if cache_root(k_src) is None or cache_root(v_src) is None:
        return "key/value do not come from a KV cache graph input (no static cache: prefill without cache?)"
    if args["scale"] is not None and not isinstance(args["scale"], (int, float)):
        return f"the softmax scale {args['scale']!r} is not a constant"
    mask = _causal_mask(args, qv.shape[2], kv.shape[2])
    if isinstance(mask, str):
        return mask
    return AttentionMatch(
        node=node, query=q, key_cache=k_src, value_cache=v_src, mask=mask, seq_lens=mask.args[0],
        window=int(mask.args[3]), scale=_scale(args["scale"], qv.shape[3]), level=level, layer=layer_of(node, order),
        q_heads=qv.shape[1], kv_heads=kv.shape[1], rows=qv.shape[2], cache_len=kv.shape[2],
    )


def _scale(scale: object, head_dim: int) -> float:
    """SDPA's softmax scale as a float (None means 1/sqrt(D), as in SDPA)."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def find_attention(gm: fx.GraphModule) -> tuple[list[AttentionMatch], list[tuple[fx.Node, str]]]:
    """Every attention call of ``gm``: match records, and ``(node, reason)`` for each one declined."""
    matches: list[AttentionMatch] = []
    declined: list[tuple[fx.Node, str]] = []
    order = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if getattr(node.target, "overloadpacket", node.target) in FUSED_SDPA_TARGETS:
            used = [u for u in node.users if not (u.target is operator.getitem and u.args[1] == 0)]
            reason = "uses the fused kernel's logsumexp/auxiliary outputs" if used else "fused SDPA variant (post-grad)"
            declined.append((node, reason))
            order += 1
            continue
        level = SDPA_TARGETS.get(node.target)
        if level is None:
            continue
        result = _check_match(node, sdpa_arguments(node), order, level)
        order += 1
        if isinstance(result, str):
            declined.append((node, result))
        else:
            matches.append(result)
    return matches, declined
