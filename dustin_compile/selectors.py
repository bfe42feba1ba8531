"""Score sources of each selector: ``SELECTOR_SCORES[name](policy, gen) -> (draft_scores, hist_scores)``.

All of them feed the same ``select_tokens`` (sink + window + top positions) at the same budget, so they differ only
in *what* ranks the positions:

- ``dustin``: the draft's lookahead (score heads over the drafted tokens) and the target's history (``q*``).
- ``history`` / ``draft``: one of the two.
- ``streaming``: neither: sink + the most recent positions (StreamingLLM).
- ``snapkv``: chosen once per call from the attention of the prompt's last 16 positions (SnapKV's observation
  window; its rows read the whole prompt, a superset of their causal view by at most 16 positions).
- ``quest``: Quest's page-level upper bound (pages of 16, per-channel min/max of K) for ``q*``, per step.
- ``oracle``: the true attention of this iteration's verification queries, every layer, head and row — from a
  dense pass run first (a ceiling, not a method).
"""

from __future__ import annotations

import torch

PAGE = 16


def _dustin(policy, gen):
    return _lookahead(policy), policy.history_scores(gen)


def _lookahead(policy) -> torch.Tensor:
    return policy.m.state("draft_1", 1)["lookahead"]


def _history(policy, gen):
    return None, policy.history_scores(gen)


def _draft(policy, gen):
    return _lookahead(policy), None


def _streaming(policy, gen):
    return None, None


def _snapkv(policy, gen):
    from dustin.kernels import score_heads

    if "snapkv" not in policy.memo:
        from .model import OBSERVE_ROWS

        last = gen.prompt_lens - 1  # positions < last are cached; observe the 16 before it
        start = (last - OBSERVE_ROWS).clamp_min(0)
        pos = gen.positions(start, OBSERVE_ROWS)
        gen.forward("observe", gen.seq.gather(1, pos), pos)
        queries = policy.m.state("observe", OBSERVE_ROWS)["query_record"][0]
        keys = policy.ws.target_cache.layers[policy.m.profile.history_layer].keys
        policy.memo["snapkv"] = score_heads(queries, keys, last, list(policy.m.profile.history_heads))
    return None, policy.memo["snapkv"]


def quest_scores(q: torch.Tensor, keys: torch.Tensor, seq_lens: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """Per position, the summed (over ``heads``) softmax over pages of Quest's upper bound
    ``sum_d max(q_d * max_d K, q_d * min_d K)`` of the position's page; positions >= seq_lens score 0."""
    batch, kv_heads, capacity, dim = keys.shape
    length = int(seq_lens.max())
    pages = -(-length // PAGE)
    k = keys[:, :, : pages * PAGE].float() if pages * PAGE <= capacity else keys.float()
    k = torch.nn.functional.pad(k, (0, 0, 0, pages * PAGE - k.shape[2])).view(batch, kv_heads, pages, PAGE, dim)
    valid = (torch.arange(pages * PAGE, device=keys.device) < seq_lens[:, None]).view(batch, 1, pages, PAGE, 1)
    kmax = k.masked_fill(~valid, float("-inf")).amax(3)
    kmin = k.masked_fill(~valid, float("inf")).amin(3)
    group = q.shape[1] // kv_heads
    scores = torch.zeros(batch, pages, device=keys.device)
    for h in heads:
        qh = q[:, h, -1].float()[:, None, :]  # [B, 1, D]
        kv = h // group
        bound = torch.maximum(qh * kmax[:, kv], qh * kmin[:, kv]).nan_to_num(neginf=0.0).sum(-1) / dim**0.5
        bound = bound.masked_fill(~valid[:, 0, :, 0, 0], float("-inf"))
        scores += bound.softmax(-1).nan_to_num(0.0)
    out = torch.zeros(batch, capacity, device=keys.device)
    per_pos = scores.repeat_interleave(PAGE, dim=1)[:, : min(capacity, pages * PAGE)]
    out[:, : per_pos.shape[1]] = per_pos
    return out.masked_fill(torch.arange(capacity, device=keys.device) >= seq_lens[:, None], 0.0)


def _quest(policy, gen):
    if policy.q_star is None:
        return None, None
    keys = policy.ws.target_cache.layers[policy.m.profile.history_layer].keys
    return None, quest_scores(policy.q_star, keys, gen.n - 1, list(policy.m.profile.history_heads))


def _oracle(policy, gen):
    from dustin.kernels import score_heads

    last = gen.seq.gather(1, (gen.n - 1)[:, None])
    ids = torch.cat([last, gen.current_draft], 1)
    gen.forward("verify_oracle", ids, gen.positions(gen.n - 1, ids.shape[1]))
    queries = policy.m.state("verify_oracle", ids.shape[1])["query_record"]  # [L, B, Hq, T, D]
    heads = list(range(queries.shape[2]))
    total = None
    for layer, q in enumerate(queries):
        s = score_heads(q, policy.ws.target_cache.layers[layer].keys, gen.n - 1, heads)
        total = s if total is None else total.add_(s)
    return None, total


SELECTOR_SCORES = {
    "dustin": _dustin,
    "history": _history,
    "draft": _draft,
    "streaming": _streaming,
    "snapkv": _snapkv,
    "quest": _quest,
    "oracle": _oracle,
}
