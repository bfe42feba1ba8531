"""The driver-owned tensors of one (batch, capacity): both KV caches and the state the compiled steps read.

Compiled graphs take the state as extra inputs, by the names of ``RewritePlan.state_names()`` — the one contract
between the passes and the driver. The driver fills these tensors in place between steps; they are allocated once,
so no step allocates and one compiled graph serves every call of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .cache import RowCache, head_geometry
from .config import DustinConfig
from .selfdraft import is_self_draft


@dataclass
class KVCaches:
    """Both models' KV caches at one (batch, capacity), and which prompts they hold.

    ``prefilled`` is the tuple of prompts (token tuples) whose K/V sit below each prompt's last position: decoding
    never writes there, so a repeated prompt skips its prefill. ``DustinModel.with_config`` siblings share one
    ``KVCaches``, so one long prefill serves every mode.
    """

    target: RowCache
    draft: RowCache
    prefilled: tuple | None = None

    @property
    def shared(self) -> bool:
        """One cache for both roles (self-speculation)."""
        return self.draft is self.target

    @property
    def batch(self) -> int:
        return self.target.batch

    @property
    def capacity(self) -> int:
        return self.target.capacity

    def nbytes(self) -> int:
        return self.target.nbytes() + self.draft.nbytes()


class CacheStore:
    """Holds the one ``KVCaches`` a model (and its ``with_config`` siblings) decodes with; a new (batch, capacity)
    frees the old caches before allocating new ones."""

    def __init__(self) -> None:
        self.current: KVCaches | None = None

    def get(self, target: torch.nn.Module, draft: torch.nn.Module, batch: int, capacity: int) -> KVCaches:
        found = self.current
        if found is None or found.batch != batch or found.capacity != capacity:
            self.current = None  # free the old caches first: two long-context caches may not fit together
            target_cache = RowCache.for_model(target, batch, capacity)
            # A self-draft reads and writes the target's own cache (selfdraft.py): one cache, nothing copied.
            draft_cache = target_cache if is_self_draft(draft) else RowCache.for_model(draft, batch, capacity)
            found = self.current = KVCaches(target_cache, draft_cache)
        return found


@dataclass
class DecodeState:
    """Everything the compiled steps of one generation read besides their token inputs.

    seq_lens: ``[B]`` cache position where the running step's rows start (set before every forward; a step input,
        from which the step builds its mask).
    indices: ``[B, budget]`` the sparse selection of this iteration, shared by every layer (-1 = padding).
    window_indices: ``[B, n_sink + draft_window]`` the draft's own sink + recent window (``draft_kv="window"``).
    lookahead: ``[B, capacity]`` float32, the draft's score heads summed over this iteration's drafted tokens.
    lookahead_seq_lens: ``[B]`` the history length those scores cover (the committed text, fixed while drafting).
    query_records: per (role, rows), ``[taps, B, Hq, rows, D]``: the queries the graph's query taps copied out.
    """

    caches: KVCaches
    seq_lens: torch.Tensor
    indices: torch.Tensor
    window_indices: torch.Tensor
    lookahead: torch.Tensor
    lookahead_seq_lens: torch.Tensor
    query_records: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, config: DustinConfig, caches: KVCaches) -> DecodeState:
        batch, device, long = caches.batch, caches.target.write_pos.device, torch.long
        return cls(
            caches=caches,
            seq_lens=torch.zeros(batch, dtype=long, device=device),
            indices=torch.full((batch, config.budget), -1, dtype=long, device=device),
            window_indices=torch.full((batch, config.n_sink + config.draft_window), -1, dtype=long, device=device),
            lookahead=torch.zeros(batch, caches.capacity, dtype=torch.float32, device=device),
            lookahead_seq_lens=torch.zeros(batch, dtype=long, device=device),
        )

    def query_record(self, role: str, rows: int, taps: int, model: torch.nn.Module) -> torch.Tensor:
        """The query-tap buffer of the ``role`` step at ``rows`` rows (allocated on first use)."""
        found = self.query_records.get((role, rows))
        if found is None:
            q_heads, _, head_dim = head_geometry(model)
            param = next(model.parameters())
            shape = (taps, self.caches.batch, q_heads, rows, head_dim)
            found = self.query_records[(role, rows)] = torch.zeros(shape, dtype=param.dtype, device=param.device)
        return found

    def inputs(self, names: tuple[str, ...], query_record: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The tensors a graph whose plan lists ``names`` reads, by name."""
        table = {"indices": self.indices, "window_indices": self.window_indices,
                 "lookahead": self.lookahead, "lookahead_seq_lens": self.lookahead_seq_lens,
                 "query_record": query_record}
        return {name: table[name] for name in names}
