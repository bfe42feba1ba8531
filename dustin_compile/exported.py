"""``ExportedDustin``: the exported step programs of a pair, their manifest, save/load, and a runner.

The runner is the in-process driver (``Generation``, one iteration on one screen) over the loaded programs:
the same draft → select → verify → accept → commit → check loop, the same selectors and acceptance, the programs
in place of the compiled graphs. It needs no Hugging Face model: the weights live in the programs, the geometry and
the configuration in ``manifest.json``. The cache contract is in exporter.py's docstring.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import torch

from dustin.passes import RewritePlan

from .cache import RowCache, head_geometry
from .config import DustinConfig
from .generate_args import UNSET, resolve
from .model import DustinModel, decode
from .profile import DustinProfile
from .state import DecodeState, KVCaches
from .version import __version__

FORMAT = 1
ROLE_GROUPS = ("prefill", "draft", "verify")
STATE_INPUTS = {"dustin_indices": "indices", "dustin_window_indices": "window_indices",
                "dustin_lookahead": "lookahead", "dustin_lookahead_seq_lens": "lookahead_seq_lens"}


def export_roles(config, roles: Sequence[str], prefill_rows: int, self_draft: bool = False) -> list[tuple[str, int]]:
    """The (role, rows) programs a bundle needs for ``roles`` (groups of ``ROLE_GROUPS``) under ``config``; a
    self-draft reads the target's cache, so it has no prefill of its own."""
    unknown = [r for r in roles if r not in ROLE_GROUPS]
    if unknown or not roles:
        raise ValueError(f"`roles` must be a non-empty subset of {ROLE_GROUPS}, got {tuple(roles)!r}")
    if config.mode != "dense" and config.selector in ("snapkv", "oracle"):
        raise ValueError(f"export supports the selectors that need no extra target pass; selector={config.selector!r} "
                         "needs one (snapkv: an observation pass, oracle: a dense pass): use dustin, history, draft, "
                         "streaming or quest")
    verify_rows = config.max_draft + 1
    out = []
    if "prefill" in roles:
        out += [("prefill_target", prefill_rows)] + ([] if self_draft else [("prefill_draft", prefill_rows)])
    if "draft" in roles:
        out += [("draft_1", 1), ("draft_2", 2)]
    if "verify" in roles:
        out.append(("verify", verify_rows))
        if config.mode != "dense":
            out.append(("verify_dense", verify_rows))  # the first verification of every call is dense
        if config.mode == "exact":
            out.append(("check", config.exact_every + verify_rows))
    return out


class Manifest(dict):
    """What a bundle holds, as JSON: configuration, profile, geometry of both models, one entry per program."""

    @classmethod
    def build(cls, model: DustinModel, batch: int, capacity: int, prefill_rows: int, programs: dict) -> Manifest:
        config = dataclasses.asdict(model.config)
        config["dtype"] = None if config["dtype"] is None else str(config["dtype"]).removeprefix("torch.")
        gen = model.generation_config
        return cls(format=FORMAT, dustin=__version__, torch=torch.__version__, config=config,
                   profile=dataclasses.asdict(model.profile), batch=batch, capacity=capacity,
                   prefill_rows=prefill_rows, vocab_size=model.vocab_size, draft_share=model.draft_share,
                   dense_layers=sorted(model.dense_layers), device=str(model.device), self_draft=model.self_draft,
                   target=_geometry(model.target), draft=_geometry(model.draft),
                   generation_config=None if gen is None else gen.to_dict(), programs=programs)


def _geometry(model: torch.nn.Module) -> dict:
    q_heads, kv_heads, head_dim = head_geometry(model)
    dtype = next(model.parameters()).dtype
    return dict(layers=model.config.num_hidden_layers, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                dtype=str(dtype).removeprefix("torch."))


def _config(raw: dict) -> DustinConfig:
    raw = dict(raw)
    raw["dtype"] = None if raw["dtype"] is None else getattr(torch, raw["dtype"])
    raw["dense_layers"] = tuple(raw["dense_layers"])
    return DustinConfig(**raw)


