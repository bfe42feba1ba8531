"""Multi-row linear layers at the cost they should have: rewrite ``linear`` nodes into MKL's packed GEMM where that
is measured faster for the graph's row count.

Why: on x86 CPUs torch's ``F.linear`` for 4-16 rows takes MKL's skinny-M path, which runs far below both the
bandwidth and the compute limit: five rows through a 8960x1536 fp32 weight cost ~2.2x one row, so verifying
gamma + 1 = 5 tokens costs twice a plain decoding step and speculation cannot pay. The same product against a
weight packed once by ``cblas_sgemm_pack`` (``torch.ops.mkl._mkl_reorder_linear_weight`` / ``_mkl_linear``, what
Inductor itself emits for frozen fp32 linears) costs ~1.45x. Packing does not pay everywhere (1-3 rows, narrow
weights such as 256-row K/V projections, whose packed copy is ~7x their size), so ``LinearChooser`` times both
formulations per (weight shape, rows) on this machine and keeps the choice on disk; nothing is guessed. It times
every weight of that shape in the graph in turn (28 layers' worth streams from memory as a real step does; one
weight timed alone sits in the last-level cache and flatters the plain path).

One packed copy serves every row count (``_mkl_linear`` takes the rows of the call) and every graph of a model:
``PackedWeights`` keeps it per weight tensor and packs again when the weight changes in place (its ``_version``),
so an edited model never runs on stale packed weights. Packed weights enter a graph as extra inputs after the
driver's state (the backend appends them to each call), never as captured constants.

Sibling linears (the same input, e.g. an attention layer's q/k/v projections) whose weights together are small
(``FUSE_BYTES``) may run as one: their weights concatenated along the outputs, packed once, one GEMM, its output
split. Small products are where a multi-row call costs most over one row (per-call overhead: the 0.5B draft's
128x896 k/v projections ran 5 rows at 1.6x one row, alone); the chooser times the siblings as they would run apart
(each in its own chosen formulation) against the fused GEMM, back to back, and fuses only where that is faster. Only
the packed concatenation is kept (``kernels.linear.packed_linear_cat``), not a plain copy of it.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.fx as fx
from torch.utils.weak import WeakIdKeyDictionary
from tqdm.auto import tqdm

from dustin.kernels import pack_weight
from dustin.kernels.linear import PACK_ROWS, packed_linear_cat_reference

from .rewrite import _fake_like

PACKED_PREFIX = "dustin_packed_"
MIN_GAIN = 1.10  # pack only where it is at least 10 % faster: a packed copy costs memory (1.2-7x the weight)
LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear.default)
# Siblings are fused only while their weights together take at most this many bytes: the 1.5B target's q/k/v
# (12 MiB per layer in fp32) and the 0.5B draft's (4 MiB) qualify, the MLPs' gate/up (35-105 MiB) do not. A large
# product runs near its limit alone, and a fused packed copy is kept beside the members' own where another graph (a
# different row count) runs them apart: that must stay small.
FUSE_BYTES = 16 * 2**20


def packing_available() -> bool:
    """MKL's packed GEMM exists in this torch build (x86 CPU wheels)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def _machine_key() -> str:
    """Choices hold for one CPU, torch build and thread count: measured elsewhere, they are measured again."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|torch {torch.__version__}|threads {torch.get_num_threads()}|pack {PACK_ROWS}"


def median_ms(fn, repeats: int = 5) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``fn`` after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# How many of a group's weights one measurement runs through: enough bytes that they stream from memory as in a real
# step (more than any last-level cache), but no more work than needed once the product is compute-bound. Timing all
# 28 layers' weights at prefill sizes (4 x 512 rows) took 8 minutes on a fresh machine; one weight of that size
# reads each byte 2048 times, so whether it sat in the cache does not change its time.
TIMED_BYTES = 256 * 2**20
TIMED_FLOPS = 20e9


def timed_weights(weight: torch.Tensor, rows: int, available: int) -> int:
    """The number of weights shaped like ``weight`` to time in turn at ``rows`` rows (at least one, at most
    ``available``): until ``TIMED_BYTES`` are streamed or ``TIMED_FLOPS`` computed, whichever comes first."""
    size = weight.numel() * weight.element_size()
    flops = 2 * rows * weight.numel()
    return max(1, min(available, -(-TIMED_BYTES // size), -(-int(TIMED_FLOPS) // flops)))


class PackedWeights:
    """One packed copy per weight tensor, shared by every graph that uses it, packed again if the weight changes;
    likewise one packed concatenation (and concatenated bias) per group of fused sibling weights."""

    def __init__(self) -> None:
        self._packed = WeakIdKeyDictionary()  # by identity: a tensor's == is elementwise
        self._fused = WeakIdKeyDictionary()  # first weight of a group -> {group's tensors: (versions, packed, bias)}

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        entry = self._packed.get(weight)
        if entry is None or entry[0] != weight._version:
            with torch.no_grad():
                entry = (weight._version, pack_weight(weight))
            self._packed[weight] = entry
        return entry[1]

    def get_fused(self, weights: list[torch.Tensor],
                  biases: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(packed concatenation of ``weights`` along their outputs, concatenated ``biases`` or None), made again
        when any of them changed in place. Keyed by the first weight; the entry holds the group's other tensors (of
        the same model, so alive as long as that weight) and is matched by their identity."""
        tensors = [t for t in (*weights, *biases) if t is not None]
        groups = self._fused.setdefault(weights[0], {})
        key = tuple(id(t) for t in tensors)
        versions = tuple(t._version for t in tensors)
        entry = groups.get(key)
        if entry is None or entry[0] != versions or any(a is not b for a, b in zip(entry[1], tensors[1:])):
            with torch.no_grad():
                packed = pack_weight(torch.cat([w.detach() for w in weights]))
                bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
            entry = groups[key] = (versions, tuple(tensors[1:]), packed, bias)  # never the key itself: a weak key
        return entry[2], entry[3]


