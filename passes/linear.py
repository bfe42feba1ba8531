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
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.fx as fx
from torch.utils.weak import WeakIdKeyDictionary
from tqdm.auto import tqdm

from dustin.kernels import pack_weight
from dustin.kernels.linear import PACK_ROWS

from .rewrite import _fake_like

PACKED_PREFIX = "dustin_packed_"
MIN_GAIN = 1.10  # pack only where it is at least 10 % faster: a packed copy costs memory (1.2-7x the weight)
LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear, torch.ops.aten.linear.default)


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
    """One packed copy per weight tensor, shared by every graph that uses it, packed again if the weight changes."""

    def __init__(self) -> None:
        self._packed = WeakIdKeyDictionary()  # by identity: a tensor's == is elementwise

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        entry = self._packed.get(weight)
        if entry is None or entry[0] != weight._version:
            with torch.no_grad():
                entry = (weight._version, pack_weight(weight))
            self._packed[weight] = entry
        return entry[1]


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
    """

    def __init__(self, path: str | os.PathLike | None = None, force: str | None = None,
                 packed: PackedWeights | None = None, progress: bool = True) -> None:
        if force not in (None, "plain", "packed"):
            raise ValueError(f"LinearChooser.force must be None, 'plain' or 'packed', got {force!r}")
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
    packed placeholders it appended, and per node the choice made (for the pass report)."""

    weight_inputs: list[int]
    choices: dict[str, str]

    def inputs(self, args: tuple, store: PackedWeights) -> list[torch.Tensor]:
        return [store.get(args[i]) for i in self.weight_inputs]


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
    for node, w, b, weight, bias, fake_x, rows in found:
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
    graph.lint()
    gm.recompile()
    return result
