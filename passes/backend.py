"""The torch.compile backend: run dustin's passes on the dynamo graph, then hand it to Inductor (or run it as is).

Driver-owned state (``indices``, tap buffers) becomes extra graph inputs; ``state_source`` is called at
every invocation, so a graph compiled once serves every workspace (batch size / cache) of matching shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.fx as fx

from .errors import PassError
from .linear import LinearChooser, pack_linears
from .match import find_attention, layer_of, node_value
from .report import PassReport
from .rewrite import EXPORT_OPS, RewritePlan, RewriteRecord, add_state_inputs, clean_up, rewrite_attention
from .taps import insert_taps
from .verify import verify_graph

StateSource = Callable[[], dict[str, torch.Tensor]]
NO_MATCH_HINT = (
    "no attention call matched: load the model with attn_implementation='sdpa' "
    "(e.g. AutoModelForCausalLM.from_pretrained(path, attn_implementation='sdpa')), "
    "or pass strict=False to run this graph without dustin's attention"
)

# Every decline is about the mask: the usual cause is a stock transformers cache driven by transformers' own masks.
STOCK_CACHE_HINT = (
    "hint: the attention masks are not dustin's causal_mask. dustin's graphs take a per-row-position cache written at "
    "explicit positions (dustin.cache.RowCache) and the mask built by dustin.kernels.causal_mask(seq_lens, rows, "
    "capacity, window); re-running a step at the same position is then idempotent. transformers' stock caches "
    "(StaticCache, DynamicCache) keep their own length and build their own masks, so dustin cannot prove a rewrite "
    "of them exact and refuses it. Use dustin.compile(target, draft), or build steps as dustin_compile/steps.py does "
    "(docs/design.md, 'The state contract')"
)


def run_passes(gm: fx.GraphModule, plan: RewritePlan, state: dict[str, torch.Tensor], name: str,
               strict: bool = True) -> PassReport:
    """find → add state inputs → taps → rewrite → clean up → verify. Mutates ``gm``; returns the report."""
    matches, declined = find_attention(gm)
    report = PassReport(name)
    report.records += [RewriteRecord(layer_of(n, -1), n.name, "declined", why) for n, why in declined]
    if strict and plan.attention != "keep":
        if declined:
            hint = "\n" + STOCK_CACHE_HINT if all(why.startswith("unsupported mask") for _, why in declined) else ""
            raise PassError(f"{name}: some attention calls cannot be rewritten\n{report.table()}{hint}")
        if not matches:
            raise PassError(f"{name}: {NO_MATCH_HINT}\n{report.table()}")
    replaced = matches if plan.attention != "keep" else []
    before = {m.node.name: (node_value(m.node).shape, node_value(m.node).dtype) for m in replaced}
    nodes = add_state_inputs(gm, {k: state[k] for k in plan.state_names()})
    report.records += insert_taps(gm, matches, plan, nodes)
    report.records += rewrite_attention(gm, matches, plan, nodes).records
    clean_up(gm)
    verify_graph(gm, before, name)
    if plan.portable:
        _check_portable(gm, name)
    if os.environ.get("DUSTIN_DEBUG_GRAPHS"):
        path = os.path.join(os.environ["DUSTIN_DEBUG_GRAPHS"], f"{name}.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(gm.code)
    return report


def _check_portable(gm: fx.GraphModule, name: str) -> None:
    """A graph meant for export holds no dustin op outside ``EXPORT_OPS`` (plain schemas, nothing mutated)."""
    allowed = {op.name() for op in EXPORT_OPS}  # by name: an op overload object may be looked up anew
    stray = sorted({n.target.name() for n in gm.graph.nodes if n.op == "call_function"
                    and isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "dustin"
                    and n.target.name() not in allowed})
    if stray:
        raise PassError(f"{name}: a portable graph must hold only {sorted(allowed)}; found {stray}")


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """Same root (attributes), a copied graph; node metadata is copied shallowly (fake values are shared)."""
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    return fx.GraphModule(gm, graph)


class DustinBackend:
    """``torch.compile(fn, backend=DustinBackend(plan, state_source))``.

    inductor: compile the rewritten graph with Inductor (config patched only in scope); else run the FX graph as is
    (the rewrite without code generation: seconds to capture instead of tens of seconds to compile).
    linear: a ``LinearChooser``: multi-row linears run MKL's packed GEMM where it measures faster (linear.py); the
    packed weights are appended to each call after the state. ``None`` leaves every linear as traced.
    """

    def __init__(self, plan: RewritePlan, state_source: StateSource, *, name: str, inductor: bool,
                 strict: bool = True, linear: LinearChooser | None = None) -> None:
        self.plan, self.state_source, self.name = plan, state_source, name
        self.inductor, self.strict, self.linear = inductor, strict, linear
        self.reports: list[PassReport] = []
        self.graph_modules: list[fx.GraphModule] = []  # the rewritten graphs, for inspection

    def __call__(self, gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        names = self.plan.state_names()
        state = self.state_source()
        gm = copy_graph_module(gm)  # dynamo still reads the graph it handed us: rewrite a copy
        self.reports.append(run_passes(gm, self.plan, state, self.name, self.strict))
        packed = None
        if self.linear is not None and not self.plan.portable:
            packed = pack_linears(gm, example_inputs, self.linear, opaque=self.inductor)
            self.reports[-1].linears = packed.choices
        self.graph_modules.append(gm)
        compiled: Callable = gm
        if self.inductor:
            from torch._inductor import config as inductor_config
            from torch._inductor.compile_fx import compile_fx

            extra = packed.inputs(tuple(example_inputs), self.linear.packed) if packed else []
            with inductor_config.patch({"fx_graph_cache": True}):
                compiled = compile_fx(gm, list(example_inputs) + [state[k] for k in names] + extra)
        source = self.state_source
        if packed:
            store = self.linear.packed

            def run(*args):
                current = source()
                return compiled(*args, *(current[k] for k in names), *packed.inputs(args, store))
        else:
            def run(*args):
                current = source()
                return compiled(*args, *(current[k] for k in names))

        return run
