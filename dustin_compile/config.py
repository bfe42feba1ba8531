"""``DustinConfig``: one frozen dataclass, validated on construction. Sampling knobs belong to ``generate()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

MODES = ("dense", "sparse", "guarded", "exact")
BACKENDS = ("auto", "inductor", "eager")
SELECTORS = ("dustin", "history", "draft", "streaming", "snapkv", "quest", "oracle")
DRAFT_KV = ("auto", "full", "window")
LINEARS = ("auto", "plain")
DRAFT_QUANTS = ("auto", "int8")


def _field(default: Any, help: str, choices: tuple[str, ...] | None = None):
    """A config field with its one-line help and its choices: ``dustin.cli`` builds its flags from these."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class DustinConfig:
    """How dustin runs a (target, draft) pair. Every default lives here; the CLI builds its flags from these fields.

    mode: ``"dense"`` — classic speculative decoding, full-KV verification (lossless control); ``"sparse"`` —
        Dustin: every target layer attends to ``budget`` selected cached positions plus the new tokens (lossy);
        ``"guarded"`` — sparse, but a dense verification whenever the estimated recovery of the selection falls
        below ``min_recovery`` and at least every ``refresh_every`` iterations (0 = no periodic refresh);
        ``"exact"`` — lossless: tokens accepted by sparse verification are provisional until one dense pass over
        every ``exact_every`` of them keeps the agreeing prefix (output == the target's own greedy decoding /
        sampling distribution). With ``gamma="auto"`` exact mode also chooses, whenever every token is final,
        between dense verification and sparse verification checked after at most ``exact_every`` provisional
        tokens, from the measured costs and rollback rate (adaptive.py).
    gamma: draft tokens per iteration (the target verifies gamma + 1 rows), or ``"auto"`` (default): every iteration
        chooses gamma in 0..``gamma_max`` for the most expected tokens per second, from step costs and acceptance
        measured as decoding runs (adaptive.py; 0 = the target decodes alone that iteration).
    gamma_max: with ``gamma="auto"``, the longest draft an iteration may choose.
    max_length: KV-cache capacity per sequence (prompt + new tokens + gamma + 1). ``None`` sizes it per ``generate``
        call (rounded up to a multiple of 256). A fixed value avoids recompiles across calls.
    dtype: cast both models to this dtype at compile time (in place, like ``model.to``); ``None`` keeps theirs.
    backend: ``"inductor"`` compiles the rewritten decode graphs with Inductor; ``"eager"`` runs the rewritten FX
        graphs as they are (no code generation: capture in seconds; what the tests use); ``"auto"`` (default):
        Inductor where the models run on a GPU, eager on a CPU, where Inductor measured no faster on the real pair
        (README, "Inductor or eager on a CPU") and its first compiles cost about a minute per decode graph.
    prefill_chunk: prompt tokens per prefill pass (bounds the prefill's activation memory).
    strict: raise if a captured graph has attention that cannot be rewritten (otherwise it stays as traced).
    budget, n_sink, window: the sparse selection — ``budget`` cached positions per sequence, of which the first
        ``n_sink`` and the last ``window`` are always kept.
    m: positions chosen by the draft's lookahead score (the rest of the budget by the target's history score);
        ``None`` takes the calibration profile's share (default half of ``budget - n_sink - window``).
    selector: ``"dustin"`` (lookahead + history), or a baseline at the same budget: ``"history"``, ``"draft"``,
        ``"streaming"`` (sink + recent), ``"snapkv"`` (chosen once from the prompt's last window), ``"quest"``
        (page-16 upper bounds, per step), ``"oracle"`` (true top-k of the verification queries; costs a dense pass).
    dense_layers: target layers that keep full attention in sparse verification (``()`` takes the profile's).
    draft_kv: ``"full"`` — the draft attends to its whole cache; ``"window"`` — to its first ``n_sink`` and last
        ``draft_window`` positions (its score heads still read the full cache for the lookahead signal; identical to
        ``"full"`` while a row holds at most ``n_sink + draft_window`` positions); ``"auto"`` (default) — ``"window"``
        in the sparse modes, where the draft's dense attention becomes the bottleneck once verification is sparse,
        and ``"full"`` in ``dense`` mode, where the window costs acceptance (the README has the measurements).
        Self-speculation (``dustin.compile(target)``, no draft model): ``"auto"`` is ``"window"`` in every mode.
    draft_layers: self-speculation only: the target layers the self-draft runs (``()``: all of them).
    draft_vocab: the draft scores only the ``draft_vocab`` most frequent token ids of the calibration texts
        (``profile.frequent_tokens``), not its whole vocabulary: its LM head reads that many rows per step. Lossless
        (the target verifies every token); costs acceptance where the target's token falls outside them.
    draft_quant: ``"int8"`` — the draft's decode steps run its linear layers on int8 weights (one scale per output
        row; draftquant.py): a quarter of the bytes a draft step streams. Lossless like ``draft_vocab`` (the target
        verifies every token); costs acceptance where rounding changes the draft's top token. CPU drafts in float32
        or bfloat16 only; the prefill keeps the float draft. ``"auto"`` (default): int8 for a separate float32 draft
        on the CPU, only its linears of at least 1 MiB (where int8 measured faster; smaller ones stay float), the
        draft as given anywhere else (GPU, bfloat16, self-speculation); ``DustinModel.draft_quant`` says which ran.
        ``None``: the draft as given.
    linear: ``"auto"`` (default) — the linear layers of multi-row steps (verification, checks, two-token draft
        steps, prefill chunks) run MKL's packed GEMM wherever it measures at least 10 % faster than ``F.linear`` on
        this machine for that weight shape and row count (fp32 on x86 CPUs; measured once, kept in
        ``$DUSTIN_CACHE/linear-choices.json``; costs one packed copy of each such weight in memory, ~1.25x its
        size); ``"plain"`` — every linear as the model traced it.
    """

    mode: str = _field("dense", "verification mode", choices=MODES)
    gamma: int | str = _field("auto", "draft tokens per iteration (the target verifies gamma + 1 rows), or 'auto': "
                              "chosen per iteration from measured costs and acceptance")
    gamma_max: int = _field(4, "gamma='auto': the longest draft an iteration may choose")
    max_length: int | None = _field(None, "KV-cache capacity per sequence (default: sized per generate call)")
    dtype: torch.dtype | None = _field(None, "cast both models to this dtype (default: keep theirs)")
    backend: str = _field("auto", "compile decode graphs with Inductor, or run the rewritten graphs as they are "
                          "(auto: Inductor on a GPU, eager on a CPU)", choices=BACKENDS)
    prefill_chunk: int = _field(512, "prompt tokens per prefill pass")
    strict: bool = _field(True, "raise if a captured graph has attention that cannot be rewritten")
    budget: int = _field(512, "sparse modes: cached positions each sequence attends to")
    n_sink: int = _field(4, "sparse modes: first positions always kept")
    window: int = _field(64, "sparse modes: most recent positions always kept")
    m: int | None = _field(None, "sparse modes: positions chosen by the draft's lookahead (default: the profile's share)")
    selector: str = _field("dustin", "sparse modes: how positions are chosen", choices=SELECTORS)
    dense_layers: tuple[int, ...] = _field((), "target layers kept dense in sparse verification (default: the profile's)")
    draft_kv: str = _field("auto", "the draft's own attention: full cache, or sink + recent window (auto: window in "
                           "the sparse modes)", choices=DRAFT_KV)
    draft_window: int = _field(512, "recent positions the draft attends to with draft_kv=window")
    min_recovery: float = _field(0.9, "guarded mode: verify densely when the estimated recovery falls below this")
    refresh_every: int = _field(16, "guarded mode: verify densely at least every this many iterations (0 = never)")
    exact_every: int = _field(8, "exact mode: provisional tokens per dense check (gamma='auto': at most this many)")
    draft_layers: tuple[int, ...] = _field((), "self-speculation (no draft model): target layers the self-draft runs "
                                           "(default: all)")
    draft_vocab: int | None = _field(None, "the draft scores only this many most frequent tokens (the profile's "
                                     "frequent_tokens; lossless; default: its full vocabulary)")
    draft_quant: str | None = _field("auto", "the draft's decode steps on int8 weights (lossless; auto: a float32 "
                                     "CPU draft's linears of >= 1 MiB)", choices=DRAFT_QUANTS)
    linear: str = _field("auto", "multi-row linears: MKL's packed GEMM where measured faster (auto), or as traced "
                         "(plain)", choices=LINEARS)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DustinConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.selector not in SELECTORS:
            raise ValueError(f"DustinConfig.selector must be one of {SELECTORS}, got {self.selector!r}")
        if self.draft_kv not in DRAFT_KV:
            raise ValueError(f"DustinConfig.draft_kv must be one of {DRAFT_KV}, got {self.draft_kv!r}")
        if self.gamma != "auto":
            _positive_int("gamma", self.gamma, hint=" or 'auto'")
        _positive_int("gamma_max", self.gamma_max)
        if self.max_length is not None:
            _positive_int("max_length", self.max_length, minimum=2)
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise TypeError(f"DustinConfig.dtype must be a floating torch.dtype or None, got {self.dtype!r}")
        if self.linear not in LINEARS:
            raise ValueError(f"DustinConfig.linear must be one of {LINEARS}, got {self.linear!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"DustinConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        _positive_int("prefill_chunk", self.prefill_chunk)
        _positive_int("budget", self.budget)
        _positive_int("n_sink", self.n_sink, minimum=0)
        _positive_int("window", self.window, minimum=0)
        if self.n_sink + self.window > self.budget:
            raise ValueError(
                f"DustinConfig: n_sink ({self.n_sink}) + window ({self.window}) must not exceed budget "
                f"({self.budget}); lower them or raise the budget"
            )
        if self.m is not None:
            _positive_int("m", self.m, minimum=0)
            if self.m > self.budget - self.n_sink - self.window:
                raise ValueError(
                    f"DustinConfig.m ({self.m}) must not exceed budget - n_sink - window "
                    f"({self.budget - self.n_sink - self.window})"
                )
        _positive_int("draft_window", self.draft_window)
        if self.draft_vocab is not None:
            _positive_int("draft_vocab", self.draft_vocab, hint=" or None")
        if self.draft_quant is not None and self.draft_quant not in DRAFT_QUANTS:
            raise ValueError(f"DustinConfig.draft_quant must be one of {DRAFT_QUANTS} or None, got {self.draft_quant!r}")
        if not isinstance(self.min_recovery, (int, float)) or not 0.0 <= self.min_recovery <= 1.0:
            raise ValueError(f"DustinConfig.min_recovery must be in [0, 1], got {self.min_recovery!r}")
        _positive_int("refresh_every", self.refresh_every, minimum=0)
        _positive_int("exact_every", self.exact_every)
        layers = tuple(self.dense_layers)
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
            raise ValueError(f"DustinConfig.dense_layers must be non-negative layer indices, got {self.dense_layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))
        kept = tuple(self.draft_layers)
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in kept):
            raise ValueError(f"DustinConfig.draft_layers must be non-negative layer indices, got {self.draft_layers!r}")
        object.__setattr__(self, "draft_layers", tuple(sorted(set(kept))))

    @property
    def adaptive(self) -> bool:
        """gamma is chosen per iteration (``gamma="auto"``)."""
        return self.gamma == "auto"

    @property
    def max_draft(self) -> int:
        """The most draft tokens one iteration may propose: gamma, or gamma_max with ``gamma="auto"``."""
        return self.gamma_max if self.adaptive else self.gamma

    @property
    def positions_ahead(self) -> int:
        """Cache positions one iteration may write past the committed text: the verification's max_draft + 1
        rows, and in exact mode the check's exact_every + max_draft more."""
        return self.max_draft + 1 + (self.exact_every + self.max_draft if self.mode == "exact" else 0)

    @property
    def draft_attention(self) -> str:
        """``draft_kv`` resolved for a draft model: ``"full"`` or ``"window"`` (``DustinModel.draft_attention`` also
        knows self-speculation)."""
        if self.draft_kv == "auto":
            return "full" if self.mode == "dense" else "window"
        return self.draft_kv

    def replace(self, **overrides) -> DustinConfig:
        """A copy with ``overrides`` applied; unknown keys are a ``TypeError`` listing the valid ones."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise TypeError(
                f"unknown DustinConfig field(s) {unknown}; valid fields are: {', '.join(field_names())}"
            )
        return dataclasses.replace(self, **overrides)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(DustinConfig))


def _positive_int(name: str, value: object, minimum: int = 1, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"DustinConfig.{name} must be an integer >= {minimum}{hint}, got {value!r}")
