"""``draft_quant="int8"``: the draft's decode steps run its linear layers on int8 weights (weight-only, one scale per
output row). A float32 draft's products run dustin's kernel (``dustin::int8_linear``, kernels/linear/int8.py: float32
activations and accumulation) where dustin's C++ CPU kernels are built, else torch's ``_weight_int8pack_mm``
(activations rounded to bf16 inside the product, the result cast back); a bfloat16 draft always runs torch's.

Why: a one-row draft step streams every draft weight once, so its time is its weight bytes over the memory
bandwidth: the real 0.5B draft streams ~2 GB of fp32 per step, about 40 % of a 1.5B target step, and that is what
caps classic speculative decoding on a CPU (README, "`gamma="auto"` after the acceptance fix"). int8 weights are a
quarter of those bytes. Weight-only rather than dynamic int8 activations: on the real draft, per-tensor int8
activations cut its top-1 agreement with the target from 0.59 to 0.54 (1,024 essay tokens, teacher-forced),
weight-only int8 left it at 0.59 (0.584 with dustin's kernel, 0.582 with torch's). dustin's kernel streams the
weights faster than torch's: the real draft's int8 linears (AMX host, ``benchmarks/draft_int8.py``,
docs/speed/draft_int8_amx_kernel.csv) 30.0 ms a one-row step against 37.0, 48.5 ms for 5 rows against 81.9.

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

``draft_quant="auto"`` (the default) is ``"int8"`` where it measured faster, the draft as given elsewhere: a separate
float32 draft on the CPU, converting only linears whose float32 weight holds at least ``AUTO_MIN_BYTES`` (1 MiB). A
one-row product through such a weight streams it from memory, and int8 was 1.4-3.5x faster at 1-8 rows for every
such linear of the real draft (q/o 896x896, gate/up/down, LM head; AMX host); the 128x896 K/V projections (0.46 MB,
cache-resident) measured 0.6-0.86x, and a tiny model's weights all sit in the cache. bfloat16 drafts, GPUs and
self-drafts are not measured: ``"auto"`` leaves them as given (``"int8"`` still opts a bfloat16 draft in).

Every view is checked once when it is built (``kernel_mismatches``): each distinct weight shape runs 1, 2 and 5 rows
through the kernel against a float reference of the same int8 weights. torch's kernel has returned wrong numbers for
shapes it does not support (in_features 8 on AVX-512) without an error; a mismatch refuses ``"int8"`` and makes
``"auto"`` keep the float draft (with a warning). A crash in torch's kernel cannot be caught this way (dustin's, which
float32 drafts run where it is built, takes any shape: kernels/linear/int8_linear.cpp).

``int8_draft`` returns a view of the draft: the converted modules are new, every other module and parameter is
shared (the user's draft is not modified). The int8 copy is made once, when the view is built: a draft whose
weights change in place afterwards keeps proposing from the old ones (still lossless); compile again to refresh.
"""

from __future__ import annotations

import copy

import torch

from dustin.kernels.linear import int8 as int8_kernel

