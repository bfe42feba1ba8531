"""Verification policies: what the driver does around each target verification pass.

``begin(gen)`` runs before drafting (resets the lookahead buffer); ``before_verify(gen)`` fills the selection and
returns the role of the verify graph to run (``"verify"``: sparse in sparse modes; ``"verify_dense"``: a guarded
refresh); ``after_verify(gen, n_accepted, role)`` keeps what the next selection needs (the history query ``q*``).
"""

from __future__ import annotations

import torch

from .selectors import SELECTOR_SCORES


class DensePolicy:
    """Classic speculative decoding: full-KV verification, nothing to select."""

    def begin(self, gen) -> None:
        pass

    def after_draft(self, gen, role: str, rows: int) -> None:
        pass

    def before_verify(self, gen) -> str:
        return "verify"

    def after_verify(self, gen, n_accepted: torch.Tensor, role: str) -> None:
        pass


class SparsePolicy:
    """Dustin's selection (or a baseline selector) for the ``sparse``, ``guarded`` and ``exact`` modes.

    One index set per row, shared by every layer and head: sink + recent window; then the top ``m`` positions by
    the draft's lookahead (its score heads over the drafted tokens, accumulated by the graph taps); then the rest
    of the budget by the target's history score (``q*`` of the last committed token at the profile's layer/heads).
    """

    def __init__(self, model, ws) -> None:
        self.m, self.ws, self.cfg = model, ws, model.config
        self.q_star: torch.Tensor | None = None
        self.iterations_since_dense = 0
        self.memo: dict = {}  # per-call selector state (e.g. SnapKV's static scores)

    def after_draft(self, gen, role: str, rows: int) -> None:
        pass

    def begin(self, gen) -> None:
        self._hist = None
        if not gen.gamma:
            return
        state = self.m.state("draft_1", 1)
        if "lookahead" in state:
            state["lookahead"].zero_()
            state["lookahead_seq_lens"].copy_(gen.n - 1)

    def history_scores(self, gen) -> torch.Tensor | None:
        """softmax(q* K^T) at the profile's layer, summed over its heads, over positions < n - 1."""
        from dustin.kernels import score_heads

        if self.q_star is None:
            return None
        if self._hist is None:  # once per iteration: the selector and the guard share it
            keys = self.ws.target_cache.layers[self.m.profile.history_layer].keys
            self._hist = score_heads(self.q_star, keys, gen.n - 1, list(self.m.profile.history_heads))
        return self._hist

    def before_verify(self, gen) -> str:
        from dustin.kernels import select_tokens

        if self.q_star is None:
            # The first verification of a call is dense: nothing estimates a selection yet, and its query tap
            # seeds the history signal (in exact mode its tokens are final at once).
            return "verify_dense"
        cfg, seq_lens = self.cfg, gen.n - 1
        draft, hist = SELECTOR_SCORES[cfg.selector](self, gen)
        if not gen.gamma:
            draft = None  # no draft ran: no lookahead signal
        indices = select_tokens(draft, hist, seq_lens, budget=cfg.budget, n_sink=cfg.n_sink, window=cfg.window,
                                m=self.m.m if draft is not None and hist is not None else 0)
        # Finished rows keep their batch slot (static shapes) but read no cached keys: an empty selection.
        indices.masked_fill_(~gen.active[:, None], -1)
        self.ws.tensor(("indices",), indices.shape, indices.dtype).copy_(indices)
        recovery = estimated_recovery(self.history_scores(gen), indices, seq_lens)[gen.active]
        gen.stats.recovery.append(float(recovery.mean()))
        if cfg.mode == "guarded" and self._needs_dense(recovery):
            return "verify_dense"
        return "verify"

    def _needs_dense(self, recovery: torch.Tensor) -> bool:
        """Guarded mode: estimated recovery (history mass inside the selection) below ``min_recovery``, or the
        refresh interval reached."""
        cfg = self.cfg
        if cfg.refresh_every and self.iterations_since_dense + 1 >= cfg.refresh_every:
            return True
        return bool((recovery < cfg.min_recovery).any())

    def after_verify(self, gen, n_accepted: torch.Tensor, role: str) -> None:
        self.iterations_since_dense = 0 if role == "verify_dense" else self.iterations_since_dense + 1
        record = self.m.state(role, gen.verify_rows)["query_record"][0]  # [B, Hq, gamma + 1, D]
        b, h, _, d = record.shape
        self.q_star = record.gather(2, n_accepted.view(b, 1, 1, 1).expand(b, h, 1, d)).clone()


def estimated_recovery(hist: torch.Tensor, indices: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """Per row: history-score mass inside the selected set over the total mass (1.0 for an all-dense selection)."""
    picked = hist.gather(1, indices.clamp_min(0)) * (indices >= 0)
    total = hist.sum(1)
    return torch.where(total > 0, picked.sum(1) / total.clamp_min(1e-30), torch.ones_like(total))


def make_policy(model, ws):
    if model.policy_factory is not None:
        return model.policy_factory(model, ws)
    return DensePolicy() if model.config.mode == "dense" else SparsePolicy(model, ws)
