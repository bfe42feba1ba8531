"""``dustin.export``: the rewritten step graphs of a ``DustinModel`` as ``torch.export`` programs.

One ``ExportedProgram`` per decode role, each the same rewrite the in-process path runs (``dustin.passes`` with a
``portable`` plan: only ops with plain schemas, nothing mutated by a custom op), then exported again so that every
input is explicit. The result is an ``ExportedDustin`` bundle (exported.py): save, load, generate.

**Cache contract** (every program, docs/design.md "Export"):

- inputs, in this order: ``input_ids [B, T]`` int64, ``position_ids [B, T]`` int64 (the cache positions the T new
  tokens are written at, contiguous per row), ``seq_lens [B]`` int64 (= ``position_ids[:, 0]``: where each row's
  new rows start; the attention reads committed positions ``< seq_lens`` plus the new rows, causally), then
  ``k_cache_0, v_cache_0, ..., k_cache_{L-1}, v_cache_{L-1}`` (``[B, Hkv, capacity, D]``, the model's dtype), then
  the state the role's plan lists (``dustin_indices [B, budget]``: the selection, -1 padded, for sparse
  verification; ``dustin_window_indices`` for a windowed draft; ``dustin_query_record`` and ``dustin_lookahead`` /
  ``dustin_lookahead_seq_lens`` for the taps).
- writes, in place: the new K/V at ``position_ids`` in every layer's caches, the query taps into
  ``dustin_query_record``, the score taps added into ``dustin_lookahead``. The programs are torch.export's default
  IR, where these writes are in-place aten ops on the inputs (``scatter_``, ``copy_``, ``add_``); functionalized
  (``program.run_decompositions()``, what TensorRT and AOTInductor take) they become the signature's user-input
  mutations, which ``ExportedProgram.module()`` writes back.
- returns the logits ``[B, T, V]`` (prefill: the last hidden state, which the driver ignores).
- **idempotent**: a step's output depends only on the cache below ``seq_lens`` and its inputs, and it writes its
  rows at explicit positions. Running it twice at the same positions writes the same K/V and returns the same
  logits, so rolling back is resetting a length on the host, and a rejected draft is simply overwritten.
  (transformers' stock ``StaticCache`` keeps its own length and appends: re-running a step there is not a no-op.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from dustin.passes import PassReport, run_passes

from .cache import RowCache, prefill_chunks
from .exported import ROLE_GROUPS, ExportedDustin, Manifest, export_roles
from .masks import MaskSpec
from .model import TARGET_ROLES, DustinModel, _bucket
from .state import CacheStore, DecodeState
from .steps import _make_forward
from .validate import prompts_from, vocab_size

class _Step(torch.nn.Module):
    """One role's step as a module for ``torch.export``: the caches are explicit inputs, written in place."""

    def __init__(self, model: torch.nn.Module, masks: MaskSpec, logits: bool, id_max: int | None) -> None:
        super().__init__()
        self.model, self.masks, self.logits, self.id_max = model, masks, logits, id_max

    def forward(self, input_ids, position_ids, seq_lens, *kv):
        cache = RowCache.wrap(list(kv[0::2]), list(kv[1::2]))
        if self.id_max is not None:  # a draft with a smaller table reads its last id (see DustinModel.graph)
            input_ids = input_ids.clamp_max(self.id_max)
        return _make_forward(self.model, lambda: cache, self.masks, self.logits)(input_ids, position_ids, seq_lens)


