"""Free-running arms on one shared prefill: greedy continuations compared with the target's own (``ar``).

An *arm* is a mode (with a budget and selector in the sparse modes) run through ``DustinModel.with_config`` on the
caches of the base model, so a long prompt is prefilled once for every arm. Each arm is warmed up first (prefill
on the first arm, graph capture on every arm), then timed by ``generate``; eos is off, so every arm generates
exactly ``max_new_tokens`` tokens per row.

``ar`` is the target alone (dense verification, no draft: one token per pass, equal to its greedy decoding).
``exact`` must equal ``ar`` token for token in every row: ``exact_mismatches`` lists the runs where it does not,
and the evaluation fails on any.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import SELECTORS
from .selectors import LOOKAHEAD_SELECTORS
from .model import DustinModel
from .stats import GenerateStats

# name -> (mode, use_draft, takes a budget and selector): the arms of benchmarks/e2e.py. ``sparse-ar`` is the
# target alone with sparse attention (no draft, so no lookahead: its selector must not read one).
ARM_KINDS = {"ar": ("dense", False, False), "dense": ("dense", True, False), "sparse": ("sparse", True, True),
             "exact": ("exact", True, True), "guarded": ("guarded", True, True), "sparse-ar": ("sparse", False, True)}
EXTRA_KINDS = ("guarded", "sparse-ar")  # what --free-arms may add per budget


@dataclass(frozen=True)
class Arm:
    kind: str
    budget: int | None = None
    selector: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARM_KINDS:
            raise ValueError(f"arm kind must be one of {tuple(ARM_KINDS)}, got {self.kind!r}")
        sparse = ARM_KINDS[self.kind][2]
        if sparse and (self.budget is None or self.selector not in SELECTORS):
            raise ValueError(f"arm {self.kind!r} needs a budget and a selector of {SELECTORS}")
        if not sparse and (self.budget is not None or self.selector is not None):
            raise ValueError(f"arm {self.kind!r} is dense: it takes no budget or selector")
        if not ARM_KINDS[self.kind][1] and self.selector in LOOKAHEAD_SELECTORS:
            raise ValueError(f"arm {self.kind!r} runs without the draft: selector {self.selector!r} needs its "
                             "lookahead; use 'history' (or another selector that does not read the draft)")

    @property
    def label(self) -> str:
        if self.budget is None:
            return self.kind
        return f"{self.kind}@{self.budget}" + ("" if self.selector == "dustin" else f":{self.selector}")


@dataclass
class ArmRun:
    arm: Arm
    tokens: torch.Tensor  # [B, max_new_tokens] the new tokens
    stats: GenerateStats


def run_arm(base: DustinModel, arm: Arm, prompt: torch.Tensor, max_new_tokens: int,
            attention_mask: torch.Tensor | None = None, progress: bool = False) -> ArmRun:
    """Warm up (prefill once for all arms, capture graphs), then a timed greedy ``generate`` of ``arm``."""
    mode, use_draft, sparse = ARM_KINDS[arm.kind]
    overrides = {"mode": mode, **({"budget": arm.budget, "selector": arm.selector} if sparse else {})}
    model = base.with_config(**overrides)
    model.warmup(prompt, attention_mask, max_new_tokens=max_new_tokens, use_draft=use_draft, progress=progress)
    out = model.generate(prompt, attention_mask, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[],
                         use_draft=use_draft, progress=progress)
    return ArmRun(arm, out.sequences[:, prompt.shape[1]:], out.stats)


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> tuple[float, int | None]:
    """(share of tokens equal to ``reference``'s over every row, the first position where any row differs, or
    None when all are equal)."""
    same = tokens == reference
    if bool(same.all()):
        return 1.0, None
    return float(same.double().mean()), int((~same).any(0).nonzero()[0, 0])


def exact_mismatches(runs: list[ArmRun], where: str) -> list[str]:
    """A message per ``exact`` run whose tokens differ from the ``ar`` run's in some row."""
    reference = next((r for r in runs if r.arm.kind == "ar"), None)
    if reference is None:
        return []
    messages = []
    for run in runs:
        if run.arm.kind == "exact" and not torch.equal(run.tokens, reference.tokens):
            rows = (run.tokens != reference.tokens).any(1).nonzero().flatten().tolist()
            share, first = agreement(run.tokens, reference.tokens)
            messages.append(f"{where}: {run.arm.label} differs from ar in rows {rows} (first at new token {first}, "
                            f"agreement {share:.3f}); exact mode must reproduce the target's greedy output")
    return messages


def free_row(run: ArmRun, reference: ArmRun) -> dict:
    """The CSV row of ``run``: agreement with the ``reference`` (ar) run, its first divergence (new-token index),
    tau, tokens per target pass, decode speed and speedup over the reference."""
    share, first = agreement(run.tokens, reference.tokens)
    s, ar_speed = run.stats, reference.stats.decode_tokens_per_second
    return {"arm": run.arm.label, "kind": run.arm.kind, "budget": run.arm.budget or "",
            "selector": run.arm.selector or "", "new_tokens": sum(s.new_tokens),
            "agreement_with_ar": round(share, 4), "first_divergence": "" if first is None else first,
            "equals_ar": share == 1.0, "tau": round(s.tau, 3), "tokens_per_target_pass": round(s.tokens_per_pass, 3),
            "target_passes": s.target_passes, "decode_tokens_per_s": round(s.decode_tokens_per_second, 3),
            "speedup_vs_ar": round(s.decode_tokens_per_second / ar_speed, 3) if ar_speed else "",
            "decode_s": round(s.time_decode, 3)}
