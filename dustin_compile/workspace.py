"""``Workspace``: everything sized by (batch, capacity) — both KV caches and the driver-owned state of each step.

Compiled graphs read these tensors as inputs at every call; the driver fills them in place between steps. State
tensors are allocated on first use and then reused (no per-step allocations): ``seq_lens`` and ``query_record`` per
(role, rows), the selection (``indices``), the draft's ``window_indices`` and the lookahead buffers shared.
"""

from __future__ import annotations

import torch

from .cache import RowCache


def head_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) from a HF config."""
    cfg = model.config
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    return q_heads, kv_heads, head_dim


class Workspace:
    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, batch: int, capacity: int) -> None:
        self.batch, self.capacity = batch, capacity
        self.target_cache = RowCache.for_model(target, batch, capacity)
        self.draft_cache = RowCache.for_model(draft, batch, capacity)
        self.device = self.target_cache.write_pos.device
        self._tensors: dict[tuple, torch.Tensor] = {}
        self._states: dict[tuple, dict[str, torch.Tensor]] = {}
        self.prefilled: tuple | None = None  # the prompts whose K/V the caches hold (see Generation.prefill)

    def tensor(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype, fill: float = 0) -> torch.Tensor:
        """The state tensor stored under ``key``, allocated (filled with ``fill``) on first use."""
        found = self._tensors.get(key)
        if found is None:
            found = self._tensors[key] = torch.full(shape, fill, dtype=dtype, device=self.device)
        return found

    def state(self, key: tuple, build) -> dict[str, torch.Tensor]:
        """The name → tensor dict one compiled step reads, built once per (role, rows)."""
        found = self._states.get(key)
        if found is None:
            found = self._states[key] = build()
        return found

    def nbytes(self) -> int:
        return self.target_cache.nbytes() + self.draft_cache.nbytes()
