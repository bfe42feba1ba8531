"""Token choice and speculative acceptance (greedy match, Leviathan/Chen rejection sampling), batched.

Temperature, top-k and top-p are applied by the same function to the draft's and the target's logits, so the
acceptance rule compares the two distributions that were actually sampled from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def warp_probs(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """float32 probabilities after temperature, top-k and top-p (nucleus; the most likely token is always kept)."""
    logits = logits.float() / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # drop a token once the mass before it already reaches top_p
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= s.top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def choose(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None):
    """Next token from ``logits [B, V]``: argmax, or a sample. Returns (tokens [B], probs [B, V] or None)."""
    if not s.do_sample:
        return logits.argmax(-1), None
    probs = warp_probs(logits, s)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1), probs


def accept_greedy(draft_tokens: torch.Tensor, target_logits: torch.Tensor):
    """Longest prefix of ``draft_tokens [B, g]`` equal to the target's argmax, plus its correction/bonus token.

    Returns (n_accepted [B], tokens [B, g+1]) where ``tokens[b, :n_accepted[b]+1]`` are the tokens to commit.
    """
    g = draft_tokens.shape[1]
    target_tokens = target_logits.argmax(-1)
    match = draft_tokens == target_tokens[:, :g]
    n_accepted = match.long().cumprod(1).sum(1)
    return n_accepted, target_tokens


def accept_sampling(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_logits: torch.Tensor,
                    s: Sampling, generator: torch.Generator | None):
    """Speculative sampling: accept draft token x with probability min(1, p(x)/q(x)); at the first rejection
    sample from normalise(max(p - q, 0)); if all g are accepted, sample the bonus token from p.

    draft_probs: ``[B, g, V]`` (zero-padded to the target's vocabulary). Returns (n_accepted [B], tokens [B, g+1]).
    """
    batch, g = draft_tokens.shape
    p = warp_probs(target_logits, s)  # [B, g+1, V]
    px = p[:, :g].gather(-1, draft_tokens[..., None]).squeeze(-1)
    qx = draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1)
    u = torch.rand(batch, g, generator=generator, device=p.device)
    accepted = u * qx <= px  # u < p/q without dividing; qx > 0 for every sampled token
    n_accepted = accepted.long().cumprod(1).sum(1)
    q_next = torch.cat([draft_probs, torch.zeros_like(p[:, :1])], 1)  # row g: residual is p itself
    rows = n_accepted[:, None, None].expand(batch, 1, p.shape[-1])
    residual = (p.gather(1, rows) - q_next.gather(1, rows)).clamp_min(0).squeeze(1)
    mass = residual.sum(-1, keepdim=True)
    # p == q on the rejected row cannot reject in exact arithmetic; guard the rounding case with p itself.
    residual = torch.where(mass > 0, residual, p.gather(1, rows).squeeze(1))
    extra = torch.multinomial(residual, 1, generator=generator).squeeze(1)
    tokens = torch.cat([draft_tokens, extra[:, None]], 1)
    tokens.scatter_(1, n_accepted[:, None], extra[:, None])
    return n_accepted, tokens
