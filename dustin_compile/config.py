"""``DustinConfig``: one frozen dataclass, validated on construction. Sampling knobs belong to ``generate()``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

MODES = ("dense", "sparse", "guarded", "exact")
BACKENDS = ("inductor", "eager")
IMPLEMENTED_MODES = ("dense", "sparse")


@dataclass(frozen=True)
class DustinConfig:
    """How dustin runs a (target, draft) pair.

    mode: ``"dense"`` — classic speculative decoding, full-KV verification (lossless control); ``"sparse"`` —
        Dustin: every target layer attends to ``budget`` selected cached positions plus the new tokens;
        ``"guarded"`` and ``"exact"`` arrive with the policy work.
    gamma: draft tokens per iteration (the target verifies gamma + 1 rows).
    max_length: KV-cache capacity per sequence (prompt + new tokens + gamma + 1). ``None`` sizes it per ``generate``
        call (rounded up to a multiple of 256). A fixed value avoids recompiles across calls.
    dtype: cast both models to this dtype at compile time (in place, like ``model.to``); ``None`` keeps theirs.
    backend: ``"inductor"`` compiles the rewritten decode graphs with Inductor; ``"eager"`` runs the rewritten FX
        graphs as they are (no code generation: capture in seconds; what the tests use).
    prefill_chunk: prompt tokens per prefill pass (bounds the prefill's activation memory).
    strict: raise if a captured graph has attention that cannot be rewritten (otherwise it stays as traced).
    budget, n_sink, window: the sparse selection — ``budget`` cached positions per sequence, of which the first
        ``n_sink`` and the last ``window`` are always kept.
    """

    mode: str = "dense"
    gamma: int = 4
    max_length: int | None = None
    dtype: torch.dtype | None = None
    backend: str = "inductor"
    prefill_chunk: int = 512
    strict: bool = True
    budget: int = 512
    n_sink: int = 4
    window: int = 64
    dense_layers: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DustinConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.mode not in IMPLEMENTED_MODES:
            raise NotImplementedError(
                f"DustinConfig.mode={self.mode!r} is not implemented yet; use one of {IMPLEMENTED_MODES}"
            )
        _positive_int("gamma", self.gamma)
        if self.max_length is not None:
            _positive_int("max_length", self.max_length, minimum=2)
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise TypeError(f"DustinConfig.dtype must be a floating torch.dtype or None, got {self.dtype!r}")
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
        layers = tuple(self.dense_layers)
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in layers):
            raise ValueError(f"DustinConfig.dense_layers must be non-negative layer indices, got {self.dense_layers!r}")
        object.__setattr__(self, "dense_layers", tuple(sorted(set(layers))))

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


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"DustinConfig.{name} must be an integer >= {minimum}, got {value!r}")
