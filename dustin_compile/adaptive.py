"""``gamma="auto"``: choose the draft length of every iteration from measured step costs and acceptance.

Each iteration commits, per row, the accepted drafts plus one token of the target's. With ``alpha[i]`` the
probability that draft token ``i`` is accepted once the ones before it were, gamma drafts commit on average

    E(gamma) = 1 + sum_{k=1..gamma} prod_{i<=k} alpha[i]

tokens per row, and cost ``T(gamma) = draft(gamma) + verify(gamma + 1 rows) + other``: the draft phase (its
first step may re-run committed tokens, then one-row steps), the verification, and what the loop spends outside
the models (selection, acceptance, bookkeeping; an exact-mode check is left out: its cost per token does not
depend on gamma). ``GammaPlanner.choose`` takes the gamma in 0..gamma_max with the most expected tokens per
second, ``E / T``; gamma = 0 is plain decoding (the target alone, at the cost of a one-row verification).

Plain decoding leaves the draft behind: it catches up on those tokens only if speculation resumes, in steps of up
to 8 rows. That cost (measured per token caught up) is paid once, by the resuming iteration, so it is weighed
there: with the draft ``lag`` tokens behind, speculation resumes only if what it saves over the tokens still to be
generated, ``remaining * (1/rate(0) - 1/rate(best))`` seconds, exceeds the catch-up, ``lag * catch_up``. Charging
it to every gamma = 0 iteration instead would price plain decoding above plain decoding, and where the draft does
not pay, ``gamma="auto"`` would lose to the target alone.

Both sides are measured as decoding runs, never assumed: every phase's wall time (the clock the loop keeps anyway:
no extra device sync) is kept per (kind, gamma or rows) and per context bucket (a power of two of the longest row:
costs grow with the context) as an exponential moving average; acceptance is counted per draft position over about
the last ``ACCEPT_MEMORY`` drafted tokens, starting from a weak prior, and again per row state (whether the row's
last speculative iteration accepted every draft: ``STATE_PRIOR``), from which each row's E(gamma) is predicted and
averaged over the batch. Each gamma is tried once per bucket before
the model is trusted, and every ``PROBE_EVERY``-th choice probes a neighbour of the best (so a run of gamma = 0
still learns whether the draft became worth running; as that probe pays the catch-up, its period doubles after each
probe that leaves gamma = 0 the best, back to ``PROBE_EVERY`` once speculation wins again, and it is skipped where
the catch-up would cost more than ``PROBE_BUDGET`` of the time plain decoding still needs); any probe waits until
the time since the last one pays its expected loss (``PROBE_LOSS`` of it: a deep gamma at batch 4 can cost several
plain steps more than it commits, a neighbour at batch 1 a few % of one). A close call is refreshed
more often: where the runner-up's predicted rate is within a share ``gap`` of the best's, the runner-up is taken every
``max(2, gap / REFRESH_LOSS)`` choices, which costs at most ``REFRESH_LOSS`` of the rate and keeps both costs current
(otherwise the loser keeps a cost measured once, in a slower moment of a machine whose speed drifts); where the
runner-up is plain decoding and the best speculates, ``gap`` also counts the token that leaves the draft behind (its
next step re-runs it), and such a plain iteration on purpose (a refresh, probe or re-measure) has paid for that lag
when chosen: the next choice resumes the best without weighing the catch-up. A cost not
re-measured for ``STALE_AFTER`` choices is stale: its next measurement replaces it, and while speculation is best
the probes re-measure the stalest gamma first (an abandoned gamma's cost from a slow moment would otherwise stand for
the rest of the run). A cost not measured at this bucket is interpolated (or borrowed from the nearest bucket). The planner lives on the model, so what
one ``generate`` call learnt serves the next.

The batch's end. A batch with a known end (``max_new_tokens``) runs until its slowest row is done, and an
iteration's last tokens may pass the end and be cut. With ``X`` the tokens an iteration commits per row (mean E,
variance V), a row with R tokens left needs N iterations, by renewal theory of mean ``(R + o) / E`` (``o = (E[X^2] /
E - 1) / 2`` the mean overshoot of the end; at least one iteration) and variance ``R * V / E^3``, and the batch
needs ``E[max_b N_b]`` (the rows taken as independent normals). ``finish_factor = (max_b R_b / E) / E[max_b N_b]``
scales E(gamma) down to the tokens that shorten the run: 1 for gamma = 0 (one token per row per iteration, no
spread), near 1 at batch 1 far from the end, and at batch B a spread that counts more the shorter the run. Without
it, at 8k batch 4 on the real pair (48 new tokens, round-robin run, AMX host), a fixed gamma = 1 committed 1.55
tokens per row per iteration of the batch against a mean of 1.64 (-6 %; this model: -6.0 %), the planner ranked
gamma = 1 2 % above gamma = 0, and ``gamma="auto"`` ran 0.87-0.93x the fixed gamma = 0 in every mode.

Exact mode also chooses how to verify (``choose_verification``, whenever every token is final): densely (the
tokens are final at once: classic speculative decoding) or sparsely, with a dense check once some row holds N
provisional tokens, N <= ``exact_every``. With ``p`` the measured probability that a provisional token is rolled
back (independently per token), a check after N provisional tokens keeps on average

    kept(N) = sum_{j<N} (1 - p)^j

tokens (the agreeing prefix, plus the correction that replaces the first mismatch), for N sparse tokens' time plus
one check. So sparse verification with gamma drafts and interval N yields ``kept(N) / (N * t_s + C)`` tokens per
second (``t_s`` = T_sparse(gamma) / E(gamma), ``C`` the check's measured cost), dense ``E(gamma) / T_dense(gamma)``;
the larger wins. Checking early pays where rollbacks are frequent (less work lost after a mismatch); verifying
densely pays where sparse verification saves less than its checks and rollbacks cost.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

DECAY = 0.3  # weight of a new cost measurement in its moving average
# Acceptance is remembered per drafted token, not per iteration: each new outcome at a position discounts the older
# ones by 1 - 1/ACCEPT_MEMORY (about the last ACCEPT_MEMORY drafts count), whatever the batch. A per-iteration average
# with weight 0.1 was ~10 tokens at batch 1: on the real pair at 4k (true acceptance ~0.6), a run of 5-6 rejections
# pulled the estimate under the point where speculation pays, gamma = 0 streaks froze it there (no drafts, no
# outcomes), and gamma="auto" decoded plainly for most of a run (1.01x `ar` against 1.14x for a fixed gamma = 1).
ACCEPT_MEMORY = 32
PRIOR_TRIED, PRIOR_ACCEPTED = 2.0, 1.0  # acceptance starts at 0.5, as if two drafts had been tried
# gamma = 0 (no draft, so no new outcomes until a probe) is chosen only when speculation does not pay even at the
# acceptance STOP_Z standard deviations above the estimate (a Wilson bound): with few or borderline outcomes the
# draft keeps running and measuring. Without it a cold start (a few early rejections against a weak prior) or a
# chance dip of a draft that pays stopped speculation for a whole 64-token run on the real pair.
STOP_Z = 1.0
# Acceptance is bursty: the stretches of a text where the draft errs cluster, so a row's next drafts are likelier to be
# accepted after an iteration that accepted all of its drafts ("clean") than after one that rejected one. In the real
# pair's decision logs (AMX host, e2e runs, `dense` arm), the first draft was accepted 0.92 of the time after a clean
# iteration against 0.74 after a rejection at 32k, the second 0.96 against 0.64 (16k: 0.80-0.88 / 0.65-0.73 and
# 0.77 / 0.27-0.41; at 4k the difference is smaller and inconsistent). One estimate for
# both states averages them and picks one gamma for both, where a longer draft pays after a clean run and a shorter
# one after a rejection. So outcomes are also counted per state (each row's last speculative iteration) and E(gamma)
# is predicted from the current rows' states; a state's estimate counts its own outcomes plus STATE_PRIOR
# pseudo-outcomes at the pooled rate: with few outcomes in a state, it predicts the pooled rate.
STATE_PRIOR = 4.0
CHECK_DECAY = 0.1  # exact mode: weight of one dense check's outcome in the rollback rate (a check examines ~8 tokens)
# Every PROBE_EVERY-th informed choice takes a neighbour of the best gamma instead: otherwise a gamma = 0 streak
# would never measure acceptance again, and a neighbour's cost measured once in a noisy moment would never be
# corrected. It costs at most 1/PROBE_EVERY of the iterations at a near-best choice (less in a gamma = 0 streak,
# where each probe also pays the draft's catch-up and the period doubles up to PROBE_EVERY * 2**MAX_BACKOFF).
PROBE_EVERY = 16
MAX_BACKOFF = 4
# ... and a probe is taken only where its expected loss (its iteration's time less the time the best gamma would need
# for the tokens it commits) is at most PROBE_LOSS of the time since the last probe; else it waits. At batch 1 a
# neighbour's loss is a few % of an iteration and this rarely binds; at batch 4 a deep gamma's is several iterations:
# on the real pair at 2k, batch 4 (AMX host), a gamma = 4 iteration cost ~1.8 s (5-row verification and four draft
# steps), ~5 plain steps, for ~3.6 tokens per row, and gamma = 2-4 were probed or re-measured one to three times per
# 48-token call; replayed with those costs (tests/driver/test_adaptive.py) gamma="auto" ran 0.94-0.95x the fixed
# gamma = 1, 0.985-0.99x with this bound.
PROBE_LOSS = 0.02
# ... and such a probe is skipped where the catch-up would cost more than this share of the time plain decoding still
# needs: the catch-up grows with the streak, so each probe costs the same share of it whatever the period (on the
# real pair at 1k, one probe after ~30 plain tokens cost ~15 % of a 32-token decode); "never slower than plain
# decoding" needs this bound.
PROBE_BUDGET = 0.05
# A close call is refreshed more often than PROBE_EVERY: where the runner-up's predicted rate is within a share `gap`
# of the best's, it is taken once every max(2, gap / REFRESH_LOSS) choices (at most REFRESH_LOSS of the rate lost per
# iteration; a period past PROBE_EVERY is left to the probes), so that both costs stay current. Otherwise the loser
# of a close call keeps the cost measured once, in another moment of a machine whose speed drifts by 10-20 %: on the
# real pair at 4k (AMX host) gamma = 2 won 30 of 32 iterations on gamma = 1 costs 12 % above those a fixed gamma = 1
# arm measured in the same run, and ran 0.88x that arm.
REFRESH_LOSS = 0.01
# Refreshing plain decoding (gamma = 0) from a speculating best leaves the draft a token behind, and its next step
# re-runs it: at 2k, batch 4 on the real pair (AMX host) that cost 0.11 s, a fifth of a gamma = 1 iteration, and
# gamma = 0 as a near-tied runner-up was refreshed every 2-6 iterations (each one then risking a catch-up that no
# longer paid: the run decoded plainly to its end), 0.93x the fixed gamma = 1. That cost counts in the period.
# A cost not measured for STALE_AFTER informed choices is stale: the machine it was measured on has drifted since. The
# next measurement replaces it instead of being averaged into it (DECAY would keep 70 % of a value from another
# moment), and while the best gamma is speculative, a probe re-measures the stalest other gamma instead of a
# neighbour. Without it, on the real pair at 4k (AMX host, round-robin run), gamma = 1 and 2 were measured during a
# slow spell (2- and 3-row verifications at 530 / 575 ms; the fixed-gamma arms of the same run measured 328 / 343 ms),
# were never chosen again, and gamma="auto" ran gamma = 3 and 4 for the rest of the run: 0.88x the best fixed gamma.
STALE_AFTER = 2 * PROBE_EVERY
PRIOR_CHECKED, PRIOR_ROLLED = 10.0, 1.0  # exact mode: a provisional token starts 10 % likely to be rolled back
# Exact mode probes the other way of verifying more rarely: a sparse probe is a whole run of provisional tokens and a
# check (~exact_every tokens of work plus one wide dense pass), not one iteration. Probing every 16 choices cost
# ~9 % at 4k on the real pair (dense was best; 40 choices per 64 tokens); every 64 bounds it near 2 %.
PROBE_KIND_EVERY = 64


def context_bucket(length: int) -> int:
    """Costs are kept per power of two of the context (1k, 2k, 4k, ...)."""
    return max(int(length), 1).bit_length()


def _expected(alphas: list[float], gamma: int) -> float:
    """E(gamma) = 1 + sum_k prod_{i<=k} alpha[i]."""
    total, run = 1.0, 1.0
    for alpha in alphas[:gamma]:
        run *= alpha
        total += run
    return total


def _moments(alphas: list[float], gamma: int) -> tuple[float, float]:
    """(mean, variance) of the tokens one iteration of ``gamma`` drafts commits per row: with p_j = prod_{i<=j}
    alpha[i] (p_0 = 1) the chance that it commits more than j, E[X] = sum_j p_j and E[X^2] = sum_j (2j + 1) p_j."""
    mean, square, run = 1.0, 1.0, 1.0
    for j, alpha in enumerate(alphas[:gamma], start=1):
        run *= alpha
        mean += run
        square += (2 * j + 1) * run
    return mean, max(square - mean * mean, 0.0)


def expected_max_normal(means: list[float], sds: list[float]) -> float:
    """E[max_b N_b] of independent normals N(means[b], sds[b]^2): lo + the integral of P(max > t) from lo, with lo
    8 standard deviations under the largest mean (what lies below it has probability < 1e-15). Equal normals are
    counted once, with their multiplicity as a power (a batch's rows mostly share their tokens left)."""
    top, widest = max(means), max(sds)
    if widest <= 0.0 or len(means) == 1:  # batch 1 (every iteration there): no integral needed
        return top
    groups = Counter(zip(means, sds))
    lo, hi = top - 8.0 * widest, max(m + 8.0 * s for m, s in groups)
    t = torch.linspace(lo, hi, 401, dtype=torch.float64)[:, None]
    mu, sd = torch.tensor(list(groups), dtype=torch.float64).T
    count = torch.tensor(list(groups.values()), dtype=torch.float64)
    below = torch.special.ndtr((t - mu) / sd.clamp_min(1e-12)).pow(count).prod(dim=1)  # P(max <= t); sd 0: a step
    return lo + float(torch.trapezoid(1.0 - below, t[:, 0]))


def _count(tried: list[float], hits: list[float], gamma: int, accepted: list[int]) -> None:
    """Add the outcomes of ``gamma`` drafts (``accepted[b]`` accepted in row b) to per-position counts, each new
    outcome discounting the older ones by 1 - 1/ACCEPT_MEMORY."""
    for i in range(gamma):
        n = sum(a >= i for a in accepted)
        if n:
            keep = (1 - 1 / ACCEPT_MEMORY) ** n
            tried[i] = keep * tried[i] + n
            hits[i] = keep * hits[i] + sum(a > i for a in accepted)


@dataclass
class GammaPlanner:
    gamma_max: int
    every: int = 0  # exact mode: the most provisional tokens per check (exact_every); 0 in the other modes
    # The driver sets, before each choice, how many rows of the batch are still generating (`live`) and whether some
    # have finished (`tail`). A finished row keeps its batch slot, but its attention reads no cache, so a step costs
    # less once rows finish: costs are kept per live count (`tables`; `costs` is the current count's), and a table
    # that lacks a kind's full set of row counts borrows that kind from the nearest live count that has it. Without
    # this, at 8k batch 4 on the real pair (round-robin run), the cheap steps of each generate's last iterations
    # (one or two rows left) stood for the full batch at the start of the next call: the 1-token speculation looked
    # 2.54 tokens/s per row against a true ~1.5, and `dense` with gamma="auto" speculated in 26 of 33 iterations where
    # no gamma > 0 paid (with the fix: 11 of 40).
    live: int = 1
    tail: bool = False
    # ... and how many tokens each of those rows may still generate (module docstring, "the batch's end": the batch
    # runs until its slowest row is done). Empty: no end known, rates per iteration alone.
    horizon: list[int] = field(default_factory=list)
    tables: dict[int, dict[tuple[str, int, int], float]] = field(default_factory=dict)  # live rows -> costs
    tried: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)
    # The same counts per state (True: after a clean iteration, False: after a rejection), and each row's state (rows
    # of the current batch by index; rows absent: pooled). STATE_PRIOR.
    state_tried: dict[bool, list[float]] = field(default_factory=dict)
    state_accepted: dict[bool, list[float]] = field(default_factory=dict)
    row_clean: dict[int, bool] = field(default_factory=dict)
    choices: int = 0  # informed choices so far (probes are counted among them)
    since_probe: int = 0  # informed choices since the last probe
    since_refresh: int = 0  # informed choices since the runner-up of a close call was last taken
    probes: int = 0  # probes so far (they alternate sides)
    backoff: int = 0  # probes in a row that left gamma = 0 the best: the probe period is PROBE_EVERY * 2**backoff
    resume_free: bool = False  # the last choice was a plain iteration on purpose from a speculating best (choose)
    checked: float = PRIOR_CHECKED  # exact mode: provisional tokens a check examined (moving sum) ...
    rolled: float = PRIOR_ROLLED  # ... and how many of them it rolled back
    segments: int = 0  # exact mode: informed verification choices so far
    stamps: dict[int, dict[tuple[str, int, int], int]] = field(default_factory=dict)  # live rows -> measured_at
    # Why the last choice was made: {"why": "explore" | "best" | "bound" | "catch-up" | "probe" | "stale" | "refresh",
    # "rates":
    # gamma -> predicted tokens/s per row}; GenerateStats.decisions keeps one per iteration.
    last: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tried = [PRIOR_TRIED] * self.gamma_max
        self.accepted = [PRIOR_ACCEPTED] * self.gamma_max
        self.state_tried = {clean: [0.0] * self.gamma_max for clean in (True, False)}
        self.state_accepted = {clean: [0.0] * self.gamma_max for clean in (True, False)}

    @property
    def costs(self) -> dict[tuple[str, int, int], float]:
        """(kind, rows, bucket) -> seconds, measured with the current number of live rows."""
        return self.tables.setdefault(self.live, {})

    @property
    def measured_at(self) -> dict[tuple[str, int, int], int]:
        """Key of ``costs`` -> the number of informed choices when it was last measured."""
        return self.stamps.setdefault(self.live, {})

    def rows_needed(self, kind: str) -> range:
        """The row counts a complete table holds for ``kind``."""
        if kind in ("verify", "verify_dense"):
            return range(1, self.gamma_max + 2)
        return range(1, self.gamma_max + 1) if kind == "draft" else range(1, 2)

    def complete(self, table: dict, kind: str, context: int) -> bool:
        """Whether ``table`` holds every row count of ``kind`` at the bucket a lookup would read."""
        buckets = self.nearest_buckets(table, kind, context)
        return bool(buckets) and all((kind, r, buckets[0]) in table for r in self.rows_needed(kind))

    @staticmethod
    def nearest_buckets(table: dict, kind: str, context: int) -> list[int]:
        bucket = context_bucket(context)
        return sorted({b for k, _, b in table if k == kind}, key=lambda b: (abs(b - bucket), -b))

    def source(self, kind: str, context: int) -> dict:
        """The cost table to read ``kind`` from: the current live count's where complete, else the nearest live
        count's that is complete (more rows first), else the current one's."""
        if self.complete(self.costs, kind, context):
            return self.costs
        others = [n for n, t in self.tables.items() if n != self.live and self.complete(t, kind, context)]
        return self.tables[min(others, key=lambda n: (abs(n - self.live), -n))] if others else self.costs

    # ---- what was measured ------------------------------------------------------------------------------------
    def record_cost(self, kind: str, rows: int, context: int, seconds: float) -> None:
        key = (kind, rows, context_bucket(context))
        old = self.costs.get(key)
        fresh = old is not None and self.choices - self.measured_at.get(key, self.choices) < STALE_AFTER
        self.costs[key] = (1 - DECAY) * old + DECAY * seconds if fresh else seconds
        self.measured_at[key] = self.choices

    def record_acceptance(self, gamma: int, accepted: list[int], rows: list[int] | None = None) -> None:
        """One iteration's outcome: ``accepted[b]`` drafts of ``gamma`` accepted in active row b (``rows[b]``: its
        index in the batch; None: 0, 1, ...). Position i was tried in every row that accepted all before it; it was
        accepted where the row accepted at least i. Each row's outcome also counts for the state its previous
        speculative iteration left it in, and sets its state for the next (STATE_PRIOR); an iteration without drafts
        leaves the states as they were."""
        if not gamma or not accepted:
            return
        rows = list(range(len(accepted))) if rows is None else rows
        if len(rows) != len(accepted):
            raise ValueError(f"record_acceptance: {len(rows)} row indices for {len(accepted)} outcomes")
        _count(self.tried, self.accepted, gamma, accepted)
        for clean in (True, False):
            outcomes = [a for a, row in zip(accepted, rows) if self.row_clean.get(row) is clean]
            _count(self.state_tried[clean], self.state_accepted[clean], gamma, outcomes)
        self.row_clean = {row: a >= gamma for a, row in zip(accepted, rows)}

    def new_batch(self) -> None:
        """A new batch starts (a ``generate`` call): its rows have no previous iteration yet."""
        self.row_clean, self.horizon = {}, []

    def record_check(self, keep: list[int], rolled: list[bool]) -> None:
        """Exact mode, one dense check: per row with provisional tokens, ``keep[b]`` of them stood and ``rolled[b]``
        says whether the next one was rolled back. Every token up to the first mismatch was examined."""
        if not keep:
            return
        examined = sum(k + int(r) for k, r in zip(keep, rolled))
        self.checked = (1 - CHECK_DECAY) * self.checked + CHECK_DECAY * examined
        self.rolled = (1 - CHECK_DECAY) * self.rolled + CHECK_DECAY * sum(map(int, rolled))

    # ---- the model --------------------------------------------------------------------------------------------
    def alphas(self, optimistic: bool = False) -> list[float]:
        """Per draft position, the acceptance estimate; ``optimistic``: its Wilson upper bound one standard
        deviation up (what the outcomes so far cannot rule out)."""
        if not optimistic:
            return [a / t for a, t in zip(self.accepted, self.tried)]
        bounds = []
        for a, n in zip(self.accepted, self.tried):
            p, z2 = a / n, STOP_Z * STOP_Z
            spread = STOP_Z * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
            bounds.append(min(1.0, (p + z2 / (2 * n) + spread) / (1 + z2 / n)))
        return bounds

    def state_alphas(self, clean: bool) -> list[float]:
        """Per draft position, the acceptance estimate after a clean iteration (``clean``) or a rejection: the
        state's outcomes plus STATE_PRIOR pseudo-outcomes at the pooled estimate."""
        return [(a + STATE_PRIOR * p) / (t + STATE_PRIOR)
                for a, t, p in zip(self.state_accepted[clean], self.state_tried[clean], self.alphas())]

    def expected_tokens(self, gamma: int, optimistic: bool = False) -> float:
        """E(gamma) per row: averaged over the states of the rows of the last speculative iteration; from the pooled
        counts before this batch's first one, and where ``optimistic`` (the Wilson bounds are the pooled counts')."""
        if optimistic or not self.row_clean:
            return _expected(self.alphas(optimistic), gamma)
        per_state = {clean: _expected(self.state_alphas(clean), gamma) for clean in set(self.row_clean.values())}
        return sum(per_state[clean] for clean in self.row_clean.values()) / len(self.row_clean)

    def finish_factor(self, gamma: int, optimistic: bool = False) -> float:
        """The share of E(gamma) that shortens the batch's run (module docstring, "the batch's end"): the iterations
        its slowest row would need at E(gamma) tokens each, over the iterations the batch is expected to need until
        every row is done. 1 without a horizon and for gamma = 0."""
        horizon = [r for r in self.horizon if r > 0]
        if not horizon or not gamma:
            return 1.0
        mean, var = _moments(self.alphas(optimistic), gamma)
        overshoot = (var / mean + mean - 1.0) / 2.0  # E[X^2] / E[X] = V / E + E
        # A row with one token left needs exactly one iteration.
        means = [max(1.0, (r + overshoot) / mean) if r > 1 else 1.0 for r in horizon]
        sds = [math.sqrt(r * var / mean**3) if r > 1 else 0.0 for r in horizon]
        return max(horizon) / mean / expected_max_normal(means, sds)

    def cost(self, kind: str, rows: int, context: int) -> float | None:
        """The (kind, rows) cost at this context's bucket: measured, else interpolated linearly over the measured row
        counts of that kind (a draft of 0 tokens costs 0), else flat past the last measured; buckets without a
        measurement of the kind borrow the nearest one's; read from the live count's table (``source``). None: nothing
        measured."""
        table = self.source(kind, context)
        buckets = self.nearest_buckets(table, kind, context)
        if not buckets:
            return None
        known = {r: c for (k, r, b), c in table.items() if k == kind and b == buckets[0]}
        if kind == "draft":
            known.setdefault(0, 0.0)
        if rows in known:
            return known[rows]
        below = [r for r in known if r < rows]
        above = [r for r in known if r > rows]
        if below and above:
            r0, r1 = max(below), min(above)
            return known[r0] + (known[r1] - known[r0]) * (rows - r0) / (r1 - r0)
        return known[max(below) if below else min(above)]

    def iteration_time(self, gamma: int, context: int, kind: str = "verify") -> float | None:
        """Seconds of one iteration drafting ``gamma`` tokens and verifying them with ``kind`` (``"verify"``: the
        configured verification, sparse in the sparse modes; ``"verify_dense"``: exact mode's dense one, which needs
        no selection). None: that verification was never measured."""
        verify = self.cost(kind, gamma + 1, context)
        if verify is None:
            return None
        # gamma = 0 runs no draft; the catch-up it leaves behind is weighed when speculation would resume (choose).
        draft = self.cost("draft", gamma, context) if gamma else 0.0
        select = self.cost("select", 1, context) if kind == "verify" else 0.0
        return verify + (draft or 0.0) + (select or 0.0) + (self.cost("other", 1, context) or 0.0)

    def predict(self, context: int, kind: str = "verify", optimistic: bool = False) -> dict[int, float | None]:
        """gamma -> expected committed tokens per second per row, counting what shortens the batch's run
        (``finish_factor``; None: not measured enough yet); ``optimistic``: with the acceptance upper bounds."""
        out = {}
        for gamma in range(self.gamma_max + 1):
            t = self.iteration_time(gamma, context, kind)
            tokens = self.expected_tokens(gamma, optimistic) * self.finish_factor(gamma, optimistic)
            out[gamma] = tokens / t if t else None
        return out

    def unexplored(self, kind: str, context: int) -> int | None:
        """The next gamma whose ``kind`` verification is unmeasured at this context's bucket (gamma_max first, then
        0, then the rest downwards), or None: the verification's cost is not linear in its rows, so interpolation
        alone could hide the best choice. The last iterations of a batch whose other rows finished (``tail``) explore
        nothing once some live count's table is complete: they borrow it (``source``) while their own is measured."""
        if self.tail and any(self.complete(table, kind, context) for table in self.tables.values()):
            return None
        bucket = context_bucket(context)
        measured = {r for k, r, b in self.costs if k == kind and b == bucket}
        return next((g for g in (self.gamma_max, 0, *range(self.gamma_max - 1, 0, -1)) if g + 1 not in measured), None)

    def choose(self, context: int, kind: str = "verify", lag: int = 0,
               remaining: int | None = None) -> tuple[int, float | None]:
        """(gamma, its predicted tokens/s per row, or None while exploring) for a ``kind`` verification, with the
        draft ``lag`` tokens behind and ``remaining`` tokens still to generate (None: no end in sight). Each gamma
        is measured once per context bucket before the model is trusted."""
        gamma = self.unexplored(kind, context)
        if gamma is not None:
            self.last = {"why": "explore", "rates": {}}
            return gamma, None
        rates = self.predict(context, kind)
        best = max(rates, key=lambda g: rates[g])
        why = "best"
        if not best and self.gamma_max:  # stop speculating only once the outcomes show that it does not pay
            # The gamma to keep is the best by the estimate; the bound only asks whether stopping is premature.
            # (Ranking by the bounds favoured the deepest gamma, whose rarely drafted positions have the widest.)
            speculative = max(range(1, self.gamma_max + 1), key=lambda g: rates[g])
            if self.predict(context, kind, optimistic=True)[speculative] > rates[0]:
                best, why = speculative, "bound"
        # A single plain iteration taken on purpose (a refresh, probe or re-measure of gamma = 0) from a speculating
        # best paid for the token it leaves the draft behind when it was chosen: it never makes the next choice stay
        # plain for the catch-up (which at a near tie then never paid: the rest of the call decoded plainly).
        resume_free, self.resume_free = self.resume_free, False
        if best and lag and not resume_free and not self.resume_pays(rates[0], rates[best], lag, remaining, context):
            best, why = 0, "catch-up"
        self.choices += 1
        self.since_probe += 1
        self.since_refresh += 1
        if best:
            self.backoff = 0
        if why == "best" and self.gamma_max:  # a close call: refresh the runner-up's cost (REFRESH_LOSS)
            runner = max((g for g in rates if g != best), key=lambda g: rates[g])
            gap = 1.0 - rates[runner] / rates[best]
            # Plain decoding as the runner-up of a speculating best also leaves the draft a token behind: that costs
            # the refresh too, in iterations of the best.
            behind = self.left_behind(runner, best, context)
            if behind:
                behind /= self.iteration_time(best, context, kind)
            period = max(2.0, (gap + behind) / REFRESH_LOSS)  # past PROBE_EVERY the probes alone keep costs current
            # Out of a gamma = 0 streak the runner-up pays the draft's catch-up first: within a probe's budget only.
            if self.since_refresh >= period and period <= PROBE_EVERY and (
                    not runner or self.probe_affordable(best, rates[0], lag, remaining, context)):
                self.since_refresh = 0
                self.resume_free = not runner
                self.last = {"why": "refresh", "rates": rates}
                return runner, rates[runner]
        if self.since_probe >= PROBE_EVERY << self.backoff and self.probe_affordable(best, rates[0], lag, remaining,
                                                                                    context):
            # A probe: the stalest other gamma where one is stale and the best speculates, else a neighbour of the
            # best, alternating sides (the other side where that one is out of range or costs more than the budget),
            # taken once the time since the last probe pays its expected loss (PROBE_LOSS); until then the budget
            # grows with every choice. A stale gamma waits for its own budget: a cheaper neighbour taken in its place
            # would spend the budget on every turn, and a cost measured in a slow moment would stand for good.
            side = 1 if (self.probes + 1) % 2 else -1
            stale = self.stalest(kind, context, best) if best else None
            candidates = ([(stale, "stale")] if stale is not None
                          else [(best + s, "probe") for s in (side, -side) if 0 <= best + s <= self.gamma_max])
            budget = PROBE_LOSS * self.since_probe * (self.iteration_time(best, context, kind) or 0.0)
            pick = next((c for c in candidates if self.probe_loss(c[0], best, rates, context, kind) <= budget), None)
            if pick is not None:
                self.since_probe, self.probes = 0, self.probes + 1
                if not best:
                    self.backoff = min(self.backoff + 1, MAX_BACKOFF)
                self.resume_free = bool(best) and not pick[0]
                best, why = pick
        self.last = {"why": why, "rates": rates}
        return best, rates[best]

    def probe_loss(self, gamma: int, best: int, rates: dict[int, float | None], context: int, kind: str) -> float:
        """Seconds one iteration of ``gamma`` is expected to lose against ``best``: its time, less the time ``best``
        would need for the tokens it commits (0 where it is not predicted slower), and where it is plain decoding
        from a speculating best, the token it leaves the draft behind (re-run by the next draft step)."""
        behind = self.left_behind(gamma, best, context)
        if not rates.get(gamma) or not rates.get(best):
            return behind
        slower = max(0.0, 1.0 - rates[gamma] / rates[best])
        return (self.iteration_time(gamma, context, kind) or 0.0) * slower + behind

    def left_behind(self, gamma: int, best: int, context: int) -> float:
        """Seconds an iteration of ``gamma`` instead of a speculating ``best`` costs the draft: plain decoding leaves
        it a token behind, which its next step re-runs (a wider draft step; measured as the catch-up per token)."""
        return self.catch_up(1, context) if best and not gamma else 0.0

    def stalest(self, kind: str, context: int, best: int) -> int | None:
        """The gamma other than ``best`` whose ``kind`` verification at this context's bucket was measured longest
        ago, if that is at least STALE_AFTER choices ago (ties: the one nearest ``best``); else None."""
        bucket = context_bucket(context)
        ages = {g: self.choices - self.measured_at.get((kind, g + 1, bucket), self.choices)
                for g in range(self.gamma_max + 1) if g != best and (kind, g + 1, bucket) in self.costs}
        if not ages:
            return None
        gamma = max(ages, key=lambda g: (ages[g], -abs(g - best)))
        return gamma if ages[gamma] >= STALE_AFTER else None

    def probe_affordable(self, best: int, plain: float, lag: int, remaining: int | None, context: int) -> bool:
        """A probe out of a gamma = 0 streak first pays the draft's catch-up on ``lag`` tokens: allowed only while
        that costs at most ``PROBE_BUDGET`` of the time plain decoding still needs for the ``remaining`` tokens.
        (The catch-up grows with the streak, so a longer probe period alone would not make probing cheaper.)"""
        if best or not lag or remaining is None:
            return True
        return self.catch_up(lag, context) <= PROBE_BUDGET * remaining / plain

    def resume_pays(self, plain: float, speculative: float, lag: int, remaining: int | None, context: int) -> bool:
        """Whether speculating at ``speculative`` tokens/s instead of decoding plainly at ``plain`` saves, over the
        ``remaining`` tokens, more than the draft's catch-up on ``lag`` tokens costs."""
        if remaining is None:
            return True
        return remaining * (1.0 / plain - 1.0 / speculative) > self.catch_up(lag, context)

    def catch_up(self, lag: int, context: int) -> float:
        """Seconds the draft needs to catch up on ``lag`` tokens (measured per token; unmeasured: free)."""
        return lag * (self.cost("catch_up", 1, context) or 0.0)

    # ---- exact mode -------------------------------------------------------------------------------------------
    def rollback_rate(self) -> float:
        """The probability that a provisional token is rolled back (per token, up to the first mismatch)."""
        return self.rolled / self.checked

    def kept(self, interval: int) -> float:
        """Expected tokens a check after ``interval`` provisional tokens keeps (the correction included)."""
        stay = 1.0 - self.rollback_rate()
        return sum(stay**j for j in range(interval))

    def sparse_rate(self, context: int) -> tuple[float, int] | None:
        """Exact mode: (tokens/s per row, check interval) of the best sparse verification with periodic checks,
        None while the sparse verification or the check is unmeasured."""
        check = self.cost("check", 1, context)
        if check is None:
            return None
        best = None
        for rate in self.predict(context, "verify").values():
            if rate is None:
                continue
            for interval in range(1, self.every + 1):  # N tokens at 1/rate each, then one check
                value = self.kept(interval) / (interval / rate + check)
                if best is None or value > best[0]:
                    best = (value, interval)
        return best

    def choose_verification(self, context: int, remaining: int | None = None) -> tuple[str, int, float | None]:
        """Exact mode, with every token final: (``"verify"`` = sparse then check after ``interval`` provisional
        tokens, or ``"verify_dense"``, interval 0; the predicted tokens/s per row or None while exploring). Sparse
        is explored first (it is what exact mode is for), then dense; every ``PROBE_KIND_EVERY``-th informed choice
        takes the other one, so that a changed rollback rate or cost is noticed. A sparse probe where dense is best
        loses ``kept(N) * (1/sparse - 1/dense)`` seconds (a whole run and its check for the tokens it keeps): it is
        skipped where that exceeds ``PROBE_BUDGET`` of the time dense verification needs for the ``remaining``
        tokens (None: no end in sight)."""
        sparse = None if self.unexplored("verify", context) is not None else self.sparse_rate(context)
        if sparse is None:
            return "verify", self.every, None
        if self.unexplored("verify_dense", context) is not None:
            return "verify_dense", 0, None
        dense = max(r for r in self.predict(context, "verify_dense").values() if r is not None)
        self.segments += 1
        use_sparse = sparse[0] >= dense
        if self.segments % PROBE_KIND_EVERY == 0:
            loss = self.kept(sparse[1]) * (1.0 / sparse[0] - 1.0 / dense)
            if use_sparse or remaining is None or loss <= PROBE_BUDGET * remaining / dense:
                use_sparse = not use_sparse
        return ("verify", sparse[1], sparse[0]) if use_sparse else ("verify_dense", 0, dense)
