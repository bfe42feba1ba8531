"""Native lowerings: every dustin op an exported graph can hold, decomposed into core ATen.

Why: a deployment compiler (TensorRT, ExecuTorch, ...) converts core ATen with its own layers but knows nothing of
``dustin::*``. On TensorRT-RTX plugins are off, so a custom op left in the graph would run in PyTorch between two
engines. These decompositions use only gathers (``index_select``), ``matmul``, ``softmax``, ``where``, ``arange``
and shape ops: no data-dependent control flow, no Python loop over the batch, every shape static.

They compute what the torch references (the specs, ``kernels/*/reference.py``) compute, in the way an accelerator
wants it rather than the way the CPU reference does (``tests/kernels/test_lowering.py`` checks equality):

- logits, softmax and the weighted sum are fp32 whatever the model dtype, as the spec says (the CPU reference's SDPA
  and the GPU kernels accumulate in fp32); only the result is cast back. In bf16 that costs an fp32 copy of the
  gathered K/V (sparse: ``K + T`` rows) or of the whole cache (dense, score heads).
- the dense op attends over the whole static cache with a mask (the reference slices each row's span, which needs
  the lengths on the host). Cache positions past a row's span get probability exactly 0, so they must hold finite
  values: ``RowCache`` zero-fills, and rows left by a rolled-back step are finite.
- GQA without copies of the cache per query head: q is viewed as ``[B, Hkv, G, T, D]`` and K/V broadcast over G.

``lower(ep)`` applies them (with the default core-ATen table) to an ``ExportedProgram``. ``*_new_rows`` are the
attention ops with the step's new K/V rows passed in rather than read back from the cache: what a program whose
cache writes were turned into outputs calls (``dustin.cache_io``, for Torch-TensorRT), so that it never copies a
cache to read T rows back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import dense, scores, sparse  # noqa: F401  (registers the ops the table names)

__all__ = ["DECOMPOSITIONS", "decompositions", "dense_attention_new_rows", "lower", "sparse_attention_new_rows"]

_NEG_INF = float("-inf")


def _scale(scale: float | None, dim: int) -> float:
    # The export schemas take a plain float; older graphs may still carry ``float? scale`` = None (= 1/sqrt(D)).
    return 1.0 / math.sqrt(dim) if scale is None else float(scale)


def _grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """``q [B, Hq, T, D]`` as fp32 ``[B, Hkv, G, T, D]``: query head h = kv * G + g reads KV head kv."""
    batch, q_heads, rows, dim = q.shape
    return q.reshape(batch, kv_heads, q_heads // kv_heads, rows, dim).to(torch.float32)


def _attend(q: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]], visible: torch.Tensor,
            scale: float) -> torch.Tensor:
    """softmax(q·Kᵀ·scale, hidden = -inf)·V in fp32 over packed GQA, with the keys in ``parts`` of
    ``(keys, values) [B, Hkv, W_i, D]`` (one softmax over their concatenation, never a copy of the keys: the cache
    and the new rows stay separate tensors) and ``visible`` bool broadcastable to ``[B, 1, 1, T, ΣW_i]``. Every row
    sees at least its own new token, so no row is all -inf."""
    batch, q_heads, rows, dim = q.shape
    grouped = _grouped(q, parts[0][0].shape[1])
    logits = [torch.matmul(grouped, keys.to(torch.float32).unsqueeze(2).transpose(-1, -2)) for keys, _ in parts]
    logits = (logits[0] if len(logits) == 1 else torch.cat(logits, dim=-1)) * scale
    probs = torch.softmax(torch.where(visible, logits, _NEG_INF), dim=-1)
    out, start = None, 0
    for keys, values in parts:  # a static list of one or two parts
        width = keys.shape[2]
        term = torch.matmul(probs[..., start : start + width], values.to(torch.float32).unsqueeze(2))
        out, start = term if out is None else out + term, start + width
    return out.reshape(batch, q_heads, rows, dim).to(q.dtype)  # [B, Hkv, G, T, D] -> [B, Hq, T, D]


def _row_positions(seq_lens: torch.Tensor, rows: int) -> torch.Tensor:
    """``[B, T]`` int64: the cache position of each new row, seq_lens[b] + t."""
    return seq_lens.to(torch.int64)[:, None] + torch.arange(rows, dtype=torch.int64, device=seq_lens.device)


def _visible(row_pos: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, T, W]`` bool: position ``positions[b, w]`` is causally visible from row t (and inside the window)."""
    seen = positions[:, None, :] <= row_pos[:, :, None]
    if window:  # a static int: a Python branch is no data-dependent control flow
        seen = seen & (positions[:, None, :] > row_pos[:, :, None] - window)
    return seen


