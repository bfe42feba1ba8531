"""A static KV cache with **per-row positions**, behind transformers' ``Cache`` interface.

Design (docs/design.md, "Ragged batches"): row b's token i lives at cache position i, whatever the other rows do.
Each forward writes its T new tokens at the explicit per-row positions the driver passes (``write_pos [B, T]``, the
same tensor as ``position_ids``), so ragged acceptance needs no holes and rollback is resetting a length on the host:
positions past a row's committed length are garbage that is never attended and is overwritten before it is. The
driver's steps pass 4D bool masks built by ``dustin::causal_mask`` (masks.py), which transformers uses as they are.

Invariant kept by the driver: with ``n[b]`` committed tokens, cache positions ``0 .. n[b]-2`` hold their exact K/V
and token ``n[b]-1`` is *pending* (the first input of the next forward).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def head_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) from a HF config."""
    cfg = model.config
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    return q_heads, kv_heads, head_dim


class RowCacheLayer(CacheLayerMixin):
    """One layer's static ``[B, Hkv, S, D]`` keys and values, written at per-row positions."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.max_cache_len = keys.shape[2]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # allocated up front: lazy allocation inside a captured graph would break static shapes

    def write(self, key_states: torch.Tensor, value_states: torch.Tensor, write_pos: torch.Tensor):
        # scatter_ along the sequence axis writes each row at its own positions in place (static address).
        index = write_pos[:, None, :, None].expand(key_states.shape)
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, index, value_states)
        return self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("RowCacheLayer is written through RowCache.update (it needs the write positions)")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_seq_length(self) -> int:
        return 0  # positions are per row; the driver always passes position_ids and a 4D mask

    def get_max_length(self) -> int:
        return self.max_cache_len

    def reset(self) -> None:
        self.keys.zero_()
        self.values.zero_()


class RowCache(Cache):
    """Per-row-position static cache for one model. Set ``write_pos`` before each forward."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, kv_heads, capacity, head_dim)
        layers = [
            RowCacheLayer(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.batch, self.capacity = batch, capacity
        self.write_pos = torch.zeros(batch, 1, dtype=torch.long, device=device)

    @classmethod
    def wrap(cls, keys: list[torch.Tensor], values: list[torch.Tensor]) -> RowCache:
        """A cache over existing per-layer tensors (no copy): how an exported step sees the caches it is passed."""
        cache = cls.__new__(cls)
        Cache.__init__(cache, layers=[RowCacheLayer(k, v) for k, v in zip(keys, values, strict=True)])
        cache.batch, cache.capacity = keys[0].shape[0], keys[0].shape[2]
        cache.write_pos = torch.zeros(cache.batch, 1, dtype=torch.long, device=keys[0].device)
        return cache

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.layers[layer_idx].write(key_states, value_states, self.write_pos)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def nbytes(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, capacity: int) -> RowCache:
        _, kv_heads, head_dim = head_geometry(model)
        param = next(model.parameters())
        return cls(model.config.num_hidden_layers, batch, kv_heads, head_dim, capacity, param.dtype, param.device)


def window_indices(seq_lens: torch.Tensor, n_sink: int, window: int, out: torch.Tensor) -> torch.Tensor:
    """The draft's own KV window: positions ``[0, n_sink)`` and ``[L - window, L)`` of each row (L = seq_lens),
    ascending, -1 padded (all of ``[0, L)`` when L <= n_sink + window)."""
    width = n_sink + window
    slots = torch.arange(width, device=seq_lens.device)
    lens = seq_lens[:, None]
    # Short rows: slot j is position j. Long rows: sinks, then the recent window.
    long_pos = torch.where(slots < n_sink, slots, lens - window + (slots - n_sink))
    pos = torch.where(lens <= width, slots.expand_as(long_pos), long_pos)
    return out.copy_(torch.where(pos < lens, pos, -1))


def prefill_chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    """(start, rows) pieces covering positions [0, total). The last piece is rounded up to a power of two (≥ 16),
    so prompts of any length reuse a handful of compiled shapes; the padded rows write past the prompt."""
    pieces, start = [], 0
    while start < total:
        left = total - start
        rows = chunk if left >= chunk else min(chunk, max(16, 1 << (left - 1).bit_length()))
        pieces.append((start, rows))
        start += rows
    return pieces
