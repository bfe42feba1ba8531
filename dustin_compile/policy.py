"""The verification policy: how the next verification runs. A pure decision — it reads tensors and returns a
``Selection``; the driver applies it (fills the selection buffer, picks the graph, counts the pass).

``dense`` mode verifies densely every time. The sparse modes select one index set per row, shared by every layer
and head: sink + recent window; then the top ``draft_share`` positions by the draft's lookahead (its score heads
over the drafted tokens); then the rest of the budget by the target's history score (``q*`` of the last committed
token at the profile's layer and heads). ``guarded`` verifies densely instead when the estimated recovery of the
selection is low, or when the refresh interval is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dustin.kernels import select_tokens

from .config import DustinConfig
from .selectors import SELECTORS, Signals


@dataclass
class Selection:
    """The decision for one verification.

    role: the verify graph to run: ``"verify"`` (the configured verification: sparse in the sparse modes) or
        ``"verify_dense"`` (a dense verification in a sparse mode).
    sparse: whether this verification reads only the selection.
    indices: ``[B, budget]`` the selection (also computed when the guard then chose a dense pass), else None.
    recovery: ``[B]`` history-score mass inside the selection over the total (the guard's estimate), else None.
    """

    role: str
    sparse: bool
    indices: torch.Tensor | None = None
    recovery: torch.Tensor | None = None


def choose_selection(config: DustinConfig, draft_share: int, signals: Signals | None, seq_lens: torch.Tensor,
                     active: torch.Tensor, since_dense: int) -> Selection:
    """How to verify this iteration. ``signals`` is None before the first verification of a call (no history
    query yet): that verification is dense, and its query tap seeds the history signal. ``since_dense`` counts
    the sparse verifications since the last dense one."""
    if config.mode == "dense":
        return Selection("verify", sparse=False)
    if signals is None:
        return Selection("verify_dense", sparse=False)
    draft, hist = SELECTORS[config.selector](signals)
    both = draft is not None and hist is not None
    indices = select_tokens(draft, hist, seq_lens, budget=config.budget, n_sink=config.n_sink,
                            window=config.window, m=draft_share if both else 0)
    # Finished rows keep their batch slot (static shapes) but read no cached keys: an empty selection.
    indices.masked_fill_(~active[:, None], -1)
    recovery = estimated_recovery(signals.history(), indices, seq_lens)
    if config.mode == "guarded" and needs_dense(config, recovery[active], since_dense):
        return Selection("verify_dense", sparse=False, indices=indices, recovery=recovery)
    return Selection("verify", sparse=True, indices=indices, recovery=recovery)


def needs_dense(config: DustinConfig, recovery: torch.Tensor, since_dense: int) -> bool:
    """Guarded mode: the refresh interval is reached, or some row's estimated recovery is below ``min_recovery``."""
    if config.refresh_every and since_dense + 1 >= config.refresh_every:
        return True
    return bool((recovery < config.min_recovery).any())


def estimated_recovery(hist: torch.Tensor | None, indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Per row: history-score mass inside the selected set over the total mass (1.0 for an all-dense selection,
    and 1.0 where no history score exists)."""
    if hist is None:
        return torch.ones(indices.shape[0], device=indices.device)
    picked = hist.gather(1, indices.clamp_min(0)) * (indices >= 0)
    total = hist.sum(1)
    return torch.where(total > 0, picked.sum(1) / total.clamp_min(1e-30), torch.ones_like(total))
