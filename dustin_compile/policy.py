"""Verification policies: what the driver does around each target verification pass.

``before_verify(gen)`` prepares the verify graph's state (the selected indices) and says whether this pass is dense;
``after_verify(gen, n_accepted)`` keeps what the next selection needs (the history query ``q*``).
"""

from __future__ import annotations

import torch


class DensePolicy:
    """Classic speculative decoding: full-KV verification, nothing to select."""

    def __init__(self, model, ws) -> None:
        pass

    def before_verify(self, gen) -> bool:
        return True

    def after_verify(self, gen, n_accepted: torch.Tensor) -> None:
        pass


class HistoryPolicy:
    """Sparse verification with sink + recent window + target-history scores.

    History: ``q*`` is the target's query, at ``layer``, of the last committed token whose query was computed
    (verify row ``n_accepted``); its softmax over the cached keys of that layer, summed over ``heads``, ranks the
    positions. The first iteration has no ``q*`` and fills the budget by recency (StreamingLLM).
    """

    def __init__(self, model, ws) -> None:
        self.ws, self.cfg = ws, model.config
        self.layer, self.heads = model.history_layer, list(model.history_heads)
        self.q_star: torch.Tensor | None = None

    def before_verify(self, gen) -> bool:
        from dustin.kernels import score_heads, select_tokens

        seq_lens = gen.n - 1
        hist = None
        if self.q_star is not None:
            keys = self.ws.target_cache.layers[self.layer].keys
            hist = score_heads(self.q_star, keys, seq_lens, self.heads)
        indices = select_tokens(None, hist, seq_lens, budget=self.cfg.budget, n_sink=self.cfg.n_sink,
                                window=self.cfg.window, m=0)
        self.ws.state["verify"]["indices"].copy_(indices)
        return False

    def after_verify(self, gen, n_accepted: torch.Tensor) -> None:
        record = self.ws.state["verify"]["query_record"]  # [B, Hq, gamma + 1, D]
        b, h, _, d = record.shape
        self.q_star = record.gather(2, n_accepted.view(b, 1, 1, 1).expand(b, h, 1, d)).clone()
