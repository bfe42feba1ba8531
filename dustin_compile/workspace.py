"""``Workspace``: everything sized by (batch, capacity) — both KV caches and the driver-owned state of each step.

Compiled graphs read these tensors as inputs at every call; the driver fills them in place between steps.
"""

from __future__ import annotations

import torch

from .cache import RowCache
from .config import DustinConfig


def head_geometry(model: torch.nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) from a HF config."""
    cfg = model.config
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    return q_heads, kv_heads, head_dim


class Workspace:
    def __init__(self, target: torch.nn.Module, draft: torch.nn.Module, batch: int, capacity: int,
                 config: DustinConfig) -> None:
        self.batch, self.capacity = batch, capacity
        self.target_cache = RowCache.for_model(target, batch, capacity)
        self.draft_cache = RowCache.for_model(draft, batch, capacity)
        device = self.target_cache.write_pos.device

        def lens() -> torch.Tensor:
            return torch.zeros(batch, dtype=torch.long, device=device)

        self.state: dict[str, dict[str, torch.Tensor]] = {
            role: {"seq_lens": lens()} for role in ("prefill_target", "prefill_draft", "draft_1", "draft_2", "verify")
        }
        if config.mode != "dense":
            q_heads, _, head_dim = head_geometry(target)
            dtype = self.target_cache.layers[0].keys.dtype
            verify = self.state["verify"]
            verify["indices"] = torch.full((batch, config.budget), -1, dtype=torch.long, device=device)
            verify["query_record"] = torch.zeros(batch, q_heads, config.gamma + 1, head_dim, dtype=dtype, device=device)

    def nbytes(self) -> int:
        return self.target_cache.nbytes() + self.draft_cache.nbytes()
