"""dustin's sparse verification as a vLLM attention backend: a SKETCH over tested pure-torch helpers.

Read docs/serving.md first; it says how this maps onto vLLM, SGLang and TensorRT-LLM and what is missing.

VERIFIED here (CPU, ``tests/test_serving_skeleton.py``; no vLLM needed):
  * importing this file works without vLLM (vLLM is imported only inside functions);
  * ``register()`` (the ``vllm.general_plugins`` entry point) raises ``VLLMNotInstalled``, a clear ImportError,
    when vLLM is missing; so does asking for one of the vLLM classes;
  * the pure-torch helpers: ``logical_to_slots`` (logical position -> physical slot through a block table),
    ``write_kv_to_paged_cache``, ``gather_paged``, ``paged_sparse_attention`` (equal to ``dustin::sparse_attention``
    and ``dustin::dense_attention`` on the same K/V laid out contiguously), the slot-indexed score buffers
    (``add_slot_scores`` / ``gather_slot_scores``) and ``SlotState.select`` (equal to ``dustin::select_tokens`` on
    contiguous scores).

A SKETCH, never run (vLLM is not installed on the CPU machine this was written on and cannot run there):
  * everything ``_vllm_classes()`` builds: ``DustinAttentionBackend``, ``DustinMetadataBuilder``,
    ``DustinAttentionMetadata``, ``DustinAttentionImpl``. They follow vLLM's v1 attention-backend interface as read
    in vLLM's sources (``vllm/v1/attention/backend.py``, ``vllm/v1/attention/backends/registry.py``; older releases:
    ``vllm/attention/backends/abstract.py``, ``vllm/attention/backends/registry.py``), but names and signatures move
    between vLLM releases; expect to adapt them. This module has no dependency on vLLM and dustin has none either.
    The test does run them on CPU, built on stand-ins for vLLM's base classes (a dense prefill, a draft forward, a
    sparse verification, compared with dustin's ops): that checks their own logic, not that they fit vLLM.

Use (with vLLM installed, in a plugin package whose pyproject declares the entry point, see docs/serving.md):

    vllm serve TARGET --attention-backend CUSTOM \\
        --speculative-config '{"method": "draft_model", "model": "DRAFT", "num_speculative_tokens": 4,
                               "attention_backend": "CUSTOM"}'
    with DUSTIN_VLLM_CONFIG='{"budget": 512, "history_layer": 14, "history_heads": [0, 1], ...}' in the environment

Layout conventions (vLLM's): a layer's cache is ``kv_cache [2, num_blocks, block_size, Hkv, D]``; token i of request
r lives in slot ``block_table[r, i // block_size] * block_size + i % block_size``; queries arrive packed,
``[num_tokens, Hq, D]``, request r's rows at ``query_start_loc[r] .. query_start_loc[r + 1] - 1``; vLLM's
``seq_lens[r]`` counts the cached tokens *plus* the new rows, so dustin's ``seq_lens`` (the position of the first
new row) is ``seq_lens - query_lens``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch

import dustin.kernels as dk  # registers torch.ops.dustin.*; dustin never imports vLLM

__all__ = [
    "ServingSettings", "SlotState", "VLLMNotInstalled", "add_slot_scores", "gather_paged", "gather_slot_scores",
    "logical_to_slots", "paged_sparse_attention", "register", "write_kv_to_paged_cache",
]

VLLM_MISSING = (
    "dustin_vllm_plugin: vLLM is not installed in this environment. This module is a sketch of a vLLM attention "
    "backend (docs/serving.md); its pure-torch helpers work without vLLM, but register() and the backend classes "
    "need `pip install vllm` (it was written against vLLM's v1 attention-backend interface and never run here)."
)


class VLLMNotInstalled(ImportError):
    """Raised by ``register()`` and by the vLLM-facing classes when vLLM cannot be imported."""


# ---------------------------------------------------------------------------------------------------------------
# Pure-torch helpers (verified on CPU)
# ---------------------------------------------------------------------------------------------------------------

def logical_to_slots(positions: torch.Tensor, block_table: torch.Tensor, block_size: int) -> torch.Tensor:
    """Physical slots ``[R, K]`` int64 of logical positions ``[R, K]`` (-1 = padding, kept as -1) of R requests,
    through ``block_table [R, max_blocks]``: slot = block_table[r, p // block_size] * block_size + p % block_size."""
    if positions.dim() != 2 or block_table.dim() != 2 or positions.shape[0] != block_table.shape[0]:
        raise ValueError(f"logical_to_slots: positions {tuple(positions.shape)} and block_table "
                         f"{tuple(block_table.shape)} must be [R, K] and [R, max_blocks] with the same R")
    pos = positions.long()
    valid = pos >= 0
    safe = torch.where(valid, pos, torch.zeros_like(pos))
    block_index = safe // block_size
    if block_index.numel() and int(block_index.max()) >= block_table.shape[1]:
        raise ValueError(f"logical_to_slots: a position needs block {int(block_index.max())} but the block table "
                         f"has {block_table.shape[1]} columns")
    blocks = torch.gather(block_table.long(), 1, block_index)
    slots = blocks * block_size + safe % block_size
    return torch.where(valid, slots, torch.full_like(slots, -1))


def _flat(cache_: torch.Tensor) -> torch.Tensor:
    """``[num_blocks, block_size, Hkv, D]`` as ``[num_slots, Hkv, D]`` (a view: writes reach the cache)."""
    return cache_.view(-1, *cache_.shape[2:])


def write_kv_to_paged_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                            value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write the new rows' ``key, value [N, Hkv, D]`` at ``slot_mapping [N']`` (N' <= N; -1 = skip) of the caches
    ``[num_blocks, block_size, Hkv, D]``, in place: what vLLM's reshape_and_cache_flash does, in torch."""
    n = slot_mapping.shape[0]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    _flat(key_cache).index_copy_(0, slots, key[:n][keep].to(key_cache.dtype))
    _flat(value_cache).index_copy_(0, slots, value[:n][keep].to(value_cache.dtype))


def gather_paged(cache_: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``cache_[num_blocks, block_size, Hkv, D]`` read at ``slots [R, K]`` -> ``[R, Hkv, K, D]`` (contiguous), every
    KV head at once; padding (-1) reads as zeros."""
    flat = _flat(cache_)
    rows = flat.index_select(0, slots.clamp(min=0).reshape(-1)).view(*slots.shape, *flat.shape[1:])
    rows = rows.masked_fill((slots < 0)[..., None, None], 0)
    return rows.permute(0, 2, 1, 3).contiguous()


def paged_sparse_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_table: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                           indices: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """dustin's sparse verification attention over a vLLM-style paged cache.

    ``query [N, Hq, D]`` packed rows of R requests (``query_start_loc [R + 1]``; rows past the last request are
    padding and come back as zeros); ``seq_lens [R]`` in vLLM's convention (cached + new); ``indices [R, K]``
    logical positions < the first new row, shared by every head and layer (-1 = padding), or None for dense (every
    cached position). The new rows' K/V must already be in the cache. Row t of request r attends to its selected
    positions plus its own new rows 0..t (causal). Returns ``[N, Hq, D]``.

    How (a reference, not a kernel): requests are grouped by query length; per group the selected positions and the
    new rows are mapped through the block table to slots, gathered into a compact ``[G, Hkv, K + T, D]`` cache, and
    ``dustin::sparse_attention`` runs on it with the selection renumbered 0..K-1 and the new rows at K.. . A GPU
    kernel would read the paged cache in place through the slots instead of compacting it.
    """
    device = query.device
    block_size = key_cache.shape[1]
    num_reqs = query_start_loc.shape[0] - 1
    q_lens = (query_start_loc[1:] - query_start_loc[:-1]).long()
    starts = seq_lens[:num_reqs].long() - q_lens
    out = torch.zeros_like(query)
    for t in sorted(set(q_lens.tolist())):  # host sync: fine for a reference, not for CUDA graphs
        if t == 0:
            continue
        rows = (q_lens == t).nonzero().flatten()
        steps = torch.arange(t, device=device)
        token_ids = query_start_loc[rows].long()[:, None] + steps  # [G, t]
        start = starts[rows]
        if indices is None:
            width = torch.arange(int(start.max()), device=device)[None]
            sel = torch.where(width < start[:, None], width, torch.full_like(width, -1))
        else:
            sel = indices[rows].long()
        k = sel.shape[1]
        slots = logical_to_slots(torch.cat([sel, start[:, None] + steps], dim=1), block_table[rows], block_size)
        keys, values = gather_paged(key_cache, slots), gather_paged(value_cache, slots)
        compact = torch.arange(k, device=device).expand_as(sel)
        compact = torch.where(sel >= 0, compact, torch.full_like(compact, -1))
        q = query[token_ids].permute(0, 2, 1, 3).contiguous()  # [G, Hq, t, D]
        attn = dk.sparse_attention(q, keys, values, compact, torch.full_like(start, k), scale)
        out[token_ids] = attn.permute(0, 2, 1, 3).to(out.dtype)
    return out


def add_slot_scores(buffer: torch.Tensor, scores: torch.Tensor, block_table: torch.Tensor,
                    lengths: torch.Tensor, block_size: int) -> None:
    """Add per-position ``scores [R, S]`` (positions < ``lengths[r]``) into the slot-indexed ``buffer [num_slots]``
    float32, in place. Scores kept per physical slot follow vLLM's paging, batch reordering and preemption."""
    pos = torch.arange(scores.shape[1], device=scores.device)[None].expand_as(scores)
    pos = torch.where(pos < lengths[:, None], pos, torch.full_like(pos, -1))
    slots = logical_to_slots(pos, block_table, block_size)
    keep = slots >= 0
    buffer.index_add_(0, slots[keep], scores[keep].float())


def gather_slot_scores(buffer: torch.Tensor, block_table: torch.Tensor, lengths: torch.Tensor, block_size: int,
                       width: int, clear: bool = False) -> torch.Tensor:
    """The slot-indexed ``buffer [num_slots]`` read back per request: ``[R, width]`` float32, 0 at positions >=
    ``lengths[r]``; ``clear`` zeroes the slots read (lookahead scores are used once)."""
    pos = torch.arange(width, device=buffer.device)[None].expand(block_table.shape[0], -1)
    pos = torch.where(pos < lengths[:, None], pos, torch.full_like(pos, -1))
    slots = logical_to_slots(pos, block_table, block_size)
    scores = torch.where(slots >= 0, buffer[slots.clamp(min=0)], torch.zeros((), device=buffer.device))
    if clear:
        buffer[slots[slots >= 0]] = 0
    return scores.float()


@dataclass
class ServingSettings:
    """dustin's selection settings for the backend (vLLM passes no configuration to a backend: issue #40051),
    read from ``DUSTIN_VLLM_CONFIG`` (inline JSON or a path to a JSON file, e.g. fields of a calibrated profile)."""

    budget: int = 512
    n_sink: int = 16
    window: int = 64
    m: int = 64
    history_layer: int = 0
    history_heads: list[int] = field(default_factory=lambda: [0])  # local query heads of ONE KV group
    draft_score_layers: dict[int, list[int]] = field(default_factory=dict)  # draft layer -> local query heads
    dense_layers: list[int] = field(default_factory=list)
    draft_prefix: str = "draft_model"  # how the draft's layer names start (as of the vLLM version read)

    @classmethod
    def from_env(cls, variable: str = "DUSTIN_VLLM_CONFIG") -> "ServingSettings":
        text = os.environ.get(variable, "").strip()
        if not text:
            return cls()
        data = json.loads(text if text.startswith("{") else Path(text).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{variable}: unknown settings {unknown}; known: {sorted(known)}")
        if "draft_score_layers" in data:
            data["draft_score_layers"] = {int(k): list(v) for k, v in data["draft_score_layers"].items()}
        return cls(**data)


def layer_index(layer_name: str) -> int | None:
    """The decoder-layer number in a vLLM layer name (``model.layers.7.self_attn.attn`` -> 7), or None."""
    found = re.search(r"layers\.(\d+)\.", layer_name)
    return int(found.group(1)) if found else None


class SlotState:
    """Per-process state of one verification step, kept per physical slot so that it survives vLLM's batch
    reordering (requests change batch rows between steps; their slots do not):

    * ``lookahead [num_slots]`` float32: the draft's attention mass per cached position, added by the draft's score
      layers while drafting (step k), read and cleared by the target's metadata builder (step k + 1);
    * ``qstar [num_slots, H, D]``: the history layer's score-head queries, written at every row's slot during
      target forwards; the builder reads the row at position ``start - 1`` (the newest computed committed token);
    * ``history_keys``: that layer's key cache (only the KV group of ``history_heads`` is read).
    """

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.lookahead: torch.Tensor | None = None
        self.qstar: torch.Tensor | None = None
        self.history_keys: torch.Tensor | None = None
        self.history_group = 0

    def ensure(self, num_slots: int, heads: int, head_size: int, device, dtype) -> None:
        if self.lookahead is None:
            self.lookahead = torch.zeros(num_slots, dtype=torch.float32, device=device)
        if self.qstar is None:
            self.qstar = torch.zeros(num_slots, heads, head_size, dtype=dtype, device=device)

    def select(self, block_table: torch.Tensor, starts: torch.Tensor, block_size: int,
               clear_until: torch.Tensor | None = None) -> torch.Tensor | None:
        """One index set ``[R, budget]`` per request for this step (every layer and head uses it), or None (dense)
        when nothing is recorded yet or no request is longer than the budget. ``starts [R]``: each request's first
        new position (dustin's seq_lens); ``clear_until`` also clears lookahead slots past ``starts`` (the draft
        scored its own speculative positions too)."""
        s = self.settings
        if self.lookahead is None or self.qstar is None or self.history_keys is None or not starts.numel():
            return None
        width = int(starts.max())
        lookahead = gather_slot_scores(self.lookahead, block_table, starts, block_size, width)
        if clear_until is not None:  # used once, also when this step is dense
            gather_slot_scores(self.lookahead, block_table, clear_until, block_size, int(clear_until.max()),
                               clear=True)
        if width <= s.budget:
            return None
        last = logical_to_slots((starts - 1).clamp(min=0)[:, None], block_table, block_size)[:, 0]
        q = self.qstar[last][:, :, None, :]  # [R, H, 1, D]
        pos = torch.arange(width, device=starts.device)[None].expand(starts.shape[0], -1)
        slots = logical_to_slots(torch.where(pos < starts[:, None], pos, torch.full_like(pos, -1)), block_table,
                                 block_size)
        keys = gather_paged(self.history_keys[:, :, self.history_group:self.history_group + 1], slots)
        history = dk.score_heads(q.to(keys.dtype), keys, starts, list(range(q.shape[1])))
        return dk.select_tokens(lookahead, history, starts, budget=s.budget, n_sink=s.n_sink, window=s.window,
                                m=s.m)


# ---------------------------------------------------------------------------------------------------------------
# The vLLM plugin (SKETCH: never run; vLLM imported only here)
# ---------------------------------------------------------------------------------------------------------------

def _vllm_api() -> SimpleNamespace:
    """vLLM's attention-backend API, from where the installed release keeps it (it moved in late 2025)."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise VLLMNotInstalled(VLLM_MISSING) from exc
    try:  # newer layout
        from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport, AttentionImpl,
                                               AttentionMetadataBuilder)
        from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    except ImportError:  # older layout
        from vllm.attention.backends.abstract import AttentionBackend, AttentionImpl
        from vllm.attention.backends.registry import AttentionBackendEnum, register_backend
        from vllm.v1.attention.backends.utils import AttentionCGSupport, AttentionMetadataBuilder
    return SimpleNamespace(AttentionBackend=AttentionBackend, AttentionImpl=AttentionImpl,
                           AttentionMetadataBuilder=AttentionMetadataBuilder, AttentionCGSupport=AttentionCGSupport,
                           AttentionBackendEnum=AttentionBackendEnum, register_backend=register_backend)


_STATE: SlotState | None = None


def _state() -> SlotState:
    global _STATE
    if _STATE is None:
        _STATE = SlotState(ServingSettings.from_env())
    return _STATE


@cache
def _vllm_classes() -> dict[str, type]:
    api = _vllm_api()

    @dataclass
    class DustinAttentionMetadata:
        num_actual_tokens: int
        max_query_len: int
        query_start_loc: torch.Tensor
        seq_lens: torch.Tensor
        block_table: torch.Tensor
        slot_mapping: torch.Tensor
        selection: torch.Tensor | None  # [R, budget] logical positions, shared by every layer of this step
        is_draft: bool = False

    class DustinMetadataBuilder(api.AttentionMetadataBuilder):
        # Sketch: no CUDA graphs (the reference impl syncs with the host). Both attribute names, old and new.
        _cudagraph_support = api.AttentionCGSupport.NEVER
        cudagraph_support = api.AttentionCGSupport.NEVER

        def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
            self.kv_cache_spec, self.layer_names, self.vllm_config, self.device = (
                kv_cache_spec, layer_names, vllm_config, device)
            self.block_size = kv_cache_spec.block_size
            spec = vllm_config.speculative_config
            self.verify_rows = None if spec is None else 1 + spec.num_speculative_tokens
            self.is_draft = any(name.startswith(_state().settings.draft_prefix) for name in layer_names)

        def build(self, common_prefix_len, common_attn_metadata, fast_build=False):
            # Called once per step per KV-cache group: the one place where the shared selection is computed.
            cm = common_attn_metadata
            q_lens = cm.query_start_loc_cpu[1:] - cm.query_start_loc_cpu[:-1]
            selection = None
            verifying = self.verify_rows is not None and bool((q_lens == self.verify_rows).all())
            if verifying and not self.is_draft:
                starts = cm.seq_lens - (cm.query_start_loc[1:] - cm.query_start_loc[:-1])
                selection = _state().select(cm.block_table_tensor, starts, self.block_size,
                                            clear_until=starts + self.verify_rows)
            return DustinAttentionMetadata(
                num_actual_tokens=cm.num_actual_tokens, max_query_len=cm.max_query_len,
                query_start_loc=cm.query_start_loc, seq_lens=cm.seq_lens, block_table=cm.block_table_tensor,
                slot_mapping=cm.slot_mapping, selection=selection, is_draft=self.is_draft)

    class DustinAttentionImpl(api.AttentionImpl):
        def __init__(self, num_heads, head_size, scale, num_kv_heads=None, alibi_slopes=None, sliding_window=None,
                     kv_cache_dtype="auto", logits_soft_cap=None, attn_type="decoder",
                     kv_sharing_target_layer_name=None, **extra):
            if alibi_slopes is not None or logits_soft_cap or sliding_window is not None:
                raise NotImplementedError("dustin sketch: no ALiBi, soft-capping or sliding-window layers")
            if kv_cache_dtype not in ("auto", "float16", "bfloat16"):
                raise NotImplementedError(f"dustin sketch: kv_cache_dtype {kv_cache_dtype!r} (fp8 caches) unsupported")
            self.num_heads, self.head_size, self.scale = num_heads, head_size, float(scale)
            self.num_kv_heads = num_kv_heads or num_heads
            self.kv_cache_dtype, self.attn_type = kv_cache_dtype, attn_type
            self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

        def forward(self, layer, query, key, value, kv_cache, attn_metadata, output=None, output_scale=None,
                    output_block_scale=None):
            if output_scale is not None or output_block_scale is not None:
                raise NotImplementedError("dustin sketch: fused output quantization")
            if attn_metadata is None:  # vLLM's memory-profiling run
                return output
            md = attn_metadata
            n = md.num_actual_tokens
            key_cache, value_cache = kv_cache.unbind(0)
            if self.kv_sharing_target_layer_name is None and key is not None:
                write_kv_to_paged_cache(key.reshape(-1, self.num_kv_heads, self.head_size),
                                        value.reshape(-1, self.num_kv_heads, self.head_size),
                                        key_cache, value_cache, md.slot_mapping[:n])
            q = query.reshape(-1, self.num_heads, self.head_size)[:n]
            self._taps(getattr(layer, "layer_name", ""), q, key_cache, md)
            settings = _state().settings
            index = layer_index(getattr(layer, "layer_name", ""))
            sparse = md.selection is not None and index not in settings.dense_layers
            attn = paged_sparse_attention(q, key_cache, value_cache, md.block_table, md.query_start_loc,
                                          md.seq_lens, md.selection if sparse else None, self.scale)
            output.reshape(-1, self.num_heads, self.head_size)[:n].copy_(attn)
            return output

        def _taps(self, name, q, key_cache, md):
            """The two estimation taps (sketch): the draft's lookahead and the target's history query q*."""
            state, settings = _state(), _state().settings
            index = layer_index(name)
            state.ensure(key_cache.shape[0] * key_cache.shape[1], len(settings.history_heads), self.head_size,
                         q.device, q.dtype)
            block_size = key_cache.shape[1]
            if md.is_draft and index in settings.draft_score_layers:
                last = (md.query_start_loc[1:] - 1).long()  # the row that drafts the next token, per request
                visible = (md.seq_lens - 1).long()  # that row's position: it scores the positions before it
                width = int(visible.max())
                pos = torch.arange(width, device=q.device)[None].expand(visible.shape[0], -1)
                slots = logical_to_slots(torch.where(pos < visible[:, None], pos, torch.full_like(pos, -1)),
                                         md.block_table, block_size)
                keys = gather_paged(key_cache, slots)
                scores = dk.score_heads(q[last][:, :, None, :], keys, visible, settings.draft_score_layers[index])
                add_slot_scores(state.lookahead, scores, md.block_table, visible, block_size)
            elif not md.is_draft and index == settings.history_layer:
                group = settings.history_heads[0] // (self.num_heads // self.num_kv_heads)
                state.history_keys, state.history_group = key_cache, group
                slots = md.slot_mapping[:q.shape[0]]
                keep = slots >= 0
                state.qstar[slots[keep].long()] = q[keep][:, settings.history_heads]

    class DustinAttentionBackend(api.AttentionBackend):
        accept_output_buffer = True
        forward_includes_kv_cache_update = True
        supported_dtypes = [torch.float16, torch.bfloat16, torch.float32]

        @staticmethod
        def get_name() -> str:
            return "CUSTOM"

        @staticmethod
        def get_impl_cls():
            return DustinAttentionImpl

        @staticmethod
        def get_builder_cls():
            return DustinMetadataBuilder

        @staticmethod
        def get_metadata_cls():  # older vLLM releases ask for it
            return DustinAttentionMetadata

        @staticmethod
        def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str="auto"):
            return (2, num_blocks, block_size, num_kv_heads, head_size)

        @classmethod
        def get_supported_head_sizes(cls) -> list[int]:
            return []  # any

    return {cls.__name__: cls for cls in (DustinAttentionBackend, DustinAttentionImpl, DustinMetadataBuilder,
                                          DustinAttentionMetadata)}


_VLLM_CLASS_NAMES = ("DustinAttentionBackend", "DustinAttentionImpl", "DustinMetadataBuilder",
                     "DustinAttentionMetadata")


def __getattr__(name: str):
    # vLLM resolves the registered class path with an import + getattr: the classes are built on first access, so
    # that importing this module never needs vLLM.
    if name in _VLLM_CLASS_NAMES:
        return _vllm_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """The ``vllm.general_plugins`` entry point. vLLM calls it with no arguments in every process it starts (engine
    core, workers), possibly more than once: it only records a class path, so calling it again is harmless."""
    api = _vllm_api()  # raises VLLMNotInstalled with a clear message when vLLM is missing
    api.register_backend(api.AttentionBackendEnum.CUSTOM, f"{__name__}.DustinAttentionBackend")
