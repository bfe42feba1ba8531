"""``dustin.export_tensorrt``: the exported step programs compiled to TensorRT engines (Torch-TensorRT 2.14).

Per program: ``cache_io.explicit_io`` (the cache writes become outputs: Torch-TensorRT drops user-input mutations),
``kernels.lowering.lower`` (every dustin op decomposed into core ATen, which TensorRT converts with its own layers;
on TensorRT-RTX plugins are off, so this is the path), then Torch-TensorRT's lowering and partitioning, and the
engines. An ATen op that still fails to convert is added to ``torch_executed_ops`` (runs in PyTorch) with a warning
naming it. The report says, per dustin op, how much of it landed in TensorRT blocks.

Without CUDA, ``allow_cpu_build=True`` runs the CPU build check: the same lowering and partitioning, every TensorRT
network built and its engine serialised (TensorRT-RTX builds ahead of time without a GPU), nothing run. It patches
``torch.cuda.get_device_capability`` and ``torch.cuda.current_device`` for the process before importing
``torch_tensorrt``, which asks the GPU for them at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import re
import time
import warnings
from collections import Counter
from typing import Any

import torch

from dustin.kernels.lowering import lower

from .cache_io import ExplicitOutput, explicit_io

_INSTALL = (
    "dustin.export_tensorrt needs Torch-TensorRT 2.14 (torch 2.14). On a CUDA machine: `pip install torch==2.14.1 "
    "torch-tensorrt-rtx==2.14.0` (TensorRT-RTX, installs from PyPI); the standard `torch-tensorrt` wheel pulls its "
    "TensorRT libraries from NVIDIA's own package index, which must then be reachable. Without a GPU, `make "
    "test-tensorrt` builds a separate venv (.venv-trt, scripts/tensorrt/setup-venv.sh) and runs the CPU build check."
)
_CAPABILITY = (8, 9)  # what the patched torch.cuda reports in a CPU build (Ada): any TensorRT-RTX target would do
_NOT_SETTINGS = {"exported_program", "inputs", "arg_inputs", "kwarg_inputs", "dryrun", "kwargs"}
_RETRIES = 8


def import_torch_tensorrt(allow_cpu_build: bool = False):
    """``torch_tensorrt``, imported. Without CUDA this raises unless ``allow_cpu_build``; then the two CUDA queries
    it makes at import are patched for this process (build-only: an engine cannot run)."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        raise ImportError(_INSTALL)
    if not torch.cuda.is_available():
        if not allow_cpu_build:
            raise RuntimeError(
                "dustin.export_tensorrt: no CUDA device. TensorRT engines run on NVIDIA GPUs; pass "
                "allow_cpu_build=True to only build and serialise the engines on this machine (a build check)")
        torch.cuda.get_device_capability = lambda *args, **kwargs: _CAPABILITY
        torch.cuda.current_device = lambda: 0
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise ImportError(f"{_INSTALL}\n(import failed: {exc})") from exc
    return torch_tensorrt


@dataclasses.dataclass
class ProgramReport:
    """One program: inputs and outputs (the contract, see ``cache_io``), where its nodes run, its engines.

    ``ops``: per dustin op (by its origin in the exported graph), ``{"instances", "instances_in_trt", "trt_nodes",
    "torch_nodes"}``; an instance is in TensorRT when every node of its lowering is. ``torch_nodes``: ATen targets of
    the nodes run in PyTorch, with counts. ``layers``: per engine, the layer names (the engine inspector's on a GPU,
    the network's on a CPU build); ``input_shapes``: (shape, dtype) per input, static."""

    role: str
    inputs: list[str]
    input_shapes: list[tuple[list[int], str]]
    outputs: list[ExplicitOutput]
    ops: dict[str, dict[str, int]]
    torch_nodes: dict[str, int]
    engine_bytes: list[int]
    layers: list[list[str]]
    torch_executed_ops: list[str]
    full_copies: list[str]
    seconds: float
    module: Any = dataclasses.field(default=None, repr=False)  # the compiled module (GPU only)
    engines: list[bytes] = dataclasses.field(default_factory=list, repr=False)  # serialised engines (CPU build)

    def summary(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("module", "engines")}
        out["outputs"] = [dataclasses.asdict(o) for o in self.outputs]
        return out


