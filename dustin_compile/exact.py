"""Exact mode: sparse verification made lossless by a periodic dense check.

Tokens committed by sparse verification are *provisional*; ``final[b]`` (kept by the driver) counts row b's tokens
confirmed by a dense target pass. When a row holds ``exact_every`` provisional tokens, or stops (eos /
max_new_tokens) with some, one dense pass of ``exact_every + gamma + 1`` rows per sequence (inputs at positions
``final-1 ..``) recomputes their K/V exactly and predicts every provisional position from an exact prefix:

- greedy: keep the prefix equal to the target's argmax, replace the first mismatch by the argmax (the correction);
- sampling: a provisional token x was drawn from the sparse target distribution p~ (speculative sampling is exact
  w.r.t. the distribution it verifies against), so it is a draft from p~ for the dense p: accept with
  min(1, p(x)/p~(x)), at the first rejection sample from normalise(max(p - p~, 0)). The output follows p.

``ExactCheck`` decides; the driver applies its decision (rolls back, re-syncs the draft). Rolled-back positions are
rewritten before they are read (the cache invariant of cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import DustinConfig
from .sampling import Sampling, warp_probs


@dataclass
class CheckResult:
    """Per row: ``keep`` provisional tokens stand; where ``keep`` < the provisional count, ``correction`` replaces
    the first one that does not."""

    keep: torch.Tensor
    correction: torch.Tensor


class ExactCheck:
    """When a check is due and what it keeps. Holds only its own state: the sparse distributions of the provisional
    tokens (sampling), by slot = position - final."""

    def __init__(self, config: DustinConfig, batch: int, vocab: int, sampling: Sampling,
                 device: torch.device) -> None:
        self.every, self.sampling = config.exact_every, sampling
        self.rows = config.exact_every + config.max_draft + 1
        self.p_sparse = torch.zeros(batch, self.rows, vocab, device=device) if sampling.do_sample else None

    def due(self, provisional: torch.Tensor, active: torch.Tensor, interval: int | None = None) -> bool:
        """A row holds ``interval`` (default ``exact_every``; never more) provisional tokens, or has stopped with
        some."""
        every = min(interval or self.every, self.every)
        return bool(((provisional >= every) | (~active & (provisional > 0))).any())

    def remember(self, slot: torch.Tensor, count: torch.Tensor, logits: torch.Tensor) -> None:
        """Sampling: keep the sparse verifier's distribution of the ``count[b]`` tokens just committed at
        ``slot[b]`` (= their first position - final[b]); greedy needs nothing."""
        if self.p_sparse is None:
            return
        probs = warp_probs(logits, self.sampling)  # [B, gamma+1, V]
        for b in count.nonzero().flatten().tolist():
            first = int(slot[b])
            self.p_sparse[b, first : first + int(count[b])] = probs[b, : int(count[b])]

    def judge(self, logits: torch.Tensor, proposed: torch.Tensor, provisional: torch.Tensor,
              generator: torch.Generator | None) -> CheckResult:
        """``logits [B, R-1, V]``: the dense pass's prediction of each position from ``final`` on; ``proposed``:
        the tokens there; ``provisional [B]``: how many of them to check."""
        steps = torch.arange(proposed.shape[1], device=proposed.device)
        if self.p_sparse is None:
            target = logits.argmax(-1)
            ok = proposed == target
        else:
            p = warp_probs(logits, self.sampling)
            p_tilde = self.p_sparse[:, : proposed.shape[1]]
            px = p.gather(-1, proposed[..., None]).squeeze(-1)
            ptx = p_tilde.gather(-1, proposed[..., None]).squeeze(-1)
            ok = torch.rand(px.shape, generator=generator, device=px.device) * ptx <= px
        ok |= steps[None, :] >= provisional[:, None]  # past the provisional tokens: nothing to check
        keep = torch.minimum(ok.long().cumprod(1).sum(1), provisional)
        at = keep.clamp_max(proposed.shape[1] - 1)
        if self.p_sparse is None:
            correction = target.gather(1, at[:, None]).squeeze(1)
        else:
            correction = _resample(p, p_tilde, at, generator)
        return CheckResult(keep, correction)


def _resample(p: torch.Tensor, p_tilde: torch.Tensor, at: torch.Tensor, generator) -> torch.Tensor:
    """A token from normalise(max(p - p~, 0)) at row ``at[b]`` (p itself where the residual is empty)."""
    rows = at[:, None, None].expand(-1, 1, p.shape[-1])
    residual = (p.gather(1, rows) - p_tilde.gather(1, rows)).clamp_min(0).squeeze(1)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p.gather(1, rows).squeeze(1))
    return torch.multinomial(residual, 1, generator=generator).squeeze(1)
