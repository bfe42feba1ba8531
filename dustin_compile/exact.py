"""Exact mode: sparse verification made lossless by a periodic dense check.

Tokens committed by sparse verification are *provisional*; ``final[b]`` counts row b's tokens confirmed by a dense
target pass. When a row holds ``exact_every`` provisional tokens, or stops (eos / max_new_tokens) with some, one
dense pass of ``exact_every + gamma + 1`` rows per sequence (inputs at positions ``final-1 ..``) recomputes their
K/V exactly and predicts every provisional position from an exact prefix:

- greedy: keep the prefix equal to the target's argmax, replace the first mismatch by the argmax (the correction);
- sampling: a provisional token x was drawn from the sparse target distribution p~ (speculative sampling is exact
  w.r.t. the distribution it verifies against), so it is a draft from p~ for the dense p: accept with
  min(1, p(x)/p~(x)), at the first rejection sample from normalise(max(p - p~, 0)). The output follows p.

Rolled-back positions are rewritten before they are read (the cache invariant of driver.py); the draft re-syncs from
the last final token (``draft_need = 1``).
"""

from __future__ import annotations

import torch

from .sampling import warp_probs


class ExactChecker:
    def __init__(self, gen) -> None:
        cfg = gen.cfg
        self.every = cfg.exact_every
        self.rows = cfg.exact_every + cfg.gamma + 1
        self.final = gen.prompt_lens.clone()
        batch, device = gen.seq.shape[0], gen.seq.device
        # Sampling: the sparse verifier's distribution of each provisional token, slot = position - final.
        self.p_sparse = (torch.zeros(batch, self.rows, gen.m.vocab_size, device=device)
                         if gen.sampling.do_sample else None)
        gen.stats.rolled_back = 0

    def after_commit(self, gen, start: torch.Tensor, count: torch.Tensor, logits: torch.Tensor, role: str) -> None:
        if role == "verify_dense":
            # A dense verification from an all-final prefix is itself exact: its tokens are final at once.
            self.final = torch.where(self.final == start, gen.n, self.final)
        elif self.p_sparse is not None:
            self._store(gen, start, count, logits)
        provisional = gen.n - self.final
        due = (provisional >= self.every) | (~gen.active & (provisional > 0))
        if bool(due.any()):
            self.check(gen)

    def _store(self, gen, start, count, logits) -> None:
        probs = warp_probs(logits, gen.sampling)  # [B, gamma+1, V]
        for b in count.nonzero().flatten().tolist():
            slot = int(start[b] - self.final[b])
            self.p_sparse[b, slot : slot + int(count[b])] = probs[b, : int(count[b])]

    def check(self, gen) -> None:
        steps = torch.arange(self.rows, device=gen.seq.device)
        pos = self.final[:, None] - 1 + steps
        ids = gen.seq.gather(1, pos.clamp_max(gen.seq.shape[1] - 1))
        logits = gen.forward("check", ids, pos).float()[:, :-1]  # row i predicts position final + i
        proposed = ids[:, 1:]
        provisional = gen.n - self.final
        if self.p_sparse is None:
            target = logits.argmax(-1)
            ok = proposed == target
        else:
            p = warp_probs(logits, gen.sampling)
            p_tilde = self.p_sparse[:, : self.rows - 1]
            px = p.gather(-1, proposed[..., None]).squeeze(-1)
            ptx = p_tilde.gather(-1, proposed[..., None]).squeeze(-1)
            ok = torch.rand(px.shape, generator=gen.generator, device=px.device) * ptx <= px
        ok |= steps[None, :-1] >= provisional[:, None]  # past the provisional tokens: nothing to check
        keep = torch.minimum(ok.long().cumprod(1).sum(1), provisional)
        rolled = keep < provisional
        if self.p_sparse is None:
            correction = target.gather(1, keep.clamp_max(self.rows - 2)[:, None]).squeeze(1)
        else:
            correction = self._resample(gen, p, p_tilde, keep)
        self._apply(gen, keep, rolled, correction)
        gen.stats.target_passes += 1
        gen.stats.dense_passes += 1

    def _resample(self, gen, p, p_tilde, keep) -> torch.Tensor:
        rows = keep.clamp_max(self.rows - 2)[:, None, None].expand(-1, 1, p.shape[-1])
        residual = (p.gather(1, rows) - p_tilde.gather(1, rows)).clamp_min(0).squeeze(1)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p.gather(1, rows).squeeze(1))
        return torch.multinomial(residual, 1, generator=gen.generator).squeeze(1)

    def _apply(self, gen, keep, rolled, correction) -> None:
        """Cut rolled-back rows after their agreeing prefix + correction; re-derive which rows are still active."""
        new_n = torch.where(rolled, self.final + keep + 1, gen.n)
        gen.write(self.final + keep, correction[:, None], rolled.long())
        gen.stats.rolled_back += int((gen.n - new_n + rolled.long()).sum())
        count, hit = gen.limit(torch.ones_like(keep), correction[:, None], self.final + keep)
        reopened = rolled & ~hit & (new_n - gen.prompt_lens < gen.max_new)
        gen.active = torch.where(rolled, reopened, gen.active)
        gen.n = new_n
        gen.draft_need = torch.where(rolled, torch.ones_like(gen.draft_need), gen.draft_need)
        self.final = new_n.clone()