def _gather_rows(cache: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``cache [B, H, S, D]`` rows at ``positions [B, W]`` (shared by the heads) -> ``[B, H, W, D]``.

    One ``index_select`` over the cache flattened to ``[B*H*S, D]`` with flat row ids: a plain 1-D gather, the form
    every backend has (TensorRT's IGatherLayer in its default mode), rather than advanced indexing."""
    batch, heads, capacity, dim = cache.shape
    width = positions.shape[1]
    base = torch.arange(batch * heads, dtype=torch.int64, device=positions.device).view(batch, heads, 1) * capacity
    ids = (base + positions[:, None, :]).reshape(batch * heads * width)
    return cache.reshape(batch * heads * capacity, dim).index_select(0, ids).view(batch, heads, width, dim)


def _selection(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, padding) of a selection: -1 reads position 0 (always written: committed, or the first new row
    when seq_lens is 0, so finite) and is hidden by the mask."""
    picked = indices.to(torch.int64)
    padding = picked < 0
    return torch.where(padding, torch.zeros_like(picked), picked), padding


def _new_visible(row_pos: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, T, T]`` bool: new row j is visible from row t (causal, inside the window)."""
    return _visible(row_pos, row_pos, window)


def sparse_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, indices: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float | None, window: int) -> torch.Tensor:
    """``dustin::sparse_attention`` (kernels/sparse/reference.py): the selection, then the T new rows, both read
    from the cache (one gather of K + T rows)."""
    row_pos = _row_positions(seq_lens, q.shape[2])
    selected, padding = _selection(indices)
    positions = torch.cat([selected, row_pos], dim=1)  # [B, K + T]
    keep = torch.cat([~padding, torch.ones_like(row_pos, dtype=torch.bool)], dim=1)
    visible = _visible(row_pos, positions, window) & keep[:, None, :]
    parts = [(_gather_rows(k_cache, positions), _gather_rows(v_cache, positions))]
    return _attend(q, parts, visible[:, None, None], _scale(scale, q.shape[-1]))


def sparse_attention_new_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                              v_new: torch.Tensor, indices: torch.Tensor, seq_lens: torch.Tensor, scale: float | None,
                              window: int) -> torch.Tensor:
    """``sparse_attention`` with the T new rows given as ``k_new, v_new [B, Hkv, T, D]`` instead of read from the
    cache at ``seq_lens``: the cache is read only at the selection (positions < seq_lens), so a program whose cache
    write is made an output (dustin.export_tensorrt) needs no updated copy of the cache. Equal to
    ``sparse_attention`` on the cache with the new rows written at seq_lens .. seq_lens + T - 1."""
    row_pos = _row_positions(seq_lens, q.shape[2])
    selected, padding = _selection(indices)
    old = _visible(row_pos, selected, window) & ~padding[:, None, :]
    visible = torch.cat([old, _new_visible(row_pos, window)], dim=2)
    parts = [(_gather_rows(k_cache, selected), _gather_rows(v_cache, selected)), (k_new, v_new)]
    return _attend(q, parts, visible[:, None, None], _scale(scale, q.shape[-1]))


def dense_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_lens: torch.Tensor,
                    scale: float | None, window: int) -> torch.Tensor:
    """``dustin::dense_attention`` (kernels/dense/reference.py): every position <= seq_lens + t, over the static
    cache with a mask."""
    capacity = k_cache.shape[2]
    every = torch.arange(capacity, dtype=torch.int64, device=seq_lens.device).expand(q.shape[0], capacity)
    visible = _visible(_row_positions(seq_lens, q.shape[2]), every, window)
    return _attend(q, [(k_cache, v_cache)], visible[:, None, None], _scale(scale, q.shape[-1]))