def _plan(raw: dict) -> RewritePlan:
    return RewritePlan(attention=raw["attention"], dense_layers=frozenset(raw["dense_layers"]),
                       query_taps=tuple(raw["query_taps"]),
                       score_taps=tuple((int(layer), tuple(heads)) for layer, heads in raw["score_taps"]),
                       score_rows=raw["score_rows"], window_attention=raw["window_attention"],
                       portable=raw["portable"])


class ExportedStep:
    """One loaded program behind the driver's step interface ``step(input_ids, position_ids, seq_lens)``."""

    def __init__(self, role: str, program: torch.export.ExportedProgram, entry: dict, bundle: ExportedDustin) -> None:
        self.role, self.rows, self.inputs = role, entry["rows"], entry["inputs"]
        self.plan = _plan(entry["plan"])
        self.model = entry["model"]
        self.module = program.module()  # performs the program's in-place writes (caches, taps) on its inputs
        self.bundle = bundle

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        rows = input_ids.shape[1]
        if rows < self.rows:  # a prompt's last prefill piece: pad it; the padded rows write past the prompt
            input_ids = torch.cat([input_ids, input_ids[:, -1:].expand(-1, self.rows - rows)], dim=1)
            position_ids = position_ids[:, :1] + torch.arange(self.rows, device=position_ids.device)
        capacity = self.bundle.manifest["capacity"]
        if int(position_ids.max()) >= capacity:
            raise ValueError(f"{self.role}: this step writes cache position {int(position_ids.max())}, but the bundle "
                             f"was exported with max_length={capacity}; export again with a larger max_length")
        state = self.bundle.state
        cache = state.caches.target if self.model == "target" else state.caches.draft
        tensors = {"input_ids": input_ids, "position_ids": position_ids, "seq_lens": seq_lens}
        for i, layer in enumerate(cache.layers):
            tensors[f"k_cache_{i}"], tensors[f"v_cache_{i}"] = layer.keys, layer.values
        for name, field in STATE_INPUTS.items():
            tensors[name] = getattr(state, field)
        if "dustin_query_record" in self.inputs:
            tensors["dustin_query_record"] = self.bundle.query_record(self.role, self.rows)
        out = self.module(*(tensors[name] for name in self.inputs))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out[:, :rows] if not self.role.startswith("prefill") else out