DTYPES = (torch.float32, torch.bfloat16)
K_MULTIPLE = 16  # in_features the CPU kernel handles on every host measured (see the module docstring)
AUTO_MIN_BYTES = 2**20  # draft_quant="auto": float32 weights at least this large (streamed, not cache-resident)
CHECK_ROWS = (1, 2, 5)  # rows the one-time kernel check runs: the draft's 1- and 2-row steps, and an odd count
CHECK_OUTPUTS = 256  # output rows of the float reference per weight (the kernel itself runs on the whole weight)


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
        # A float32 linear runs dustin's kernel where it is built (float32 activations and result, the bias added
        # inside), else torch's (bfloat16 activations and result): kernels/linear/int8.py. Decided once, here.
        self.kernel = linear.weight.dtype == torch.float32 and int8_kernel.available()
        if self.kernel:
            self.register_buffer("scale_f32", scale.float())  # the same values: bf16 is exact in float32

    def product(self, flat: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``flat [M, in_features] @ (qweight * scale)ᵀ (+ bias)`` through this module's kernel, in flat's dtype."""
        if self.kernel:
            return int8_kernel.int8_linear(flat.float(), self.qweight, self.scale_f32, bias)
        out = torch._weight_int8pack_mm(flat.to(torch.bfloat16).contiguous(), self.qweight, self.scale).to(flat.dtype)
        return out if bias is None else out + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.product(x.reshape(-1, self.in_features), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={'dustin' if self.kernel else 'torch'}")


def convertible(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` (its own forward) on the CPU, float32 / bfloat16, ``in_features`` a multiple of 16."""
    return (isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward
            and module.weight.device.type == "cpu" and module.weight.dtype in DTYPES
            and module.in_features % K_MULTIPLE == 0)


def auto_convertible(module: torch.nn.Module) -> bool:
    """What ``draft_quant="auto"`` converts: a ``convertible`` float32 linear of at least ``AUTO_MIN_BYTES``."""
    return (convertible(module) and module.weight.dtype == torch.float32
            and module.weight.numel() * module.weight.element_size() >= AUTO_MIN_BYTES)


def resolve_quant(choice: str | None, draft: torch.nn.Module, self_draft: bool) -> str | None:
    """``DustinConfig.draft_quant`` as it runs: ``"auto"`` becomes ``"int8"`` for a separate float32 CPU draft with
    a linear ``auto_convertible`` converts, ``None`` otherwise; ``"int8"`` and ``None`` stay as given."""
    if choice != "auto":
        return choice
    param = next(draft.parameters(), None)
    if self_draft or param is None or param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    return "int8" if any(auto_convertible(m) for m in draft.modules()) else None


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


def int8_draft(draft: torch.nn.Module, select=convertible) -> torch.nn.Module:
    """A view of ``draft`` whose linears ``select`` picks (``convertible`` ones; ``"auto"``: ``auto_convertible``)
    are ``Int8Linear``; the rest is shared."""
    memo: dict[int, torch.nn.Module] = {}  # a module reached twice (tied or shared) is converted once

    def view(module: torch.nn.Module) -> torch.nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        if select(module):
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


def kernel_mismatches(view: torch.nn.Module) -> list[str]:
    """The weight shapes (``"out x in"``) for which the int8 kernel disagrees with a float reference on this machine:
    each distinct shape of the view's ``Int8Linear`` modules runs ``CHECK_ROWS`` random rows through its kernel
    (dustin's or torch's: ``Int8Linear.product``) on its whole weight, compared on up to ``CHECK_OUTPUTS`` output rows
    with ``x @ (q * scale)ᵀ`` in float64. The reference has the kernel's inputs (x as the kernel reads it: float32 for
    dustin's, bf16 for torch's; the same int8 weights and bf16 scales), so the only honest difference is the kernel's
    float32 accumulation and, for torch's, its bf16 output (2^-8 relative)."""
    bad, seen = [], set()
    generator = torch.Generator().manual_seed(0)
    for module in view.modules():
        if not isinstance(module, Int8Linear):
            continue
        shape = (module.out_features, module.in_features, module.kernel)
        if shape in seen:
            continue
        seen.add(shape)
        picked = torch.randperm(module.out_features, generator=generator)[:CHECK_OUTPUTS]
        weight = module.qweight[picked].double() * module.scale[picked].double()[:, None]
        for rows in CHECK_ROWS:
            x = torch.randn(rows, module.in_features, generator=generator)
            if not module.kernel:  # torch's kernel reads x in bfloat16: the reference takes what it reads
                x = x.to(torch.bfloat16).float()
            with torch.no_grad():
                got = module.product(x, None)[:, picked].double()
            ref = x.double() @ weight.T
            bound = 2.0 ** -7 * ref.abs() + 1e-4 * (x.double().abs() @ weight.abs().T) + 1e-30
            if not bool(((got - ref).abs() <= bound).all()):
                bad.append(f"{module.out_features}x{module.in_features}")
                break
    return bad
