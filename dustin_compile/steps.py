"""Compiled step functions (gpt-fast style: compile the steps, keep the accept/reject loop in eager Python).

Every step has the same signature ``step(input_ids [B, T], position_ids [B, T], seq_lens [B])``: it writes the new
K/V at ``position_ids`` and builds the model's attention mask in the graph with ``dustin::causal_mask(seq_lens, ...)``
(masks.py), the one mask the pass proves equivalent to its replacement. It is captured by ``torch.compile`` with
dustin's backend, which rewrites its attention per a ``RewritePlan``. The driver-owned state of a step (``indices``,
tap buffers) lives in the current ``DecodeState`` and is looked up at every call, so one compiled graph serves every
state of matching shape.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable

import torch

from dustin.passes import DustinBackend, LinearChooser, PassError, PassReport, RewritePlan

from .cache import RowCache
from .masks import MaskSpec


def _own_code(fn: Callable, tag: str) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps one compile cache per code object, and two dustin
    models (or a prefill and a decode step) must never reuse each other's graphs, which bind different plans."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _make_forward(model: torch.nn.Module, get_cache: Callable[[], RowCache], masks: MaskSpec,
                  logits: bool) -> Callable:
    run = model if logits else model.base_model  # prefill only fills the cache: skip the LM head

    def step(input_ids, position_ids, seq_lens):
        cache = get_cache()
        cache.write_pos = position_ids
        mask = masks.build(seq_lens, input_ids.shape[1], cache.capacity)
        out = run(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, past_key_values=cache,
                  use_cache=True)
        return out.logits if logits else out.last_hidden_state[:, -1:]

    return step


class StepGraph:
    """One compiled step: a model, the cache it writes, its plan, and where its state comes from."""

    def __init__(self, model: torch.nn.Module, role: str, plan: RewritePlan, get_cache: Callable[[], RowCache],
                 get_state: Callable[[], dict[str, torch.Tensor]], *, masks: MaskSpec, inductor: bool, strict: bool,
                 logits: bool = True, id_max: int | None = None, linear: LinearChooser | None = None) -> None:
        self.role, self.plan, self.get_cache, self.id_max = role, plan, get_cache, id_max
        self.calls = 0  # the first call captures (and compiles): the driver does not count it as a step's cost
        self.backend = DustinBackend(plan, get_state, name=role, inductor=inductor, strict=strict, linear=linear)
        fn = _own_code(_make_forward(model, get_cache, masks, logits), f"{role}_{uuid.uuid4().hex[:8]}")
        self.compiled = torch.compile(fn, backend=self.backend, fullgraph=True, dynamic=False)

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        if self.id_max is not None:
            input_ids = input_ids.clamp_max(self.id_max)
        try:
            out = self.compiled(input_ids, position_ids, seq_lens)
            self.calls += 1
            return out
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            # dynamo wraps what our backend raised; the user should see the pass's own error (as export does).
            if isinstance(getattr(exc, "inner_exception", None), PassError):
                raise exc.inner_exception from None
            raise

    @property
    def report(self) -> PassReport | None:
        return self.backend.reports[-1] if self.backend.reports else None