class ExportedDustin:
    """Exported programs by role (``programs``) and their ``manifest``; ``save(path)``, ``generate(...)``.

    Built by ``dustin.export(model, example_input_ids)`` or loaded by ``dustin.load_exported(path)``. Batch and
    KV-cache capacity are fixed at export (``manifest["batch"]``, ``manifest["capacity"]``): ``generate`` takes
    up to ``batch`` prompts whose prompt + new tokens fit the capacity.
    """

    def __init__(self, programs: dict[str, torch.export.ExportedProgram], manifest: Manifest) -> None:
        self.programs, self.manifest = programs, manifest
        self.config = _config(manifest["config"]).replace(prefill_chunk=manifest["prefill_rows"])
        self.profile = DustinProfile.from_dict(manifest["profile"], "in manifest.json")
        self.vocab_size, self.draft_share = manifest["vocab_size"], manifest["draft_share"]
        self.device = torch.device(manifest["device"])
        self._steps: dict[str, ExportedStep] = {}
        self._state: DecodeState | None = None
        self.generation_config = None
        if manifest.get("generation_config") is not None:
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig.from_dict(manifest["generation_config"])

    # ---- what the driver asks of a model ----------------------------------------------------------------------
    def plan(self, role: str) -> RewritePlan:
        return self._step(role).plan

    def graph(self, role: str, rows: int) -> ExportedStep:
        step = self._step(role)
        fits = rows <= step.rows if role.startswith("prefill") else rows == step.rows
        if not fits:
            raise ValueError(f"the {role} program of this bundle takes {step.rows} rows, the driver asked for {rows}: "
                             "export with the same configuration (gamma, exact_every) you generate with")
        return step

    def _step(self, role: str) -> ExportedStep:
        if role not in self._steps:
            if role not in self.programs:
                raise ValueError(f"this bundle has no {role!r} program (it holds {sorted(self.programs)}); export "
                                 "with roles=('prefill', 'draft', 'verify') to run generate")
            self._steps[role] = ExportedStep(role, self.programs[role], self.manifest["programs"][role], self)
        return self._steps[role]

    def query_record(self, role: str, rows: int) -> torch.Tensor:
        state, geometry = self.state, self.manifest["target"]
        found = state.query_records.get((role, rows))
        if found is None:
            taps = len(self._step(role).plan.query_taps)
            shape = (taps, state.caches.batch, geometry["q_heads"], rows, geometry["head_dim"])
            found = state.query_records[(role, rows)] = torch.zeros(shape, dtype=getattr(torch, geometry["dtype"]),
                                                                    device=self.device)
        return found

    @property
    def state(self) -> DecodeState:
        if self._state is None:
            m = self.manifest

            def cache(g: dict) -> RowCache:
                return RowCache(g["layers"], m["batch"], g["kv_heads"], g["head_dim"], m["capacity"],
                                getattr(torch, g["dtype"]), self.device)

            target = cache(m["target"])
            draft = target if m.get("self_draft") else cache(m["draft"])  # a self-draft shares the target's cache
            self._state = DecodeState.build(self.config, KVCaches(target, draft))
        return self._state

    def decode_state(self, batch: int, longest: int, max_new_tokens: int) -> DecodeState:
        m = self.manifest
        if batch != m["batch"]:
            raise ValueError(f"this bundle was exported for batch {m['batch']} (static shapes); got {batch} prompts: "
                             f"export with batch={batch}")
        ahead = self.config.positions_ahead
        if longest + max_new_tokens + ahead > m["capacity"]:
            raise ValueError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) + {ahead} positions of lookahead "
                             f"exceed the bundle's max_length={m['capacity']}: export with a larger max_length")
        return self.state

    # ---- generate, save, load ---------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = UNSET, do_sample: bool | None = UNSET, temperature: float | None = UNSET,
                 top_k: int | None = UNSET, top_p: float | None = UNSET,
                 eos_token_id: int | list[int] | torch.Tensor | None = UNSET, pad_token_id: int | None = UNSET,
                 streamer=None, generator: torch.Generator | None = None, generation_config=None,
                 progress: bool = False):
        """``DustinModel.generate`` over the exported programs (same arguments, same output)."""
        needed = export_roles(self.config, ROLE_GROUPS, 1, bool(self.manifest.get("self_draft")))
        missing = sorted({role for role, _ in needed} - set(self.programs))
        if missing:
            raise ValueError(f"this bundle has no {missing} program(s) (it holds {sorted(self.programs)}); export "
                             "with roles=('prefill', 'draft', 'verify') to run generate")
        return decode(self, resolve(self, locals()), input_ids, attention_mask, streamer, progress, True)

    def save(self, path: str | os.PathLike) -> None:
        """A directory: ``manifest.json`` and one ``<role>.pt2`` (``torch.export.save``) per program. Written to a
        temporary directory beside ``path`` first, then moved into place: a failed save leaves no partial bundle."""
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isfile(os.path.join(path, "manifest.json")):
            raise FileExistsError(f"{path!r} exists and is not a dustin bundle; choose another path")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".dustin-export-", dir=parent)
        try:
            for role, program in self.programs.items():
                torch.export.save(program, os.path.join(tmp, f"{role}.pt2"))
            with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
                json.dump(self.manifest, f, indent=1)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def load_exported(path: str | os.PathLike) -> ExportedDustin:
    """Load a bundle written by ``ExportedDustin.save`` (importing dustin registers the ops its programs call)."""
    path = os.fspath(path)
    manifest_path = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{path!r} is not a dustin bundle (no manifest.json); write one with "
                                "dustin.export(...).save(path)")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = Manifest(json.load(f))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path!r} has bundle format {manifest.get('format')!r}; this dustin reads format {FORMAT}: "
                         "export again")
    programs = {role: torch.export.load(os.path.join(path, f"{role}.pt2")) for role in manifest["programs"]}
    return ExportedDustin(programs, manifest)
