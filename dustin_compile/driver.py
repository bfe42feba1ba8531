"""The speculative-decoding loop for one ``generate`` call (eager Python over compiled steps, gpt-fast style).

Per-row bookkeeping (tensors of shape [B]):
- ``n[b]``: committed tokens of row b (prompt included); tokens live in ``seq[b, :n[b]]``; cache positions
  ``< n[b]-1`` hold their K/V, token ``n[b]-1`` is pending (the first input of the next forward).
- ``draft_need[b]``: how many tokens the draft must (re)process at the start of the next iteration: 1, or 2 when
  every drafted token was accepted (the draft never ran on its own last proposal). The first draft step takes the
  largest need over rows; rows that need less recompute one committed position, which rewrites the same K/V.
- Finished rows stop advancing (``n`` frozen); their forwards rewrite positions past their end, never read.
In ``exact`` mode tokens past ``exact.final[b]`` are provisional (see exact.py).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .exact import ExactChecker
from .sampling import Sampling, accept_greedy, accept_sampling, choose
from .stats import GenerateOutput, GenerateStats, PhaseClock


class Generation:
    def __init__(self, model, ws, prompts: list[torch.Tensor], max_new_tokens: int, sampling: Sampling,
                 eos_ids: list[int], generator: torch.Generator | None, streamer=None, progress: bool = False,
                 use_draft: bool = True) -> None:
        self.m, self.ws, self.cfg = model, ws, model.config
        self.sampling, self.generator, self.streamer, self.progress = sampling, generator, streamer, progress
        self.max_new = max_new_tokens
        # Without the draft the target decodes alone (one row per pass) through the same graphs and selection.
        self.gamma = self.cfg.gamma if use_draft else 0
        self.verify_rows = self.gamma + 1
        device, batch = ws.device, len(prompts)
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
        self.policy = model.make_policy(ws)
        self.exact = ExactChecker(self) if self.cfg.mode == "exact" else None
        self.streamed = int(self.prompt_lens[0])

    # ---- forward helpers --------------------------------------------------------------------------------------
    def forward(self, role: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Run the compiled ``role`` step on ``ids`` at per-row positions ``pos`` (contiguous per row)."""
        rows = ids.shape[1]
        state = self.m.state(role, rows)
        state["seq_lens"].copy_(pos[:, 0])
        if "window_indices" in state:
            window_indices(pos[:, 0], self.cfg.n_sink, self.cfg.draft_window, out=state["window_indices"])
        return self.m.graph(role, rows)(ids, pos)

    def _draft_logits(self, role: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        logits = self.forward(role, ids, pos)[:, -1].float()
        self.policy.after_draft(self, role, ids.shape[1])
        pad = self.m.vocab_size - logits.shape[-1]
        if pad > 0:  # the target's table is padded past the shared tokenizer: the draft never proposes those ids
            logits = torch.nn.functional.pad(logits, (0, pad), value=float("-inf"))
        return logits

    def positions(self, start: torch.Tensor, rows: int) -> torch.Tensor:
        return start[:, None] + torch.arange(rows, device=start.device)

    # ---- phases -----------------------------------------------------------------------------------------------
    def prefill(self) -> None:
        """Fill both caches with every prompt token but the last. Skipped when the workspace already holds these
        prompts: decoding never writes below a prompt's last position, so a repeated prompt reuses its cache."""
        key = tuple(tuple(row[: int(n)].tolist()) for row, n in zip(self.seq, self.prompt_lens))
        if self.ws.prefilled == key:
            return
        self.ws.prefilled = None
        total = int(self.prompt_lens.max()) - 1  # the last prompt token is pending
        chunks = prefill_chunks(total, self.cfg.prefill_chunk)
        batch = self.seq.shape[0]
        for start, rows in tqdm(chunks, desc="prefill", unit="chunk", disable=not self.progress or not chunks):
            pos = self.positions(torch.full((batch,), start, device=self.seq.device), rows)
            ids = self.seq[:, start : start + rows]
            self.forward("prefill_target", ids, pos)
            self.forward("prefill_draft", ids, pos)
            self.stats.prefill_passes += 1
        self.ws.prefilled = key

    def decode_roles(self) -> list[tuple[str, int]]:
        """Every (role, rows) graph this call's decoding may run."""
        cfg = self.cfg
        roles = [("draft_1", 1), ("draft_2", 2)] if self.gamma else []
        roles.append(("verify", self.verify_rows))
        if cfg.mode != "dense":
            roles.append(("verify_dense", self.verify_rows))
        if cfg.mode == "exact":
            roles.append(("check", self.exact.rows))
        if cfg.mode != "dense" and cfg.selector == "oracle":
            roles.append(("verify_oracle", self.verify_rows))
        return roles

    def warm_up(self) -> None:
        """Capture/compile every decode graph now (not inside a timed decode). Each runs once at positions from the
        pending token on, which decoding rewrites before reading: the prefilled cache stays valid."""
        for role, rows in self.decode_roles():
            pos = self.positions(self.n - 1, rows)
            self.forward(role, self.seq.gather(1, pos.clamp_max(self.seq.shape[1] - 1)), pos)

    def draft(self):
        """γ draft tokens per row ``[B, γ]`` and, when sampling, their distributions ``[B, γ, V]``."""
        if not self.gamma:
            empty = torch.zeros(self.seq.shape[0], 0, dtype=torch.long, device=self.seq.device)
            probs = torch.zeros(self.seq.shape[0], 0, self.m.vocab_size, device=self.seq.device)
            return empty, probs if self.sampling.do_sample else None
        first = int(self.draft_need[self.active].max())
        pos = self.positions(self.n - first, first)  # the last `first` committed positions
        logits = self._draft_logits(f"draft_{first}", self.seq.gather(1, pos), pos)
        tokens, probs = [], []
        for i in range(self.gamma):
            if i:
                logits = self._draft_logits("draft_1", tokens[-1][:, None], (self.n - 1 + i)[:, None])
            token, prob = choose(logits, self.sampling, self.generator)
            tokens.append(token)
            probs.append(prob)
            self.stats.draft_passes += 1
        draft_probs = torch.stack(probs, 1) if self.sampling.do_sample else None
        return torch.stack(tokens, 1), draft_probs

    def verify(self, draft_tokens: torch.Tensor, role: str) -> torch.Tensor:
        last = self.seq.gather(1, (self.n - 1)[:, None])
        ids = torch.cat([last, draft_tokens], 1)
        self.stats.target_passes += 1
        return self.forward(role, ids, self.positions(self.n - 1, ids.shape[1])).float()

    def accept(self, draft_tokens, draft_probs, target_logits):
        if self.sampling.do_sample:
            return accept_sampling(draft_tokens, draft_probs, target_logits, self.sampling, self.generator)
        return accept_greedy(draft_tokens, target_logits)

    def limit(self, count: torch.Tensor, tokens: torch.Tensor, start: torch.Tensor):
        """Cut each row's ``count`` new tokens (from ``start``) at max_new_tokens and after the first eos.
        Returns (count, hit_eos)."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        count = torch.minimum(count, self.max_new - (start - self.prompt_lens)).clamp_min(0)
        if not self.eos.numel():
            return count, torch.zeros_like(self.active)
        is_eos = torch.isin(tokens, self.eos) & (steps < count[:, None])
        hit = is_eos.any(1)
        return torch.where(hit, is_eos.long().argmax(1) + 1, count), hit

    def write(self, start: torch.Tensor, tokens: torch.Tensor, count: torch.Tensor) -> None:
        """seq[b, start[b] + j] = tokens[b, j] for j < count[b]."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        where = (start[:, None] + steps).clamp_max(self.seq.shape[1] - 1)
        keep = steps < count[:, None]
        self.seq.scatter_(1, where, torch.where(keep, tokens, self.seq.gather(1, where)))

    def commit(self, n_accepted: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Write each active row's accepted tokens + correction; returns the count committed per row."""
        count, hit = self.limit(n_accepted + 1, tokens, self.n)
        count = torch.where(self.active, count, torch.zeros_like(count))
        self.write(self.n, tokens, count)
        for b in self.active.nonzero().flatten().tolist():
            self.stats.accepted[b] += int(min(n_accepted[b], count[b]))
            self.stats.row_passes[b] += 1
        self.n += count
        self.draft_need = torch.where(n_accepted == self.gamma, 2, 1)
        self.active &= ~(hit | (self.n - self.prompt_lens >= self.max_new))
        return count

    # ---- loop -------------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One iteration: draft, select, verify, accept, commit (and in exact mode, maybe a dense check)."""
        self.policy.begin(self)
        with self.clock("draft"):
            draft_tokens, draft_probs = self.draft()
        self.current_draft = draft_tokens
        with self.clock("select"):
            role = self.policy.before_verify(self)
        with self.clock("verify"):
            logits = self.verify(draft_tokens, role)
        dense = role != "verify" or self.cfg.mode == "dense"
        self.stats.dense_passes += int(dense)
        self.stats.sparse_passes += int(not dense)
        n_accepted, tokens = self.accept(draft_tokens, draft_probs, logits)
        self.policy.after_verify(self, n_accepted, role)
        start = self.n.clone()
        count = self.commit(n_accepted, tokens)
        if self.exact is not None:
            with self.clock("verify"):
                self.exact.after_commit(self, start, count, logits, role)

    def stream(self) -> int:
        """Hand row 0's newly final tokens to the streamer; returns how many new tokens are final overall."""
        final = self.exact.final if self.exact is not None else self.n
        if self.streamer is not None and int(final[0]) > self.streamed:
            self.streamer.put(self.seq[0, self.streamed : int(final[0])].cpu())
            self.streamed = int(final[0])
        return int((final - self.prompt_lens).sum())

    def run(self) -> GenerateOutput:
        with self.clock("total"):
            with self.clock("prefill"):
                self.prefill()
            if self.streamer is not None:
                self.streamer.put(self.seq[0, : int(self.prompt_lens[0])].cpu())
            bar = tqdm(total=self.max_new * len(self.n), desc="generate", unit="tok",
                       disable=not self.progress or self.streamer is not None)
            while bool(self.active.any()):
                self.step()
                bar.update(self.stream() - bar.n)
            bar.close()
            if self.streamer is not None:
                self.streamer.end()
        s = self.stats
        s.time_other = s.time_total - s.time_prefill - s.time_draft - s.time_select - s.time_verify
        s.new_tokens = (self.n - self.prompt_lens).tolist()
        return GenerateOutput(sequences=None, stats=s)


def window_indices(seq_lens: torch.Tensor, n_sink: int, window: int, out: torch.Tensor) -> torch.Tensor:
    """The draft's own KV window: positions ``[0, n_sink)`` and ``[L - window, L)`` of each row (L = seq_lens),
    ascending, -1 padded (all of ``[0, L)`` when L <= n_sink + window)."""
    width = n_sink + window
    slots = torch.arange(width, device=seq_lens.device)
    lens = seq_lens[:, None]
    # Short rows: slot j is position j. Long rows: sinks, then the recent window.
    long_pos = torch.where(slots < n_sink, slots, lens - window + (slots - n_sink))
    pos = torch.where(lens <= width, slots.expand_as(long_pos), long_pos)
    return out.copy_(torch.where(pos < lens, pos, -1))


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