@dataclass(frozen=True)
class Timing:
    plain_ms: float
    packed_ms: float

    @property
    def choice(self) -> str:
        return "packed" if self.plain_ms >= MIN_GAIN * self.packed_ms else "plain"


class LinearChooser:
    """Which formulation each (dtype, out, in, bias, rows) linear runs, measured once on this machine.

    ``path``: a JSON file that keeps the measurements between processes (``None``: this process only).
    ``force``: ``"plain"`` / ``"packed"`` skips the measurement (tests; ``"packed"`` still needs eligibility).
    ``progress``: show a bar while ``pack_linears`` times shapes this machine has not measured yet.
    ``fuse``: ``None`` measures whether sibling linears run faster fused (module docstring); ``True`` / ``False``
    skips that measurement (tests). ``force="plain"`` fuses nothing.
    """

    def __init__(self, path: str | os.PathLike | None = None, force: str | None = None,
                 packed: PackedWeights | None = None, progress: bool = True, fuse: bool | None = None) -> None:
        if force not in (None, "plain", "packed"):
            raise ValueError(f"LinearChooser.force must be None, 'plain' or 'packed', got {force!r}")
        if fuse not in (None, True, False):
            raise ValueError(f"LinearChooser.fuse must be None, True or False, got {fuse!r}")
        self.fuse = fuse
        self.path, self.force = (Path(path) if path is not None else None), force
        self.packed = packed or PackedWeights()
        self.progress = progress  # a bar while timing shapes not measured on this machine yet
        self.machine = _machine_key()
        self.timings: dict[str, Timing] = {}
        self._load()

    def eligible(self, weight: torch.Tensor, x: torch.Tensor) -> bool:
        """Contiguous fp32 CPU weights with MKL; other dtypes, devices and layouts keep ``F.linear`` (not measured:
        left alone)."""
        return (packing_available() and weight.dim() == 2 and weight.dtype == torch.float32
                and x.dtype == torch.float32 and weight.device.type == "cpu" and x.device.type == "cpu"
                and not weight.is_mkldnn and weight.is_contiguous())  # MKL packs a plain row-major matrix

    def choose(self, weights: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None]) -> str:
        """The formulation for linears of ``weights``' shape (all of that shape in one graph) at ``rows`` rows."""
        if self.force is not None:
            return self.force
        if rows < 2:
            return "plain"  # one row streams the weight at the bandwidth limit already
        key = self._key(weights, rows, biases)
        if self.needs_measuring(weights, rows, biases):
            self.timings[key] = self._measure(weights, rows, biases)
            self._save()
        return self.timings[key].choice

    def needs_measuring(self, weights: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None]) -> bool:
        """``choose`` times this group now (nothing forced, several rows, not measured on this machine yet): the one
        statement of that rule, which ``pack_linears`` also asks to size its progress bar."""
        return self.force is None and rows >= 2 and self._key(weights, rows, biases) not in self.timings

    def choose_fused(self, groups: list[list[torch.Tensor]], rows: int, biases: list[list[torch.Tensor | None]],
                     apart: list[str]) -> bool:
        """Whether sibling linears run fused at ``rows`` rows: ``groups`` holds every group of one signature in the
        graph (one per layer: its members' weights in order), ``biases`` theirs, ``apart`` each member's own
        formulation (what runs if they are not fused). Fused where the fused GEMM measured faster than the members
        apart: its packed copy is small (FUSE_BYTES), so any gain counts."""
        if self.force == "plain" or rows < 2:
            return False
        if self.fuse is not None:
            return self.fuse
        key = self._fused_key(groups[0], rows, biases[0], apart)
        if key not in self.timings:
            self.timings[key] = self._measure_fused(groups, rows, biases, apart)
            self._save()
        timing = self.timings[key]
        return timing.plain_ms > timing.packed_ms

    def needs_measuring_fused(self, group: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None],
                              apart: list[str]) -> bool:
        """``choose_fused`` times this signature now (what ``pack_linears`` counts for its progress bar)."""
        return (self.force != "plain" and self.fuse is None and rows >= 2
                and self._fused_key(group, rows, biases, apart) not in self.timings)

    def _fused_key(self, group: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None],
                   apart: list[str]) -> str:
        shapes = "+".join(f"{w.shape[0]}x{w.shape[1]}" for w in group)
        return (f"{self.machine}|{group[0].dtype}|fused {shapes}|apart {'+'.join(apart)}|"
                f"bias={biases[0] is not None}|rows={rows}")

    def _measure_fused(self, groups: list[list[torch.Tensor]], rows: int, biases: list[list[torch.Tensor | None]],
                       apart: list[str]) -> Timing:
        """Timing(members apart, each in its own formulation; fused) per group, over as many groups as
        ``timed_weights`` asks for a weight of the concatenation's size."""
        out_features = sum(w.shape[0] for w in groups[0])
        shape = torch.empty(out_features, groups[0][0].shape[1], dtype=groups[0][0].dtype, device="meta")
        count = timed_weights(shape, rows, len(groups))
        groups, biases = groups[:count], biases[:count]
        x = torch.randn(rows, shape.shape[1], dtype=shape.dtype)
        with torch.no_grad():
            packs = [[pack_weight(w) if how == "packed" else None for w, how in zip(ws, apart)] for ws in groups]
            fused = [(pack_weight(torch.cat(ws)), torch.cat(bs) if bs[0] is not None else None)
                     for ws, bs in zip(groups, biases)]

            def separate():
                for ws, ps, bs in zip(groups, packs, biases):
                    for w, pk, b in zip(ws, ps, bs):
                        if pk is None:
                            torch.nn.functional.linear(x, w, b)
                        else:
                            torch.ops.mkl._mkl_linear(x, pk, w, b, rows)

            def together():
                for pk, b in fused:
                    packed_linear_cat_reference(x, pk, b, out_features)

            return Timing(median_ms(separate) / len(groups), median_ms(together) / len(groups))

    def _key(self, weights: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None]) -> str:
        weight = weights[0]
        return f"{self.machine}|{weight.dtype}|{tuple(weight.shape)}|bias={biases[0] is not None}|rows={rows}"

    def _measure(self, weights: list[torch.Tensor], rows: int, biases: list[torch.Tensor | None]) -> Timing:
        count = timed_weights(weights[0], rows, len(weights))
        weights, biases = weights[:count], biases[:count]
        x = torch.randn(rows, weights[0].shape[1], dtype=weights[0].dtype)
        packed = [pack_weight(w) for w in weights]  # temporary: the store keeps a copy only if packing wins
        with torch.no_grad():
            def plain():
                for w, b in zip(weights, biases):
                    torch.nn.functional.linear(x, w, b)

            def fast():
                for w, p, b in zip(weights, packed, biases):
                    torch.ops.mkl._mkl_linear(x, p, w, b, rows)

            return Timing(median_ms(plain) / len(weights), median_ms(fast) / len(weights))

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text())
            self.timings = {k: Timing(*v) for k, v in raw.items() if k.startswith(self.machine + "|")}
        except (OSError, ValueError, TypeError):
            self.timings = {}  # a damaged file is measured again, never trusted

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            raw = {}
        raw.update({k: [t.plain_ms, t.packed_ms] for k, t in self.timings.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(raw, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: a reader sees the old file or the new one


@dataclass
class PackedLinears:
    """What ``pack_linears`` did to a graph: the input positions of the weights it packed, in the order of the
    packed placeholders it appended; then per fused group the input positions of its weights and biases (None: no
    bias), whose packed concatenation (and concatenated bias) follow as placeholders; and per node the choice made
    (for the pass report: "plain", "packed" or "fused")."""

    weight_inputs: list[int]
    choices: dict[str, str]
    fused_inputs: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Whether the graph takes any extra input."""
        return bool(self.weight_inputs or self.fused_inputs)

    def inputs(self, args: tuple, store: PackedWeights) -> list[torch.Tensor]:
        out = [store.get(args[i]) for i in self.weight_inputs]
        for weights, biases in self.fused_inputs:
            packed, bias = store.get_fused([args[i] for i in weights],
                                           [args[i] for i in biases] if biases else [None] * len(weights))
            out += [packed, bias] if bias is not None else [packed]
        return out


class _Linear(NamedTuple):
    """One eligible ``linear`` node: its weight/bias placeholders and tensors, its input's fake value, its rows."""

    node: fx.Node
    w: fx.Node
    b: fx.Node | None
    weight: torch.Tensor
    bias: torch.Tensor | None
    fake_x: torch.Tensor
    rows: int

    @property
    def key(self) -> tuple:
        return tuple(self.weight.shape), self.bias is not None, self.rows


def _value(node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def _group_args(items: list[_Linear]) -> tuple[list[torch.Tensor], int, list[torch.Tensor | None]]:
    """A group's distinct weights, its rows and their biases: what ``LinearChooser.choose`` takes."""
    unique = list({id(i.weight): i for i in items}.values())
    return [i.weight for i in unique], unique[0].rows, [i.bias for i in unique]


def pack_linears(gm: fx.GraphModule, example_inputs: list, chooser: LinearChooser,
                 opaque: bool = False) -> PackedLinears:
    """Rewrite each eligible ``linear(x, W, b)`` whose weight is a graph input into ``x.reshape(M, in)`` →
    ``mkl._mkl_linear`` → reshape back (``opaque``: one ``dustin::packed_linear`` call, for Inductor), where
    ``chooser`` picks the packed form for M = rows. Appends one placeholder per packed weight (after every existing
    input). Mutates ``gm``."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    position = {n: i for i, n in enumerate(placeholders)}
    result = PackedLinears([], {})
    packed_node: dict[fx.Node, fx.Node] = {}
    anchor = placeholders[-1] if placeholders else None
    found: list[_Linear] = []  # every eligible linear
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in LINEAR_TARGETS:
            continue
        x, w = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if w not in position or position[w] >= len(example_inputs) or (b is not None and b not in position):
            continue  # only weights the caller hands in at each call (nn.Module parameters under dynamo)
        weight, fake_x = example_inputs[position[w]], _value(x)
        if not isinstance(weight, torch.Tensor) or fake_x is None or not chooser.eligible(weight, fake_x):
            continue
        rows = fake_x.numel() // fake_x.shape[-1] if fake_x.shape[-1] else 0
        bias = example_inputs[position[b]] if b is not None else None
        found.append(_Linear(node, w, b, weight, bias, fake_x, rows))
    groups: dict[tuple, list[_Linear]] = {}  # one measurement per (shape, bias, rows), over every weight of that group
    for item in found:
        groups.setdefault(item.key, []).append(item)
    choices = {}
    group_args = {key: _group_args(items) for key, items in groups.items()}
    pending = {key for key, args in group_args.items() if chooser.needs_measuring(*args)}
    # Timing every (shape, rows) group takes seconds to minutes the first time on a machine (then it is cached).
    with tqdm(total=len(pending), desc="time linear formulations (once per machine)", unit="shape",
              disable=not pending or not chooser.progress) as bar:
        for key, args in group_args.items():
            choices[key] = chooser.choose(*args)
            bar.update(key in pending)
    fused = _fused_siblings(found, chooser, {i.node: choices[i.key] for i in found})
    in_fused = {i.node for group in fused for i in group}
    for node, w, b, weight, bias, fake_x, rows in found:
        if node in in_fused:
            continue
        x = node.args[0]  # read now: an earlier rewrite may have replaced this linear's input node
        choice = choices[(tuple(weight.shape), bias is not None, rows)]
        result.choices[node.name] = choice
        if choice != "packed":
            continue
        if w not in packed_node:
            with graph.inserting_after(anchor):
                packed_node[w] = anchor = graph.placeholder(f"{PACKED_PREFIX}{len(result.weight_inputs)}")
            packed_node[w].meta["val"] = _fake_like(chooser.packed.get(weight), placeholders)
            packed_node[w].meta["example_value"] = packed_node[w].meta["val"]
            result.weight_inputs.append(position[w])
        out_features = weight.shape[0]
        with graph.inserting_before(node):
            if opaque:
                shaped = graph.call_function(torch.ops.dustin.packed_linear.default, (x, packed_node[w], w, b))
            else:
                flat = graph.call_function(torch.reshape, (x, (rows, fake_x.shape[-1])))
                product = graph.call_function(torch.ops.mkl._mkl_linear.default,
                                              (flat, packed_node[w], w, b, rows))
                shaped = graph.call_function(torch.reshape, (product, (*fake_x.shape[:-1], out_features)))
        shaped.meta.update({k: node.meta[k] for k in ("val", "example_value") if k in node.meta})
        node.replace_all_uses_with(shaped)
        graph.erase_node(node)
    order = {n: i for i, n in enumerate(graph.nodes)}
    for group in fused:
        tag = f"{PACKED_PREFIX}cat{len(result.fused_inputs)}"
        packed, bias = chooser.packed.get_fused([i.weight for i in group], [i.bias for i in group])
        inputs = []
        for name, value in ((tag, packed), (f"{tag}_bias", bias)):
            if value is not None:
                with graph.inserting_after(anchor):
                    anchor = graph.placeholder(name)
                anchor.meta["val"] = anchor.meta["example_value"] = _fake_like(value, placeholders)
                inputs.append(anchor)
        result.fused_inputs.append((tuple(position[i.w] for i in group),
                                    tuple(position[i.b] for i in group) if bias is not None else None))
        first = min((i.node for i in group), key=order.__getitem__)
        x, widths = first.args[0], [i.weight.shape[0] for i in group]  # x read now: see above
        op = torch.ops.dustin.packed_linear_cat.default if opaque else packed_linear_cat_reference
        with graph.inserting_before(first):
            product = graph.call_function(op, (x, inputs[0], inputs[1] if bias is not None else None, sum(widths)))
            parts = graph.call_function(torch.split, (product, widths, -1))
            for j, item in enumerate(group):
                part = graph.call_function(operator.getitem, (parts, j))
                part.meta.update({k: item.node.meta[k] for k in ("val", "example_value") if k in item.node.meta})
                item.node.replace_all_uses_with(part)
                result.choices[item.node.name] = "fused"
        for item in group:
            graph.erase_node(item.node)
    graph.lint()
    gm.recompile()
    return result


def _fused_siblings(found: list[_Linear], chooser: LinearChooser, apart: dict[fx.Node, str]) -> list[list[_Linear]]:
    """The groups of sibling linears to run fused: two or more linears of one input node (and rows), distinct
    weights, all with a bias or none, their weights together at most FUSE_BYTES; fused where ``chooser`` says so for
    their signature (member shapes, bias, rows, each member's formulation ``apart``), asked once per signature with
    every group of it."""
    siblings: dict[tuple, list[_Linear]] = {}
    for item in found:
        siblings.setdefault((item.node.args[0], item.rows, item.bias is not None), []).append(item)
    candidates: dict[tuple, list[list[_Linear]]] = {}
    for group in siblings.values():
        size = sum(i.weight.numel() * i.weight.element_size() for i in group)
        if len(group) < 2 or len({id(i.weight) for i in group}) < len(group) or size > FUSE_BYTES:
            continue
        signature = (tuple(i.key for i in group), tuple(apart[i.node] for i in group))
        candidates.setdefault(signature, []).append(group)
    pending = {sig for sig, g in candidates.items()
               if chooser.needs_measuring_fused([i.weight for i in g[0]], g[0][0].rows, [i.bias for i in g[0]],
                                                list(sig[1]))}
    fused = []
    with tqdm(total=len(pending), desc="time fused sibling linears (once per machine)", unit="group",
              disable=not pending or not chooser.progress) as bar:
        for signature, groups in candidates.items():
            if chooser.choose_fused([[i.weight for i in g] for g in groups], groups[0][0].rows,
                                    [[i.bias for i in g] for g in groups], list(signature[1])):
                fused += groups
            bar.update(signature in pending)
    return fused