def dense_attention_new_rows(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor,
                             v_new: torch.Tensor, seq_lens: torch.Tensor, scale: float | None,
                             window: int) -> torch.Tensor:
    """``dense_attention`` with the new rows given (see ``sparse_attention_new_rows``): the committed positions
    < seq_lens from the cache, then the new rows causally."""
    batch, capacity = q.shape[0], k_cache.shape[2]
    row_pos = _row_positions(seq_lens, q.shape[2])
    every = torch.arange(capacity, dtype=torch.int64, device=seq_lens.device).expand(batch, capacity)
    committed = (every < seq_lens.to(torch.int64)[:, None])[:, None, :]
    visible = torch.cat([_visible(row_pos, every, window) & committed, _new_visible(row_pos, window)], dim=2)
    return _attend(q, [(k_cache, v_cache), (k_new, v_new)], visible[:, None, None], _scale(scale, q.shape[-1]))


def causal_mask(seq_lens: torch.Tensor, rows: int, capacity: int, window: int) -> torch.Tensor:
    """``dustin::causal_mask``: ``[B, 1, rows, capacity]`` bool, row t sees positions <= seq_lens + t."""
    every = torch.arange(capacity, dtype=torch.int64, device=seq_lens.device).expand(seq_lens.shape[0], capacity)
    return _visible(_row_positions(seq_lens, rows), every, window)[:, None]


def score_heads_t(q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: torch.Tensor,
                  scale: float | None) -> torch.Tensor:
    """``dustin::score_heads_t`` (kernels/scores/reference.py): Σ over ``heads`` and rows of the softmax over
    positions < seq_lens; ``[B, S_max]`` fp32, zeros beyond seq_lens and for rows with seq_lens 0."""
    batch, q_heads, rows, dim = q.shape
    kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
    heads = heads.to(torch.int64)
    q_rows = q.index_select(1, heads).to(torch.float32)  # [B, H', T, D]
    keys = k_cache.index_select(1, torch.div(heads, q_heads // kv_heads, rounding_mode="floor")).to(torch.float32)
    logits = torch.matmul(q_rows, keys.transpose(-1, -2)) * _scale(scale, dim)  # [B, H', T, S]
    every = torch.arange(capacity, dtype=torch.int64, device=seq_lens.device)
    valid = (every[None, :] < seq_lens.to(torch.int64)[:, None])[:, None, None, :]  # [B, 1, 1, S]
    # A hand-made softmax: a row with seq_lens 0 has nothing to normalise and must give zeros, not NaN. Hidden
    # logits become the fp32 minimum (finite), and their exp is zeroed by the mask.
    logits = torch.where(valid, logits, torch.finfo(torch.float32).min)
    weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True)) * valid
    total = weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (weights / total).sum(dim=(1, 2))


def score_heads(q: torch.Tensor, k_cache: torch.Tensor, seq_lens: torch.Tensor, heads: list[int],
                scale: float | None = None) -> torch.Tensor:
    """``dustin::score_heads`` (heads as a static list): ``score_heads_t`` with the ids as a constant tensor."""
    ids = torch.tensor(list(heads), dtype=torch.int64, device=q.device)
    return score_heads_t(q, k_cache, seq_lens, ids, scale)


_BY_NAME: dict[str, Callable] = {"sparse_attention": sparse_attention, "dense_attention": dense_attention,
                                 "causal_mask": causal_mask, "score_heads_t": score_heads_t, "score_heads": score_heads}


def decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """The table, keyed by the ops as registered *now*. Why not only the constant below: importing this folder a
    second time under another name (``kernels`` from the repository root is on ``sys.path`` under ``python -m``, and
    transformers probes ``import kernels`` for the Hub's package) registers the ops again as new objects."""
    return {getattr(torch.ops.dustin, name).default: fn for name, fn in _BY_NAME.items()}


DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable] = decompositions()


def lower(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``ep`` in core ATen with every dustin op above replaced by its decomposition (a new program; ``ep`` is kept).

    ``score_heads_into`` (mutating) and ``select_tokens`` (a host-side top-k) are not lowered: export graphs use
    ``score_heads_t``, and the selection runs in the driver."""
    table = torch.export.default_decompositions()
    table.update(decompositions())
    return ep.run_decompositions(table)