@dataclasses.dataclass
class TensorRTReport:
    """``programs`` by role; ``built_on``: ``"cuda"`` (engines built and loaded) or ``"cpu-build"`` (built and
    serialised only); ``path``: where they were saved, if anywhere."""

    programs: dict[str, ProgramReport]
    built_on: str
    path: str | None = None

    def __str__(self) -> str:
        lines = [f"TensorRT ({self.built_on})" + (f", saved under {self.path}" if self.path else "")]
        for role, p in self.programs.items():
            size = sum(p.engine_bytes) / 2**20
            lines.append(f"  {role}: {len(p.engine_bytes)} engine(s), {size:.2f} MiB, "
                         f"{sum(len(x) for x in p.layers)} layers, {p.seconds:.1f} s")
            for op, c in sorted(p.ops.items()):
                lines.append(f"    {op}: {c['instances_in_trt']}/{c['instances']} in TensorRT "
                             f"({c['trt_nodes']} nodes; {c['torch_nodes']} in PyTorch)")
            if p.torch_nodes:
                lines.append(f"    in PyTorch: {dict(p.torch_nodes)}")
            if p.full_copies:
                lines.append(f"    copied whole in the engine (a score tap reads them after the write): "
                             f"{p.full_copies}")
        return "\n".join(lines)


def _origin(node: torch.fx.Node) -> tuple[str, str] | None:
    """(dustin op, its node name) that ``node`` was decomposed from, via the nodes' provenance (``from_node``)."""
    todo = list(node.meta.get("from_node", []))
    while todo:
        source = todo.pop(0)
        if str(source.target).startswith("dustin."):
            return "dustin::" + str(source.target).split(".")[1], source.name
        todo.extend(source.from_node)
    return None


def _placement(partitioned: torch.fx.GraphModule) -> tuple[dict, dict]:
    """Per dustin op: instances, instances wholly in TensorRT, nodes in / out; ATen targets run in PyTorch."""
    where: dict[tuple[str, str], Counter] = {}
    in_torch: Counter = Counter()

    def visit(gm: torch.fx.GraphModule, trt: bool) -> None:
        for node in gm.graph.nodes:
            if node.op == "call_module":
                visit(gm.get_submodule(node.target), "_run_on_acc" in node.target)
            elif node.op == "call_function" and node.target.__module__ != "_operator":  # getitem: plumbing
                origin = _origin(node)
                if origin:
                    where.setdefault(origin, Counter())["trt" if trt else "torch"] += 1
                if not trt:
                    in_torch[str(node.target)] += 1

    visit(partitioned, False)
    ops: dict[str, dict[str, int]] = {}
    for (op, _), count in where.items():
        entry = ops.setdefault(op, dict(instances=0, instances_in_trt=0, trt_nodes=0, torch_nodes=0))
        entry["instances"] += 1
        entry["instances_in_trt"] += count["torch"] == 0
        entry["trt_nodes"] += count["trt"]
        entry["torch_nodes"] += count["torch"]
    return ops, dict(in_torch)


def _failed_target(exc: BaseException, node: torch.fx.Node | None = None):
    """The ATen op whose conversion raised ``exc`` (the node being converted, or the ``target=`` of fx's
    'While executing' note), or None."""
    if node is not None and isinstance(node.target, torch._ops.OpOverload):
        return node.target
    text = " ".join([str(exc), *getattr(exc, "__notes__", [])])
    found = re.search(r"target=(?:torch\.ops\.)?aten\.(\w+)\.(\w+)", text)
    if found:
        return getattr(getattr(torch.ops.aten, found.group(1)), found.group(2), None)
    return None


def _settings(torch_tensorrt, settings: dict) -> dict:
    accepted = set(inspect.signature(torch_tensorrt.dynamo.compile).parameters) - _NOT_SETTINGS
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise TypeError(f"export_tensorrt: {unknown} are not settings of torch_tensorrt {torch_tensorrt.__version__}'s "
                        "dynamo.compile (precision follows the program's dtypes: TensorRT-RTX networks are strongly "
                        "typed, there is no enabled_precisions)")
    return {"min_block_size": 1, **settings}


def _input_specs(torch_tensorrt, program: torch.export.ExportedProgram) -> list:
    user = {s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"}
    return [torch_tensorrt.Input(shape=tuple(n.meta["val"].shape), dtype=n.meta["val"].dtype)
            for n in program.graph.nodes if n.op == "placeholder" and n.name in user]


def _partition(torch_tensorrt, program, specs, settings: dict):
    """Torch-TensorRT's own lowering and partitioning (``dryrun``: no engine), and the settings it used."""
    from torch_tensorrt.dynamo.conversion._ConverterRegistry import DYNAMO_CONVERTERS

    with contextlib.redirect_stdout(io.StringIO()):  # the dry run prints its statistics
        partitioned = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, dryrun=True, **settings)
    return partitioned, dataclasses.replace(DYNAMO_CONVERTERS.compilation_settings, dryrun=False)


