"""The speculative-decoding loop of one ``generate`` call (eager Python over compiled steps, gpt-fast style).

``Generation.step`` is one iteration, top to bottom: draft → select → verify → accept → commit → (exact) check.
Everything it decides with is a function of tensors (``policy.choose_selection``, ``selectors``, ``sampling``,
``ExactCheck.judge``); this class alone writes the per-row bookkeeping (tensors of shape [B]):

- ``n[b]``: committed tokens of row b (prompt included); tokens live in ``seq[b, :n[b]]``; cache positions
  ``< n[b]-1`` hold their K/V, token ``n[b]-1`` is pending (the first input of the next forward).
- ``draft_need[b]``: how many tokens the draft must (re)process at the start of the next iteration (positions
  ``n[b]-draft_need[b] .. n[b]-1``): 1, or 2 when every drafted token was accepted (the draft never ran on its own
  last proposal), or more after iterations without speculation (``gamma="auto"`` chose 0: the target decoded alone
  and the draft saw none of those tokens). Always 1 for a self-draft, which shares the target's cache: it must never
  overwrite the K/V verification wrote (selfdraft.py). The first draft step takes the largest need over the rows
  not settled (a larger need is met in pieces of ``CATCH_UP`` rows first; the last piece is rounded up to 4 or 8
  rows, so that few shapes are compiled); rows that need less recompute committed positions, which rewrites the
  same K/V.
- ``active[b]``: row b still generates. Finished rows stop advancing (``n`` frozen); their forwards rewrite
  positions past their end, never read.
- ``final[b]`` (exact mode): tokens confirmed by a dense pass; those past it are provisional (exact.py). With
  ``gamma="auto"``, whenever every token is final the planner chooses how the next tokens are verified: densely
  (final at once) or sparsely with a check after ``interval`` provisional tokens (adaptive.py).
- ``q_star``: the history query (the target's query of the last committed token at the profile's layer).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .cache import prefill_chunks, window_indices
from .draftvocab import expand_logits
from .exact import ExactCheck
from .policy import Selection, choose_selection
from .sampling import Sampling, accept_greedy, accept_sampling, choose
from .selectors import LOOKAHEAD_SELECTORS, OBSERVE_ROWS, Signals, history_scores, oracle_scores, quest_scores
from .selectors import snapkv_scores
from .stats import GenerateOutput, GenerateStats, PhaseClock

CATCH_UP = 8  # rows per draft catch-up step after gamma=0 iterations (gamma="auto"): draft_1/2/4/8 are all it needs


class Generation:
    def __init__(self, model, state, prompts: list[torch.Tensor], max_new_tokens: int, sampling: Sampling,
                 eos_ids: list[int], generator: torch.Generator | None, streamer=None, progress: bool = False,
                 use_draft: bool = True, recorder=None, rules=None, stream_prompt: bool = True) -> None:
        self.model, self.state, self.config = model, state, model.config
        self.sampling, self.generator, self.streamer, self.progress = sampling, generator, streamer, progress
        self.recorder = recorder  # calibration: reads the query taps after each draft step and verification
        # Prefix-dependent logits processors and stopping criteria (transformers' custom_generate: hf_generate.py):
        # ``rules.process(gen, logits [B, R, V], base [B], extra [B, K])`` rewrites row r's logits as transformers
        # would given that row's own prefix, seq[b, :base[b]] + extra[b, :K - R + 1 + r]; ``rules.stops(gen, start,
        # tokens, count)`` says which new tokens complete a stopping criterion. None: neither exists.
        self.rules = rules
        self.stream_prompt = stream_prompt  # False when the caller already streamed the prompt (transformers does)
        self.max_new = max_new_tokens
        # Without the draft the target decodes alone (one row per pass) through the same graphs and selection.
        # gamma="auto": the planner (adaptive.py) sets this iteration's gamma in 0..gamma_max before each step.
        self.gamma_max = self.config.max_draft if use_draft else 0
        self.planner = getattr(model, "planner", None) if use_draft and self.config.adaptive else None
        if self.planner is not None:
            self.planner.new_batch()  # these rows have no previous iteration (adaptive.py, STATE_PRIOR)
        self.gamma = self.gamma_max
        self.verify_rows = self.gamma + 1
        # Exact mode: verify densely this iteration (gamma="auto" chose to); a check is due at `interval` provisional
        # tokens (exact_every, or fewer as the planner chooses).
        self.dense_segment, self.interval, self.segment_rate = False, self.config.exact_every, None
        self.fresh = False  # a graph ran for the first time this iteration (its time is a compile: not a cost)
        device, batch = state.seq_lens.device, len(prompts)
        self.prompt_lens = torch.tensor([len(p) for p in prompts], device=device)
        self.seq = torch.zeros(batch, state.caches.capacity, dtype=torch.long, device=device)
        for b, p in enumerate(prompts):
            self.seq[b, : len(p)] = p
        self.n = self.prompt_lens.clone()
        self.final = self.prompt_lens.clone()
        self.draft_need = torch.ones(batch, dtype=torch.long, device=device)
        self.active = torch.ones(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
        self.q_star: torch.Tensor | None = None
        self.since_dense = 0  # sparse verifications since the last dense one (guarded mode's refresh)
        self.prompt_window: torch.Tensor | None = None  # SnapKV's scores, chosen once per call
        # Sampling: signals computed from this iteration's drafted tokens (lookahead, oracle) are held back one
        # iteration, so that a selection never depends on the tokens it verifies (docs/design.md, exact mode).
        self.held: dict[str, torch.Tensor | None] = {"lookahead": None, "oracle": None}
        self.exact = (ExactCheck(self.config, batch, model.vocab_size, sampling, device)
                      if self.config.mode == "exact" else None)
        self.lookahead_taps = self.gamma_max > 0 and bool(model.plan("draft_1").score_taps)
        self.lookahead = self.lookahead_taps
        self.stats = GenerateStats(accepted=[0] * batch, row_passes=[0] * batch)
        self.clock = PhaseClock(self.stats, device)
        self.streamed = int(self.prompt_lens[0])

    # ---- one iteration ----------------------------------------------------------------------------------------
    def step(self) -> None:
        """(gamma="auto": choose gamma) → draft → select → verify → accept → commit → (exact mode) check."""
        if self.planner is not None:
            self.choose_gamma()
        started, self.fresh = time.perf_counter(), False
        was_active = self.active.clone() if self.planner is not None else None
        self.catch_up = None  # (seconds, tokens) of the draft's catch-up this iteration (gamma="auto")
        with self.clock("draft"):
            drafted, draft_probs = self.draft()
        with self.clock("select"):
            selection = self.select(drafted)
        with self.clock("verify"):
            logits = self.verify(drafted, selection.role)
            if self.rules is not None:  # row j's distribution given its own prefix: committed text + drafted[:j]
                logits = self.rules.process(self, logits, self.n, drafted)
        costs = dict(self.clock.last)
        if self.sampling.do_sample:
            n_accepted, tokens = accept_sampling(drafted, draft_probs, logits, self.sampling, self.generator)
        else:
            n_accepted, tokens = accept_greedy(drafted, logits)
        if self.recorder is not None:
            self.recorder.verified(self.n - 1, selection.role, self.verify_rows, n_accepted)
        self.keep_history_query(selection.role, n_accepted)
        start = self.n.clone()
        count = self.commit(n_accepted, tokens)
        self.since_dense = self.since_dense + 1 if selection.sparse else 0
        self.stats.sparse_passes += int(selection.sparse)
        self.stats.dense_passes += int(not selection.sparse)
        if self.planner is not None:
            rows = was_active.nonzero().flatten().tolist()
            self.learn(selection.role, n_accepted[was_active].tolist(), rows, costs, time.perf_counter() - started)
        if self.exact is not None:
            if selection.role == "verify_dense":
                # A dense verification from an all-final prefix is itself exact: its tokens are final at once.
                self.final = torch.where(self.final == start, self.n, self.final)
            else:
                self.exact.remember(start - self.final, count, logits)
            if self.exact.due(self.n - self.final, self.active, self.interval):
                self.fresh = False
                with self.clock("verify"):
                    kept, rolled = self.check()
                if self.planner is not None:
                    self.planner.record_check(kept, rolled)
                    if not self.fresh:  # a first check is a compile, not a cost
                        self.planner.record_cost("check", 1, self.context(), self.clock.last["verify"])

    # ---- the phases -------------------------------------------------------------------------------------------
    def draft(self):
        """γ draft tokens per row ``[B, γ]`` and, when sampling, their distributions ``[B, γ, V]``. The draft's
        score taps add its lookahead scores over the committed history into ``state.lookahead``."""
        batch, device = self.seq.shape[0], self.seq.device
        if not self.gamma:
            probs = torch.zeros(batch, 0, self.model.vocab_size, device=device) if self.sampling.do_sample else None
            return torch.zeros(batch, 0, dtype=torch.long, device=device), probs
        if self.lookahead:
            self.state.lookahead.zero_()
            self.state.lookahead_seq_lens.copy_(self.n - 1).masked_fill_(self.settled(), 0)
        live = ~self.settled()  # active rows, and in exact mode stopped rows a check may still reopen
        first = int(self.draft_need[live].max())
        capacity = self.seq.shape[1]
        began = time.perf_counter()
        while first > CATCH_UP:  # catching up after gamma=0 iterations: pieces of CATCH_UP rows, oldest first
            start = (self.n - first).clamp_min(0)
            pos = self.positions(start, CATCH_UP)
            self.forward(f"draft_{CATCH_UP}", self.seq.gather(1, pos.clamp_max(capacity - 1)), pos)
            first -= CATCH_UP
        rows = first if first <= 2 else 1 << (first - 1).bit_length()  # 1, 2, 4 or 8: few compiled shapes
        start = (self.n - rows).clamp_min(0)  # the last `rows` committed positions (from 0 in a shorter row)
        pos = self.positions(start, rows)
        logits = self.draft_logits(f"draft_{rows}", self.seq.gather(1, pos.clamp_max(capacity - 1)), pos,
                                   last=self.n - 1 - start)
        if rows > 2 and self.planner is not None:  # what the gamma=0 iterations before cost the draft, deferred
            if self.seq.device.type == "cuda":
                torch.cuda.synchronize()
            self.catch_up = (time.perf_counter() - began, int(self.draft_need[live].max()) - 1)
        tokens, probs = [], []
        for i in range(self.gamma):
            if i:
                logits = self.draft_logits("draft_1", tokens[-1][:, None], (self.n - 1 + i)[:, None])
            if self.rules is not None:  # the draft proposes from the processed distribution, as verification judges
                done = torch.stack(tokens, 1) if tokens else self.seq[:, :0]
                logits = self.rules.process(self, logits[:, None], self.n, done)[:, 0]
            token, prob = self.propose(logits, i)
            tokens.append(token)
            probs.append(prob)
            self.stats.draft_passes += 1
        return torch.stack(tokens, 1), torch.stack(probs, 1) if self.sampling.do_sample else None

    def propose(self, logits: torch.Tensor, step: int):
        """The draft's ``step``-th token per row from its ``logits [B, V]``: (tokens [B], probs [B, V] or None).
        Teacher forcing (dustin.fidelity) overrides this to propose the text's own next tokens."""
        return choose(logits, self.sampling, self.generator)

    def select(self, drafted: torch.Tensor) -> Selection:
        if self.dense_segment:  # exact mode, gamma="auto": a dense verification needs no selection
            return Selection("verify_dense", sparse=False)
        selection = choose_selection(self.config, self.model.draft_share, self.signals(drafted), self.n - 1,
                                     self.active, self.since_dense)
        if selection.indices is not None:
            self.state.indices.copy_(selection.indices)
            self.stats.recovery.append(float(selection.recovery[self.active].mean()))
        return selection

    def verify(self, drafted: torch.Tensor, role: str) -> torch.Tensor:
        last = self.seq.gather(1, (self.n - 1)[:, None])
        ids = torch.cat([last, drafted], 1)
        self.stats.target_passes += 1
        return self.forward(role, ids, self.positions(self.n - 1, ids.shape[1])).float()

    def commit(self, n_accepted: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Write each active row's accepted tokens + correction; returns the count committed per row."""
        count, hit = self.limit(n_accepted + 1, tokens, self.n)
        count = torch.where(self.active, count, torch.zeros_like(count))
        self.write(self.n, tokens, count)
        for b in self.active.nonzero().flatten().tolist():
            self.stats.accepted[b] += int(min(n_accepted[b], count[b]))
            self.stats.row_passes[b] += 1
        self.n += count
        if self.state.caches.shared:
            pass  # a self-draft reads the verification's exact K/V of every position: it never lags
        elif self.gamma:
            self.draft_need = torch.where(n_accepted == self.gamma, 2, 1)
        else:  # no draft this iteration: it lags by every committed token
            self.draft_need = self.draft_need + count
        self.active &= ~(hit | (self.n - self.prompt_lens >= self.max_new))
        return count

    def check(self) -> tuple[list[int], list[bool]]:
        """Exact mode: one dense pass over every row's provisional tokens; roll back what it does not confirm.
        Returns, per row that held provisional tokens, how many stood and whether the next was rolled back."""
        rows = self.exact.rows
        pos = self.positions(self.final - 1, rows)
        ids = self.seq.gather(1, pos.clamp_max(self.seq.shape[1] - 1))
        logits = self.forward("check", ids, pos).float()[:, :-1]  # row i predicts position final + i
        if self.rules is not None:  # row i's prefix: the final text + the provisional tokens before position final + i
            logits = self.rules.process(self, logits, self.final, ids[:, 1:-1])
        self.stats.target_passes += 1
        self.stats.dense_passes += 1
        provisional = self.n - self.final
        result = self.exact.judge(logits, ids[:, 1:], provisional, self.generator)
        keep, rolled = result.keep, result.keep < provisional
        new_n = torch.where(rolled, self.final + keep + 1, self.n)
        self.write(self.final + keep, result.correction[:, None], rolled.long())
        self.stats.rolled_back += int((self.n - new_n + rolled.long()).sum())
        _, hit = self.limit(torch.ones_like(keep), result.correction[:, None], self.final + keep)
        reopened = rolled & ~hit & (new_n - self.prompt_lens < self.max_new)
        self.active = torch.where(rolled, reopened, self.active)
        # Re-sync: the draft's K/V is valid below n - draft_need and, after a rollback, below the corrected position.
        if not self.state.caches.shared:
            valid = torch.minimum(self.n - self.draft_need, new_n - 1)
            self.draft_need = torch.where(rolled, new_n - valid, self.draft_need)
        checked = provisional > 0
        self.n = new_n
        self.final = new_n.clone()
        return keep[checked].tolist(), rolled[checked].tolist()

    # ---- gamma="auto" -----------------------------------------------------------------------------------------
    def context(self) -> int:
        return int(self.n[self.active].max()) if bool(self.active.any()) else int(self.n.max())

    def choose_gamma(self) -> None:
        """This iteration's gamma: the most expected tokens per second under the measured costs (adaptive.py). In
        exact mode, with every token final, first how to verify: densely, or sparsely until a check is due."""
        context = self.context()
        lag, horizon, live = self.lag_and_remaining()
        remaining = max(horizon, default=0)
        # Costs are kept per number of live rows (a finished row's step is cheaper): this iteration's choice and the
        # costs it measures belong to this count; a batch's tail borrows the full batch's where its own are partial.
        # The tokens each row has left tell the planner how far the batch's end is (adaptive.py, "the batch's end").
        self.planner.live, self.planner.tail, self.planner.horizon = live, live < self.n.shape[0], horizon
        if self.exact is not None and bool((self.final == self.n).all()):
            kind, interval, self.segment_rate = self.planner.choose_verification(context, remaining)
            self.dense_segment = kind == "verify_dense"
            if not self.dense_segment:
                self.interval = interval
                self.stats.intervals[interval] = self.stats.intervals.get(interval, 0) + 1
        gamma, rate = self.planner.choose(context, "verify_dense" if self.dense_segment else "verify", lag, remaining)
        self.gamma, self.verify_rows = gamma, gamma + 1
        self.lookahead = self.lookahead_taps and gamma > 0
        self.stats.gammas[gamma] = self.stats.gammas.get(gamma, 0) + 1
        self.stats.decisions.append((context, gamma, self.planner.last["why"], self.planner.last["rates"]))
        if self.exact is not None:  # the segment's rate counts its checks and rollbacks; gamma's alone does not
            rate = self.segment_rate if rate is not None else None
        if rate is not None:
            self.stats.predicted.append(rate * int(self.active.sum()))

    def lag_and_remaining(self) -> tuple[int, list[int], int]:
        """(tokens the draft must catch up on before it can draft again, beyond the one or two every iteration
        re-runs; the new tokens each row not settled may still generate, those with any left; the rows not
        settled): what resuming speculation costs, over how many tokens it can pay off (the batch runs until its
        slowest row is done), and how many rows a step computes in full. One host read, like the loop's own per
        iteration."""
        live = ~self.settled()
        need = torch.where(live, self.draft_need, 0).max()
        left = torch.where(live, self.prompt_lens + self.max_new - self.n, 0)
        need, rows, *left = torch.cat([torch.stack([need, live.sum()]), left]).tolist()
        if self.state.caches.shared:  # a self-draft reads the target's cache: it never lags
            need = 0
        return (need - 1 if need > 2 else 0), [r for r in left if r > 0], max(rows, 1)

    def learn(self, role: str, accepted: list[int], rows: list[int], costs: dict[str, float], total: float) -> None:
        """Feed this iteration's costs and the acceptance of its active rows to the planner. A first call of a
        graph is a capture or a compile, not a cost; a dense refresh in a sparse mode is not what the planner
        chooses between (exact mode's dense verifications are)."""
        self.planner.record_acceptance(self.gamma, accepted, rows)
        if self.fresh or (role != "verify" and self.exact is None):
            return
        context, draft, verify = self.context(), costs.get("draft", 0.0), costs.get("verify", 0.0)
        select = costs.get("select", 0.0)
        if self.catch_up is not None:  # charged to the gamma=0 iterations that caused it, per token
            seconds, tokens = self.catch_up
            draft = max(0.0, draft - seconds)
            if tokens > 0:
                self.planner.record_cost("catch_up", 1, context, seconds / tokens)
        if self.gamma:
            self.planner.record_cost("draft", self.gamma, context, draft)
        self.planner.record_cost(role, self.verify_rows, context, verify)
        if role == "verify":
            self.planner.record_cost("select", 1, context, select)
        self.planner.record_cost("other", 1, context, max(0.0, total - draft - select - verify))

    # ---- helpers ----------------------------------------------------------------------------------------------
    def forward(self, role: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Run the compiled ``role`` step on ``ids`` at per-row positions ``pos`` (contiguous per row). A settled
        row (finished, nothing provisional) still fills its batch slot, but its attention reads no cache: its
        rows attend as if they started at position 0, and their output is never used."""
        graph = self.model.graph(role, ids.shape[1])
        self.fresh |= not getattr(graph, "calls", 1)
        seq_lens = self.state.seq_lens.copy_(pos[:, 0]).masked_fill_(self.settled(), 0)
        if graph.plan.window_attention:
            cfg = self.config
            window_indices(seq_lens, cfg.n_sink, cfg.draft_window, out=self.state.window_indices)
        return graph(ids, pos, seq_lens)

    def settled(self) -> torch.Tensor:
        """[B] rows whose tokens are all final and who generate no more."""
        return ~self.active & (self.final >= self.n) if self.exact is not None else ~self.active

    def draft_logits(self, role: str, ids: torch.Tensor, pos: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """The draft's logits ``[B, V]`` of the row ``last[b]`` (default: the last row) of each sequence."""
        out = self.forward(role, ids, pos)
        if last is None or ids.shape[1] == 1:
            logits = out[:, -1].float()
        else:
            logits = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[-1]))[:, 0].float()
        if self.recorder is not None:
            self.recorder.drafted(role, ids.shape[1])
        draft_ids = getattr(self.model, "draft_ids", None)
        if draft_ids is not None:  # draft_vocab: scores of K ids -> the full vocabulary, -inf elsewhere
            logits = expand_logits(logits, draft_ids, self.model.vocab_size)
        pad = self.model.vocab_size - logits.shape[-1]
        if pad > 0:  # the target's table is padded past the shared tokenizer: the draft never proposes those ids
            logits = torch.nn.functional.pad(logits, (0, pad), value=float("-inf"))
        return logits

    def positions(self, start: torch.Tensor, rows: int) -> torch.Tensor:
        return start[:, None] + torch.arange(rows, device=start.device)

    def limit(self, count: torch.Tensor, tokens: torch.Tensor, start: torch.Tensor):
        """Cut each row's ``count`` new tokens (from ``start``) at max_new_tokens and after the first eos (or the
        first token that completes a stopping criterion of ``rules``). Returns (count, hit)."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        count = torch.minimum(count, self.max_new - (start - self.prompt_lens)).clamp_min(0)
        if not self.eos.numel() and self.rules is None:
            return count, torch.zeros_like(self.active)
        is_eos = torch.isin(tokens, self.eos) if self.eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        if self.rules is not None:
            is_eos = is_eos | self.rules.stops(self, start, tokens, count)
        is_eos &= steps < count[:, None]
        hit = is_eos.any(1)
        return torch.where(hit, is_eos.long().argmax(1) + 1, count), hit

    def write(self, start: torch.Tensor, tokens: torch.Tensor, count: torch.Tensor) -> None:
        """seq[b, start[b] + j] = tokens[b, j] for j < count[b]."""
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        where = (start[:, None] + steps).clamp_max(self.seq.shape[1] - 1)
        keep = steps < count[:, None]
        self.seq.scatter_(1, where, torch.where(keep, tokens, self.seq.gather(1, where)))

    def keep_history_query(self, role: str, n_accepted: torch.Tensor) -> None:
        """q*: the verification's query (history layer, all heads) of the row that is now the last committed."""
        if self.config.mode == "dense":
            return
        record = self.model.query_record(role, self.verify_rows)[0]  # [B, Hq, gamma + 1, D]
        b, h, _, d = record.shape
        self.q_star = record.gather(2, n_accepted.view(b, 1, 1, 1).expand(b, h, 1, d)).clone()

    def signals(self, drafted: torch.Tensor) -> Signals | None:
        """What the selectors may read this iteration (None before the first verification: no q* yet)."""
        if self.q_star is None:
            return None
        profile, layers = self.model.profile, self.state.caches.target.layers
        seq_lens, keys, heads = self.n - 1, layers[profile.history_layer].keys, list(profile.history_heads)
        memo: dict[str, torch.Tensor] = {}

        def history():  # the selection and the guard's recovery estimate share it
            if "history" not in memo:
                memo["history"] = history_scores(self.q_star, keys, seq_lens, heads)
            return memo["history"]

        def prompt_window():
            if self.prompt_window is None:
                self.prompt_window = snapkv_scores(self.observe, self.seq, self.prompt_lens, keys, heads)
            return self.prompt_window

        def verification():
            ids = torch.cat([self.seq.gather(1, seq_lens[:, None]), drafted], 1)
            self.forward("verify_oracle", ids, self.positions(seq_lens, ids.shape[1]))
            scores = oracle_scores(lambda: self.model.query_record("verify_oracle", ids.shape[1]),
                                   [layer.keys for layer in layers], seq_lens)
            return self.hold_back("oracle", scores)

        lookahead = self.state.lookahead if self.lookahead and self.config.selector in LOOKAHEAD_SELECTORS else None
        if lookahead is not None:
            lookahead = self.hold_back("lookahead", lookahead)
        return Signals(lookahead, history, lambda: quest_scores(self.q_star, keys, seq_lens, heads),
                       prompt_window, verification)

    def hold_back(self, name: str, scores: torch.Tensor) -> torch.Tensor | None:
        """Greedy: ``scores`` as they are. Sampling: the previous iteration's (None at first), keeping these for
        the next: speculative sampling is exact w.r.t. the distribution it verifies against only if that
        distribution (here, the selection) is fixed before the tokens it verifies are drawn."""
        if not self.sampling.do_sample:
            return scores
        previous, self.held[name] = self.held[name], scores.clone()
        return previous

    def observe(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """SnapKV's observation pass: the history layer's queries of ``ids`` ``[B, Hq, OBSERVE_ROWS, D]``."""
        self.forward("observe", ids, pos)
        return self.model.query_record("observe", OBSERVE_ROWS)[0]

    # ---- the call ---------------------------------------------------------------------------------------------
    def prefill(self) -> None:
        """Fill both caches with every prompt token but the last. Skipped when the caches already hold these
        prompts: decoding never writes below a prompt's last position, so a repeated prompt reuses its cache."""
        caches = self.state.caches
        key = tuple(tuple(row[: int(n)].tolist()) for row, n in zip(self.seq, self.prompt_lens))
        if caches.prefilled == key:
            return
        caches.prefilled = None
        total = int(self.prompt_lens.max()) - 1  # the last prompt token is pending
        chunks = prefill_chunks(total, self.config.prefill_chunk)
        batch = self.seq.shape[0]
        for start, rows in tqdm(chunks, desc="prefill", unit="chunk", disable=not self.progress or not chunks):
            pos = self.positions(torch.full((batch,), start, device=self.seq.device), rows)
            ids = self.seq[:, start : start + rows]
            self.forward("prefill_target", ids, pos)
            if not caches.shared:  # a self-draft reads the target's cache
                self.forward("prefill_draft", ids, pos)
            self.stats.prefill_passes += 1
        caches.prefilled = key

    def decode_roles(self) -> list[tuple[str, int]]:
        """Every (role, rows) graph this call's decoding may run (gamma="auto": for every gamma it may choose; the
        draft's catch-up steps after iterations without speculation compile when first needed)."""
        cfg = self.config
        roles = [("draft_1", 1)] if self.gamma_max else []
        if self.gamma_max and not self.state.caches.shared:  # a self-draft never re-runs a committed position
            roles.append(("draft_2", 2))
            if self.planner is not None:  # catching up after gamma=0 iterations
                roles += [("draft_4", 4), (f"draft_{CATCH_UP}", CATCH_UP)]
        for rows in (range(1, self.gamma_max + 2) if self.planner is not None else (self.verify_rows,)):
            roles.append(("verify", rows))
            if cfg.mode != "dense":
                roles.append(("verify_dense", rows))
            if cfg.mode != "dense" and cfg.selector == "oracle":
                roles.append(("verify_oracle", rows))
        if self.exact is not None:
            roles.append(("check", self.exact.rows))
        return roles

    def warm_up(self) -> None:
        """Capture/compile every decode graph now (not inside a timed decode). Each runs once at positions from the
        pending token on, which decoding rewrites before reading: the prefilled cache stays valid."""
        roles = self.decode_roles()
        for role, rows in tqdm(roles, desc="capture graphs", unit="graph", disable=not self.progress):
            pos = self.positions(self.n - 1, rows)
            self.forward(role, self.seq.gather(1, pos.clamp_max(self.seq.shape[1] - 1)), pos)

    def stream(self) -> int:
        """Hand row 0's newly final tokens to the streamer; returns how many new tokens are final overall."""
        final = self.final if self.exact is not None else self.n
        if self.streamer is not None and int(final[0]) > self.streamed:
            self.streamer.put(self.seq[0, self.streamed : int(final[0])].cpu())
            self.streamed = int(final[0])
        return int((final - self.prompt_lens).sum())

    def run(self) -> GenerateOutput:
        with self.clock("total"):
            with self.clock("prefill"):
                self.prefill()
            if self.streamer is not None and self.stream_prompt:
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
