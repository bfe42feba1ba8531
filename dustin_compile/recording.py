"""Recording dense speculative trajectories for calibration (see calibrate.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dustin.kernels import score_heads

from .config import DustinConfig
from .driver import Generation
from .model import DustinModel
from .profile import default_profile
from .sampling import Sampling
from .state import DecodeState


@dataclass
class WindowRecord:
    """One verification window of one text (batch of 1), reduced to what calibration scores.

    truth: ``[Lt, B, S]`` each target layer's attention over the history, averaged over heads and rows.
    hist: ``[Lt, Hq, B, S]`` each target head's history score (``q*`` of the last committed token).
    draft: ``[Ld, Hd, B, S]`` each draft head's lookahead score (summed over the drafted tokens).
    """

    seq_lens: torch.Tensor
    truth: torch.Tensor
    hist: torch.Tensor
    draft: torch.Tensor

    def signal_heads(self, kind: str, layer: int) -> list[int]:
        return list(range((self.hist if kind == "hist" else self.draft).shape[1]))

    def signal(self, kind: str, layer: int, heads: tuple[int, ...]) -> torch.Tensor:
        table = self.hist if kind == "hist" else self.draft
        return table[layer, list(heads)].sum(0)

    def kept_mass(self, indices: torch.Tensor) -> torch.Tensor:
        """Per target layer: attention mass inside ``indices`` (mean over the batch)."""
        return kept_mass(self.truth, indices)


def layer_attention(queries: torch.Tensor, keys: list[torch.Tensor], seq_lens: torch.Tensor) -> torch.Tensor:
    """``[L, B, S]``: each layer's attention over the history positions ``< seq_lens`` (softmax over those only),
    averaged over all query heads and rows. ``queries [L, B, Hq, T, D]`` (query taps), ``keys`` one ``[B, Hkv, S,
    D]`` cache per layer. Each row of the result sums to 1 (0 for an empty history)."""
    q_heads, rows = queries.shape[2], queries.shape[3]
    truth = torch.stack([score_heads(q, k, seq_lens, list(range(q_heads))) for q, k in zip(queries, keys)])
    return truth.div_(q_heads * rows)


def kept_mass(truth: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Per layer: the share of ``truth [L, B, S]`` (``layer_attention``) on the positions ``indices [B, K]``
    (-1 = padding), mean over the batch: the selection's *recovery*."""
    valid = (indices >= 0).to(truth.dtype)
    picked = truth.gather(2, indices.clamp_min(0)[None].expand(truth.shape[0], -1, -1))
    return (picked * valid).sum(2).mean(1)


class QueryRecorder:
    """Reads the query taps of a recording ``DustinModel`` after each draft step and each verification."""

    def __init__(self, model: DustinModel) -> None:
        self.model, self.iterations, self.draft_rows = model, [], []

    def drafted(self, role: str, rows: int) -> None:
        record = self.model.query_record(role, rows)  # [Ld, B, Hd, rows, D]
        self.draft_rows.append(record[:, :, :, -1:].clone())

    def verified(self, seq_lens: torch.Tensor, role: str, rows: int, n_accepted: torch.Tensor) -> None:
        queries = self.model.query_record(role, rows).clone()  # [Lt, B, Hq, T, D]
        self.iterations.append((seq_lens.clone(), queries, n_accepted.clone(), torch.cat(self.draft_rows, 3)))
        self.draft_rows = []


def record_windows(target, draft, prompts: list[torch.Tensor], *, gamma: int, windows: int,
                   progress: bool = True) -> list[WindowRecord]:
    """Dense speculative decoding of each prompt, recording ``windows`` verification windows of every layer."""
    config = DustinConfig(mode="dense", gamma=gamma, backend="eager")
    model = DustinModel(target, draft, config, default_profile(target, draft, warn=False), record_queries=True)
    out: list[WindowRecord] = []
    for ids in tqdm(prompts, desc="record", unit="text", disable=not progress):
        max_new = (windows + 1) * (gamma + 1)
        state = model.decode_state(1, len(ids), max_new)
        recorder = QueryRecorder(model)
        with torch.no_grad():
            Generation(model, state, [ids.to(model.device)], max_new, Sampling(), [], None, recorder=recorder).run()
        out += _reduce(state, recorder.iterations[: windows + 1])
    return out


def _reduce(state: DecodeState, iterations) -> list[WindowRecord]:
    """Turn raw queries into per-window truth and signals, using the final caches (keys never change)."""
    t_keys = [layer.keys for layer in state.caches.target.layers]
    d_keys = [layer.keys for layer in state.caches.draft.layers]
    records = []
    for (seq_lens, queries, _, drafts), (prev_lens, prev_queries, prev_acc, _) in zip(iterations[1:], iterations):
        q_heads = queries.shape[2]
        truth = layer_attention(queries, t_keys, seq_lens)
        # q*: the previous verification's query of its last accepted row (the last history position).
        b, h, _, d = prev_queries.shape[1:]
        q_star = prev_queries.gather(3, prev_acc.view(1, b, 1, 1, 1).expand(len(t_keys), b, h, 1, d))
        hist = torch.stack([torch.stack([score_heads(q, k, seq_lens, [head]) for head in range(q_heads)])
                            for q, k in zip(q_star, t_keys)])
        d_heads = drafts.shape[2]
        lookahead = torch.stack([torch.stack([score_heads(q, k, seq_lens, [head]) for head in range(d_heads)])
                                 for q, k in zip(drafts, d_keys)])
        records.append(WindowRecord(seq_lens.clone(), truth, hist, lookahead))
    return records
