"""What ``generate`` returns: the sequences and the statistics of how they were made."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class GenerateStats:
    """Per-call statistics. Times are wall seconds; decode excludes prefill.

    accepted: per row, drafted tokens that were committed. new_tokens: per row, tokens generated.
    tau: mean tokens committed per verification pass of the row (per row, averaged over rows); exact mode's dense
        checks are not verification passes, so tau alone flatters it: read ``tokens_per_pass`` beside it.
    tokens_per_pass: new tokens per target forward of any kind (verifications, guarded refreshes, exact checks),
        per row, averaged over rows — what the target's weights were read for.
    """

    accepted: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    row_passes: list[int] = field(default_factory=list)
    target_passes: int = 0
    draft_passes: int = 0
    prefill_passes: int = 0
    sparse_passes: int = 0
    dense_passes: int = 0
    rolled_back: int = 0  # exact mode: provisional tokens a dense check replaced
    recovery: list[float] = field(default_factory=list)  # estimated recovery of each selection (history mass kept)
    gammas: dict[int, int] = field(default_factory=dict)  # gamma="auto": iterations per chosen gamma
    predicted: list[float] = field(default_factory=list)  # gamma="auto": the planner's tokens/s for each choice
    # gamma="auto": per iteration (context, gamma, why, the planner's tokens/s per row for each gamma); why is
    # adaptive.GammaPlanner.last's: explore, best, bound (the acceptance bound kept speculating), catch-up, probe.
    decisions: list[tuple[int, int, str, dict]] = field(default_factory=list)
    intervals: dict[int, int] = field(default_factory=dict)  # exact, gamma="auto": sparse segments per check interval
    time_prefill: float = 0.0
    time_draft: float = 0.0
    time_select: float = 0.0
    time_verify: float = 0.0
    time_other: float = 0.0
    time_total: float = 0.0

    @property
    def tau(self) -> float:
        rates = [t / p for t, p in zip(self.new_tokens, self.row_passes) if p]
        return sum(rates) / len(rates) if rates else 0.0

    @property
    def tokens_per_pass(self) -> float:
        if not self.target_passes or not self.new_tokens:
            return 0.0
        return sum(self.new_tokens) / len(self.new_tokens) / self.target_passes

    @property
    def predicted_tokens_per_second(self) -> float:
        """gamma="auto": the planner's expected tokens/s, averaged over its informed choices (0: none)."""
        return sum(self.predicted) / len(self.predicted) if self.predicted else 0.0

    @property
    def time_decode(self) -> float:
        return self.time_total - self.time_prefill

    @property
    def decode_tokens_per_second(self) -> float:
        return sum(self.new_tokens) / self.time_decode if self.time_decode > 0 else 0.0

    def table(self) -> str:
        rows = [
            ("new tokens", f"{sum(self.new_tokens)} ({', '.join(map(str, self.new_tokens))})"),
            ("accepted drafts", f"{sum(self.accepted)} ({', '.join(map(str, self.accepted))})"),
            ("tau (tokens / verification)", f"{self.tau:.2f}"),
            ("tokens / target pass (checks too)", f"{self.tokens_per_pass:.2f}"),
            ("target passes (sparse / dense)", f"{self.target_passes} ({self.sparse_passes} / {self.dense_passes})"),
            ("draft passes", str(self.draft_passes)),
            ("provisional tokens rolled back", str(self.rolled_back)),
            ("estimated recovery (mean)", f"{sum(self.recovery) / len(self.recovery):.3f}" if self.recovery else "-"),
            ("prefill", f"{self.time_prefill:.2f} s ({self.prefill_passes} passes)"),
            ("draft / select / verify / other", f"{self.time_draft:.2f} / {self.time_select:.2f} / "
                                                f"{self.time_verify:.2f} / {self.time_other:.2f} s"),
            ("decode tokens/s", f"{self.decode_tokens_per_second:.2f}"),
        ]
        if self.gammas:
            rows.append(("gamma chosen (iterations)", ", ".join(f"{g}: {n}" for g, n in sorted(self.gammas.items()))))
            rows.append(("predicted tokens/s (mean)", f"{self.predicted_tokens_per_second:.2f}"))
        if self.intervals:
            rows.append(("check interval chosen (sparse runs)",
                         ", ".join(f"{i}: {n}" for i, n in sorted(self.intervals.items()))))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # [B, prompt + new], padded like transformers' generate
    stats: GenerateStats


class PhaseClock:
    """Adds wall time to ``stats.time_<phase>``; synchronises CUDA so asynchronous kernels are charged correctly."""

    def __init__(self, stats: GenerateStats, device: torch.device) -> None:
        self.stats, self.cuda = stats, device.type == "cuda"
        self.last: dict[str, float] = {}  # phase -> seconds of its latest run (gamma="auto" learns from these)

    @contextmanager
    def __call__(self, phase: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            name, elapsed = f"time_{phase}", time.perf_counter() - start
            self.last[phase] = elapsed
            setattr(self.stats, name, getattr(self.stats, name) + elapsed)
