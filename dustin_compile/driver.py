"""The speculative-decoding loop for one ``generate`` call (eager Python over compiled steps, gpt-fast style).

Per-row bookkeeping on the host side of the loop (tensors of shape [B]):
- ``n[b]``: committed tokens of row b (prompt included); tokens live in ``seq[b, :n[b]]``; cache positions
  ``< n[b]-1`` hold exact K/V, token ``n[b]-1`` is pending (the first input of the next forward).
- ``draft_need[b]``: how many tokens the draft must (re)process at the start of the next iteration: 1, or 2 when
  every drafted token was accepted (the draft never ran on its own last proposal). The first draft step takes the
  largest need over rows; rows that need less recompute one committed position, which rewrites the same K/V.
- Finished rows stop advancing (``n`` frozen); their forwards rewrite positions past their end, never read.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .sampling import Sampling, accept_greedy, accept_sampling, choose
from .stats import GenerateOutput, GenerateStats, PhaseClock


class Generation:
    def __init__(self, model, ws, prompts: list[torch.Tensor], max_new_tokens: int, sampling: Sampling,
                 eos_ids: list[int], generator: torch.Generator | None, streamer=None, progress: bool = False) -> None:
        self.m, self.ws, self.cfg = model, ws, model.config
        self.sampling, self.generator, self.streamer = sampling, generator, streamer
        self.progress = progress
        self.max_new = max_new_tokens
        device = ws.target_cache.write_pos.device
        batch = len(prompts)
        self.prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
        self.seq = torch.zeros(batch, ws.capacity, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            self.seq[b, : len(p)] = p
        self.n = self.prompt_lens.clone()
        self.draft_need = torch.ones(batch, dtype=torch.long, device=device)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self.stats = GenerateStats(accepted=[0] * batch, row_passes=[0] * batch)
        self.clock = PhaseClock(self.stats, device)
        self.arange = torch.arange(ws.capacity, device=device)
        self.policy = model.make_policy(ws)

    # ---- forward helpers --------------------------------------------------------------------------------------
    def _run(self, graph, role: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.ws.state[role]["seq_lens"].copy_(pos[:, 0])
        return graph(ids, pos)

    def _draft_logits(self, graph, role: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        logits = self._run(graph, role, ids, pos)[:, -1].float()
        pad = self.m.vocab_size - logits.shape[-1]
        if pad > 0:  # the target's table is padded past the shared tokenizer: the draft never proposes those ids
            logits = torch.nn.functional.pad(logits, (0, pad), value=float("-inf"))
        return logits

    # ---- phases -----------------------------------------------------------------------------------------------
    def prefill(self) -> None:
        total = int(self.prompt_lens.max()) - 1  # the last prompt token is pending
        chunks = prefill_chunks(total, self.cfg.prefill_chunk)
        for start, rows in tqdm(chunks, desc="prefill", unit="chunk", disable=not self.progress or not chunks):
            pos = (start + torch.arange(rows, device=self.seq.device)).expand(self.seq.shape[0], rows)
            ids = self.seq[:, start : start + rows]
            self._run(self.m.graph("prefill_target", rows), "prefill_target", ids, pos)
            self._run(self.m.graph("prefill_draft", rows), "prefill_draft", ids, pos)
            self.stats.prefill_passes += 1

    def draft(self):
        """γ draft tokens per row ``[B, γ]`` and, when sampling, their distributions ``[B, γ, V]``."""
        first = int(self.draft_need[self.active].max())
        offsets = torch.arange(first, device=self.seq.device) - first
        pos = self.n[:, None] + offsets  # the last `first` committed positions
        role = f"draft_{first}"
        logits = self._draft_logits(self.m.graph(role), role, self.seq.gather(1, pos), pos)
        tokens, probs = [], []
        for i in range(self.cfg.gamma):
            if i:
                pos = (self.n - 1 + i)[:, None]
                logits = self._draft_logits(self.m.graph("draft_1"), "draft_1", tokens[-1][:, None], pos)
            token, prob = choose(logits, self.sampling, self.generator)
            tokens.append(token)
            probs.append(prob)
            self.stats.draft_passes += 1
        draft_probs = torch.stack(probs, 1) if self.sampling.do_sample else None
        return torch.stack(tokens, 1), draft_probs

    def verify(self, draft_tokens: torch.Tensor) -> torch.Tensor:
        last = self.seq.gather(1, (self.n - 1)[:, None])
        ids = torch.cat([last, draft_tokens], 1)
        pos = self.n[:, None] - 1 + torch.arange(ids.shape[1], device=ids.device)
        self.stats.target_passes += 1
        return self._run(self.m.graph("verify"), "verify", ids, pos).float()

    def accept(self, draft_tokens, draft_probs, target_logits):
        if self.sampling.do_sample:
            return accept_sampling(draft_tokens, draft_probs, target_logits, self.sampling, self.generator)
        return accept_greedy(draft_tokens, target_logits)

    def commit(self, n_accepted: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Write each active row's accepted tokens + correction, cut at max_new_tokens and at the first eos."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        count = torch.minimum(n_accepted + 1, self.max_new - (self.n - self.prompt_lens))
        count = torch.where(self.active, count, torch.zeros_like(count))
        if self.eos.numel():
            is_eos = torch.isin(tokens, self.eos) & (steps < count[:, None])
            hit = is_eos.any(1)
            count = torch.where(hit, is_eos.long().argmax(1) + 1, count)
        else:
            hit = torch.zeros_like(self.active)
        keep = steps < count[:, None]
        where = self.n[:, None] + steps
        self.seq.scatter_(1, where, torch.where(keep, tokens, self.seq.gather(1, where)))
        for b in self.active.nonzero().flatten().tolist():
            self.stats.accepted[b] += int(min(n_accepted[b], count[b]))
            self.stats.row_passes[b] += 1
        self.n += count
        self.draft_need = torch.where(n_accepted == self.cfg.gamma, 2, 1)
        done = hit | (self.n - self.prompt_lens >= self.max_new)
        self.active &= ~done
        return count

    def run(self) -> GenerateOutput:
        with self.clock("total"):
            with self.clock("prefill"):
                self.prefill()
            if self.streamer is not None:
                self.streamer.put(self.seq[0, : int(self.prompt_lens[0])].cpu())
            bar = tqdm(total=self.max_new * len(self.n), desc="generate", unit="tok",
                       disable=not self.progress or self.streamer is not None)
            while bool(self.active.any()):
                bar.update(int(self.step().sum()))
            bar.close()
            if self.streamer is not None:
                self.streamer.end()
        s = self.stats
        s.time_other = s.time_total - s.time_prefill - s.time_draft - s.time_select - s.time_verify
        s.new_tokens = (self.n - self.prompt_lens).tolist()
        return GenerateOutput(sequences=None, stats=s)

    def step(self) -> torch.Tensor:
        """One iteration: draft, select, verify, accept, commit. Returns the tokens committed per row."""
        with self.clock("draft"):
            draft_tokens, draft_probs = self.draft()
        with self.clock("select"):
            dense = self.policy.before_verify(self)
        with self.clock("verify"):
            logits = self.verify(draft_tokens)
        if dense:
            self.stats.dense_passes += 1
        else:
            self.stats.sparse_passes += 1
        n_accepted, tokens = self.accept(draft_tokens, draft_probs, logits)
        self.policy.after_verify(self, n_accepted)
        start = self.n.clone()
        count = self.commit(n_accepted, tokens)
        if self.streamer is not None and int(count[0]):
            self.streamer.put(self.seq[0, int(start[0]) : int(start[0] + count[0])].cpu())
        return count


def prefill_chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    """(start, rows) pieces covering positions [0, total). The last piece is rounded up to a power of two (≥ 16),
    so prompts of any length reuse a handful of compiled shapes; the padded rows write past the prompt."""
    pieces, start = [], 0
    while start < total:
        left = total - start
        rows = chunk if left >= chunk else min(chunk, max(16, 1 << (left - 1).bit_length()))
        pieces.append((start, rows))
        start += rows
    return pieces