def _serialise_blocks(partitioned: torch.fx.GraphModule, compilation_settings) -> tuple[list[bytes], list[list[str]]]:
    """Build every TensorRT block's network and serialise its engine without running it (the CPU build check)."""
    from torch_tensorrt.dynamo import partitioning
    from torch_tensorrt.dynamo.conversion._conversion import infer_module_output_dtypes
    from torch_tensorrt.dynamo.conversion._TRTInterpreter import TRTInterpreter

    engines, layers = [], []
    for name, block in partitioned.named_children():
        if "_run_on_acc" not in name:
            continue
        inputs = partitioning.construct_submodule_inputs(block)
        dtypes = infer_module_output_dtypes(block, truncate_double=compilation_settings.truncate_double)
        interpreter = TRTInterpreter(block, inputs, output_dtypes=dtypes, compilation_settings=compilation_settings)
        try:
            interpreter._construct_trt_network_def()
        except Exception as exc:
            exc.dustin_node = getattr(interpreter, "_cur_node", None)
            raise
        config = interpreter._populate_trt_builder_config()
        serialised = interpreter.builder.build_serialized_network(interpreter.ctx.net, config)
        if serialised is None:
            raise RuntimeError(f"TensorRT could not build the engine of {name} (build_serialized_network gave None)")
        network = interpreter.ctx.net
        engines.append(bytes(serialised))
        layers.append([network.get_layer(i).name for i in range(network.num_layers)])
    return engines, layers


def _engine_layers(module: torch.fx.GraphModule) -> tuple[list[int], list[list[str]]]:
    """Engine sizes and the engine inspector's layer names of a compiled module's TensorRT blocks (GPU)."""
    sizes, layers = [], []
    for name, block in module.named_children():
        if "_run_on_acc" not in name:
            continue
        sizes.append(len(block.serialized_engine))
        try:
            info = json.loads(block.get_layer_info())
            layers.append([layer if isinstance(layer, str) else layer.get("Name", str(layer))
                           for layer in info.get("Layers", [])])
        except Exception as exc:  # the inspector is a diagnostic: never fail a built engine over it
            layers.append([f"<engine inspector unavailable: {exc!s:.120}>"])
    return sizes, layers


def _compile_program(torch_tensorrt, role: str, program, inputs: list[str] | None, settings: dict,
                     cpu_build: bool) -> ProgramReport:
    start = time.perf_counter()
    explicit = explicit_io(program, inputs)
    lowered = lower(explicit.program)
    specs = _input_specs(torch_tensorrt, lowered)
    executed = set(settings.pop("torch_executed_ops", ()) or ())
    for _ in range(_RETRIES):
        options = {**settings, "torch_executed_ops": set(executed)}
        try:
            partitioned, used = _partition(torch_tensorrt, lowered, specs, options)
            if cpu_build:
                module, (engines, layers) = None, _serialise_blocks(partitioned, used)
                sizes = [len(e) for e in engines]
            else:
                engines = []
                module = torch_tensorrt.dynamo.compile(lowered, arg_inputs=specs, **options)
                sizes, layers = _engine_layers(module)
            break
        except Exception as exc:
            target = _failed_target(exc, getattr(exc, "dustin_node", None))
            if target is None or target in executed:
                raise
            warnings.warn(f"dustin.export_tensorrt: {role}: TensorRT could not convert {target} ({exc!s:.200}); it "
                          "runs in PyTorch (torch_executed_ops)", stacklevel=3)
            executed.add(target)
    else:
        raise RuntimeError(f"{role}: still failing after {_RETRIES} ops were moved to PyTorch: "
                           f"{sorted(map(str, executed))}")
    ops, torch_nodes = _placement(partitioned)
    outside = {op: c["torch_nodes"] for op, c in ops.items() if c["torch_nodes"]}
    if outside:
        warnings.warn(f"dustin.export_tensorrt: {role}: nodes of {outside} run in PyTorch between TensorRT engines "
                      f"(ATen ops in PyTorch: {torch_nodes})", stacklevel=3)
    shapes = [(list(spec.shape), str(spec.dtype.to(torch.dtype)).removeprefix("torch.")) for spec in specs]
    return ProgramReport(role, explicit.inputs, shapes, explicit.outputs, ops, torch_nodes, sizes, layers,
                         sorted(map(str, executed)), explicit.full_copies, time.perf_counter() - start,
                         module, engines)