def export(model: DustinModel, example_input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
           roles: Sequence[str] = ROLE_GROUPS, batch: int | None = None, max_length: int | None = None,
           max_new_tokens: int = 256, progress: bool = False):
    """Export ``model``'s rewritten step graphs; returns an ``ExportedDustin`` (``.programs``, ``.save(path)``,
    ``.generate(...)``).

    ``example_input_ids`` (left-padded like transformers, with ``attention_mask``) sizes the defaults: ``batch`` =
    its rows; ``max_length`` (the KV-cache capacity, fixed in the programs) = ``model.config.max_length`` or what a
    ``generate`` of ``max_new_tokens`` on it would allocate; the prefill step takes ``min(prefill_chunk, prompt)``
    rows (rounded up to a power of two >= 16) and the runner pads the last piece. ``roles``: which of
    ``("prefill", "draft", "verify")`` to export (the runner needs all three). Every program holds the same rewrite
    ``generate`` runs: a model the pass refuses raises the same ``PassError``. The programs verify a fixed number
    of rows: ``gamma="auto"`` is exported as ``gamma=gamma_max`` (the manifest records it), and
    ``draft_quant="auto"`` as the draft as given (``"int8"`` is refused).
    """
    if model.config.draft_vocab is not None:
        raise ValueError("export does not support draft_vocab yet (the runner would need the restricted head's ids); "
                         "export model.with_config(draft_vocab=None)")
    if model.config.draft_quant == "int8":
        raise ValueError("export does not support draft_quant='int8' yet (its int8 kernel has no TensorRT or portable "
                         "form measured); export model.with_config(draft_quant=None)")
    if model.draft_quant is not None:  # "auto" chose int8 on this CPU: the programs hold the draft as given
        model = model.with_config(draft_quant=None)
    if model.config.adaptive:
        model = model.with_config(gamma=model.config.gamma_max)
    prompts = prompts_from(example_input_ids, attention_mask, model.vocab_size)
    batch = len(prompts) if batch is None else batch
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"`batch` must be an int >= 1, got {batch!r}")
    longest = max(len(p) for p in prompts)
    capacity = max_length or model.config.max_length or _bucket(model._needed(longest, max_new_tokens))
    prefill_rows = min(model.config.prefill_chunk, max(16, 1 << max(0, longest - 2).bit_length()))
    needed = model._needed(longest, 1)
    if capacity < needed or capacity < sum(prefill_chunks(max(1, longest - 1), prefill_rows)[-1]):
        raise ValueError(f"`max_length`={capacity} cannot hold the example prompt ({longest} tokens) and one step; "
                         f"raise it (>= {max(needed, longest + prefill_rows)})")
    caches = CacheStore().get(model.target, model.draft, batch, capacity)
    state = DecodeState.build(model.config, caches)
    programs, entries = {}, {}
    todo = export_roles(model.config, roles, prefill_rows, model.self_draft)
    for role, rows in tqdm(todo, desc="export", unit="program", disable=not progress):
        programs[role], entries[role] = _export_role(model, state, role, rows)
    manifest = Manifest.build(model, batch, capacity, prefill_rows, entries)
    return ExportedDustin(programs, manifest)


def _export_role(model: DustinModel, state: DecodeState, role: str, rows: int):
    is_target = role in TARGET_ROLES
    hf = model.target if is_target else model.draft
    cache = state.caches.target if is_target else state.caches.draft
    plan = dataclasses.replace(model.plan(role), portable=True)
    id_max = None
    if not is_target and vocab_size(model.draft) < model.vocab_size:
        id_max = vocab_size(model.draft) - 1
    step = _Step(hf, model.target_masks if is_target else model.draft_masks, not role.startswith("prefill"), id_max)
    batch, device = cache.batch, cache.write_pos.device
    ids = torch.zeros(batch, rows, dtype=torch.long, device=device)
    pos = torch.arange(rows, device=device).expand(batch, rows).contiguous()
    seq_lens = pos[:, 0].clone()
    kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    with torch.no_grad():
        traced = torch.export.export(step, (ids, pos, seq_lens, *kv), strict=False).module()
    # Flat positional inputs (the pass appends the state), and no check of the first export's input signature.
    traced.graph._codegen = torch.fx.graph.CodeGen()
    traced._forward_pre_hooks.clear()
    records = state.query_record(role, rows, len(plan.query_taps), hf) if plan.query_taps else None
    report: PassReport = run_passes(traced, plan, state.inputs(plan.state_names(), records), role, model.config.strict)
    names = [n.target for n in traced.graph.nodes if n.op == "placeholder"]
    kv_names = [f"{kind}_cache_{i}" for i in range(len(cache.layers)) for kind in ("k", "v")]
    inputs = ["input_ids", "position_ids", "seq_lens", *kv_names, *names[3 + len(kv):]]
    example = (ids, pos, seq_lens, *kv, *state.inputs(plan.state_names(), records).values())
    with torch.no_grad():
        program = torch.export.export(traced, example, strict=False)
    entry = dict(rows=rows, model="target" if is_target else "draft", inputs=inputs,
                 plan=_plan_dict(plan), report=report.summary())
    return program, entry


def _plan_dict(plan) -> dict:
    raw = dataclasses.asdict(plan)
    raw["dense_layers"] = sorted(raw["dense_layers"])
    return raw
