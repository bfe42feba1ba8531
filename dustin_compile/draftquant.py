"""``draft_quant="int8"``: the draft's decode steps run its linear layers on int8 weights (weight-only, one scale per
output row; activations are rounded to bf16 inside the product and the result is cast back).

Why: a one-row draft step streams every draft weight once, so its time is its weight bytes over the memory
bandwidth: the real 0.5B draft streams ~2 GB of fp32 per step, about 40 % of a 1.5B target step, and that is what
caps classic speculative decoding on a CPU (README, "`gamma="auto"` after the acceptance fix"). int8 weights are a
quarter of those bytes. Weight-only (``torch._weight_int8pack_mm``) rather than dynamic int8 activations: on the
real draft, per-tensor int8 activations cut its top-1 agreement with the target from 0.59 to 0.54 (1,024 essay
tokens, teacher-forced), weight-only int8 left it at 0.59.

It is lossless: the draft only proposes and the target verifies every token (the modes keep their guarantees;
``sparse`` stays as lossy as it was). What it can cost is acceptance, where rounding flips the draft's top token.

Scope, each measured or refused rather than assumed:
- CPU only: the kernel was timed on x86 CPUs (the real draft's linears at 1-8 rows: 1.7-2.3x faster than fp32
  ``F.linear`` in all on an AMX host, ``benchmarks/draft_int8.py``; 2.3-5.8x on an AVX2 host, one-off); GPUs are
  not measured here, so a draft on another device is refused.
- Decode steps only: at prefill sizes (512-2048 rows) the int8 product measured 2x slower than fp32, so the prefill
  keeps the float draft (both write the same KV cache; only proposals depend on it).
- Linears whose ``in_features`` is not a multiple of 16 stay float: torch 2.13's CPU kernel crashes on an AVX2 host
  where it is not a multiple of 8, and on an AVX-512 host (AMX) where it is not a multiple of 16 (in_features 8:
  wrong numbers for one row, a crash for two).
- Only plain ``torch.nn.Linear`` modules (not subclasses, which may compute something else) are converted.

``int8_draft`` returns a view of the draft: the converted modules are new, every other module and parameter is
shared (the user's draft is not modified). The int8 copy is made once, when the view is built: a draft whose
weights change in place afterwards keeps proposing from the old ones (still lossless); compile again to refresh.
"""

from __future__ import annotations

import copy

import torch

DTYPES = (torch.float32, torch.bfloat16)
K_MULTIPLE = 16  # in_features the CPU kernel handles on every host measured (see the module docstring)


class Int8Linear(torch.nn.Module):
    """``y = x Wᵀ + b`` with ``W ≈ q * scale[:, None]``, ``q`` int8 in [-127, 127], ``scale`` bf16 per output row."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        # The bf16 scale is the one the kernel multiplies by, so quantize against it (not the fp32 value it rounds).
        scale = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny).to(torch.bfloat16)
        qweight = torch.round(weight / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale)
        self.bias = linear.bias  # shared with the float module, not copied
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch._weight_int8pack_mm(flat, self.qweight, self.scale).to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def convertible(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` (its own forward) on the CPU, float32 / bfloat16, ``in_features`` a multiple of 16."""
    return (isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward
            and module.weight.device.type == "cpu" and module.weight.dtype in DTYPES
            and module.in_features % K_MULTIPLE == 0)


def check_draft(draft: torch.nn.Module, self_draft: bool) -> None:
    """Refuse a draft ``draft_quant="int8"`` cannot serve, with the reason and the fix."""
    if self_draft:
        raise ValueError("draft_quant needs a separate draft model: a self-draft runs the target's own layers; "
                         "pass a draft to dustin.compile(target, draft, draft_quant='int8') or drop draft_quant")
    param = next(draft.parameters(), None)
    if param is None or param.device.type != "cpu":
        where = "no parameters" if param is None else f"parameters on {param.device}"
        raise ValueError(f"draft_quant='int8' is measured and supported on CPU drafts only; this draft has {where}: "
                         "drop draft_quant (None)")
    if param.dtype not in DTYPES:
        raise ValueError(f"draft_quant='int8' needs a float32 or bfloat16 draft, got {param.dtype}: cast it "
                         "(dtype=torch.float32) or drop draft_quant")
    if not any(convertible(m) for m in draft.modules()):
        raise ValueError("draft_quant='int8' found no torch.nn.Linear with in_features a multiple of 16 in the draft "
                         "to convert: drop draft_quant (None)")


def int8_draft(draft: torch.nn.Module) -> torch.nn.Module:
    """A view of ``draft`` whose convertible linears (``convertible``) are ``Int8Linear``; the rest is shared."""
    memo: dict[int, torch.nn.Module] = {}  # a module reached twice (tied or shared) is converted once

    def view(module: torch.nn.Module) -> torch.nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        if convertible(module):
            with torch.no_grad():
                new = Int8Linear(module)
        else:
            children = {name: (view(child) if child is not None else None) for name, child in module._modules.items()}
            new = module
            if any(children[name] is not child for name, child in module._modules.items()):
                new = copy.copy(module)  # shallow: parameters, buffers and hooks stay shared
                new.__dict__["_modules"] = children
        memo[id(module)] = new
        return new

    return view(draft)