def _save(torch_tensorrt, report: TensorRTReport, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    for role, program in report.programs.items():
        if program.module is not None:
            example = [torch.zeros(shape, dtype=getattr(torch, dtype), device="cuda")
                       for shape, dtype in program.input_shapes]
            torch_tensorrt.save(program.module, os.path.join(path, f"{role}.ep"), arg_inputs=example)
        for i, engine in enumerate(program.engines):
            with open(os.path.join(path, f"{role}.{i}.engine"), "wb") as f:
                f.write(engine)
    with open(os.path.join(path, "tensorrt.json"), "w", encoding="utf-8") as f:
        json.dump({"built_on": report.built_on, "programs": {r: p.summary() for r, p in report.programs.items()}},
                  f, indent=1)


def export_tensorrt(model_or_bundle, example_input_ids: torch.Tensor | None = None, *, path: str | None = None,
                    programs: tuple[str, ...] | None = None, export_options: dict | None = None,
                    allow_cpu_build: bool = False, **settings) -> TensorRTReport:
    """Compile a ``DustinModel`` (exported first: ``dustin.export(model, example_input_ids, **export_options)``) or
    an ``ExportedDustin`` bundle to TensorRT; ``programs`` picks roles (default: all of the bundle's).

    ``settings`` go to ``torch_tensorrt.dynamo.compile`` (default ``min_block_size=1``; precision follows the
    program's dtypes, i.e. the model's). ``path``: on a GPU ``<role>.ep`` (``torch_tensorrt.save``) per program, on a
    CPU build the serialised engines ``<role>.<i>.engine``; both with ``tensorrt.json`` (the report below).

    **Contract of a compiled program** (Torch-TensorRT 2.14 does not keep writes into user inputs, so none are
    made; ``cache_io``): it takes the bundle's inputs in the manifest's order (``input_ids, position_ids, seq_lens``,
    the caches ``k_cache_i, v_cache_i``, the state such as ``dustin_indices``), all read only, and returns the
    program's own outputs (the logits) followed by, per written input in input order, ``report.programs[role]
    .outputs`` says which: ``rows`` (``[B, Hkv, T, D]``, the new K/V rows: the caller writes them at
    ``position_ids``, ``cache.scatter_(2, position_ids[:, None, :, None].expand_as(rows), rows)``) or ``value`` (the
    new tensor, e.g. ``dustin_query_record``: the caller copies it in). ``dustin.cache_io.write_back`` does both.
    It expects ``position_ids[b] == seq_lens[b] + arange(T)`` (the exporter's contract): the attention takes the
    new rows from the program itself and reads the cache only below ``seq_lens``.
    """
    torch_tensorrt = import_torch_tensorrt(allow_cpu_build)
    cpu_build = not torch.cuda.is_available()
    bundle = model_or_bundle
    if not hasattr(bundle, "programs"):  # a DustinModel: export it first
        from .exporter import export

        if example_input_ids is None:
            raise ValueError("export_tensorrt(model, example_input_ids): a DustinModel is exported first, which needs "
                             "example_input_ids (or pass an ExportedDustin bundle from dustin.export)")
        bundle = export(bundle, example_input_ids, **(export_options or {}))
    roles = list(bundle.programs) if programs is None else list(programs)
    missing = [r for r in roles if r not in bundle.programs]
    if missing:
        raise ValueError(f"the bundle has no program {missing}; it holds {sorted(bundle.programs)}")
    options = _settings(torch_tensorrt, settings)
    if cpu_build:
        options["offload_module_to_cpu"] = True  # otherwise compile asks the (absent) GPU for its free memory
    entries = getattr(bundle, "manifest", {}).get("programs", {})
    report = TensorRTReport({}, "cpu-build" if cpu_build else "cuda", path)
    for role in roles:
        inputs = entries.get(role, {}).get("inputs")
        report.programs[role] = _compile_program(torch_tensorrt, role, bundle.programs[role], inputs, dict(options),
                                                 cpu_build)
    if path is not None:
        _save(torch_tensorrt, report, path)
    return report
