"""``draft_vocab=K``: the draft scores only the K most frequent tokens of a calibration text (the FR-Spec idea).

The draft's LM head (for the real 0.5B draft: 151,936 x 896, a quarter of its weights) is streamed at every draft
step. Scoring only the K token ids that carry most of a text's mass reads K rows instead. It is lossless: the draft
only proposes, the target verifies every token (greedy: its argmax; sampling: the draft distribution q is zero
outside the K ids, which speculative sampling handles exactly since it accepts with min(1, p/q) and resamples from
max(p - q, 0)). What it costs is acceptance, where the target's token falls outside the K ids.

``restricted_draft`` is a view of the draft whose head holds those K rows (a copy of K rows; everything else is
shared); ``DustinModel`` maps its logits back to the full vocabulary with -inf elsewhere (``expand_logits``).
The ids come from ``DustinProfile.frequent_tokens`` (``dustin.calibrate`` counts them over its texts;
``frequent_tokens`` counts any corpus).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

KEEP = 32768  # ids a profile keeps (most frequent first): enough for any draft_vocab worth using


def frequent_tokens(token_ids: Iterable[torch.Tensor | list[int]], vocab_size: int, keep: int = KEEP) -> tuple[int, ...]:
    """Token ids by descending count over ``token_ids`` (one tensor or list per text), ties by id; ids never seen
    follow in id order, so any prefix length up to ``keep`` is defined."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids in token_ids:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise ValueError(f"token ids must lie in [0, {vocab_size}): tokenize with the pair's tokenizer")
        counts += torch.bincount(ids, minlength=vocab_size)
    order = torch.sort(-counts, stable=True).indices  # stable: equal counts keep id order
    return tuple(order[:keep].tolist())


def restricted_draft(draft: torch.nn.Module, ids: torch.Tensor) -> torch.nn.Module:
    """A view of ``draft`` whose output embedding holds only the rows ``ids`` (sorted, distinct)."""
    head = draft.get_output_embeddings()
    if head is None or not isinstance(head, torch.nn.Linear):
        raise ValueError("draft_vocab needs a draft whose LM head is a torch.nn.Linear")
    small = torch.nn.Linear(head.in_features, len(ids), bias=head.bias is not None,
                            device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        small.weight.copy_(head.weight[ids])
        if head.bias is not None:
            small.bias.copy_(head.bias[ids])
    small.requires_grad_(False)
    view = copy.copy(draft)  # shallow: its own module dict below; every other module and parameter is shared
    view.__dict__["_modules"] = dict(draft._modules)
    name = next((n for n, m in draft.named_children() if m is head), None)
    if name is None:
        raise ValueError("draft_vocab needs a draft whose LM head is a direct child module (lm_head)")
    setattr(view, name, small)
    return view


def expand_logits(logits: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, K]`` logits over ``ids`` -> ``[B, vocab_size]`` with -inf at every other id."""
    full = logits.new_full((logits.shape[0], vocab_size), float("-inf"))
    full[:, ids] = logits
    return full
