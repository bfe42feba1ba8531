"""Shared helpers of the kernels: reusable workspaces and eager input checks.

Workspaces: the torch references are the CPU production path and run once per layer per verification step, so a
fresh multi-MB allocation per call costs more than the gather it holds. ``workspace`` hands out views
of one growing buffer per (name, dtype, device). A view is only valid until the next call with the same name: an op
must never return it (outputs are always fresh tensors) and must not call itself recursively. The cache is per
process and not thread-safe: two threads running the same op at once would share its workspaces (the driver runs
one generation loop per process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

_WORKSPACES: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
_VIEWS: dict[tuple, torch.Tensor] = {}  # (name, shape, dtype, device) -> view: the hot path is one dict lookup


def workspace(name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous tensor of ``shape`` carved from a cached buffer; contents are whatever the last user left."""
    shape = tuple(int(s) for s in shape)
    view = _VIEWS.get((name, shape, dtype, device))
    if view is not None:
        return view
    numel = 1
    for size in shape:
        numel *= size
    key = (name, dtype, torch.device(device))
    buf = _WORKSPACES.get(key)
    if buf is None or buf.numel() < numel:
        # Grow geometrically so that slowly increasing shapes (a context that grows) do not reallocate every call.
        capacity = max(numel, 2 * buf.numel() if buf is not None else 0)
        buf = torch.empty(capacity, dtype=dtype, device=device)
        _WORKSPACES[key] = buf
        for stale in [k for k in _VIEWS if k[0] == name and k[2] == dtype]:  # views of the old buffer
            del _VIEWS[stale]
    view = buf[:numel].view(shape)
    if len(_VIEWS) > 256:  # many distinct shapes (a growing context): keep the cache bounded
        _VIEWS.clear()
    _VIEWS[(name, shape, dtype, device)] = view
    return view


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def cached_constant(key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The small constant tensor stored under ``key`` (which must name everything it depends on, device included),
    built on first use. Per-layer ops rebuilt such constants (aranges, masks) on every call, a few microseconds
    each. Callers must never write to the result."""
    found = _CONSTANTS.get(key)
    if found is None:
        if len(_CONSTANTS) > 256:  # a growing context produces many lengths: keep the cache bounded
            _CONSTANTS.clear()
        found = _CONSTANTS[key] = build()
    return found


def cached_arange(n: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(n, device=device)``, built once per (n, device)."""
    return cached_constant(("arange", n, torch.device(device)), lambda: torch.arange(n, device=device))


def fill_workspaces_(value: float) -> None:
    """Overwrite every cached workspace with ``value`` (tests poison them with NaN so unwritten reads show up)."""
    for buf in _WORKSPACES.values():
        if buf.is_floating_point():
            buf.fill_(value)
        else:
            buf.fill_(-(2**30) if value != value else int(value))  # NaN has no integer form: use a wild index


def clear_workspaces() -> None:
    """Release every cached workspace (frees memory after a long context run)."""
    _WORKSPACES.clear()
    _VIEWS.clear()


# ---- eager validation ---------------------------------------------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"{type(value).__name__} {value!r}"


def check_tensor(op: str, name: str, value: object, rank: int, layout: str, dtypes: Sequence[torch.dtype]) -> None:
    """``value`` is a tensor of ``rank`` dims with a dtype in ``dtypes``; ``layout`` names the dims for the message."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor {layout}, got {_describe(value)}")
    if value.dim() != rank:
        raise ValueError(
            f"{op}: `{name}` must have {rank} dims {layout}, got {_describe(value)}; reshape it to {layout}"
        )
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: `{name}` must have dtype in ({allowed}), got {value.dtype}; cast it with .to()")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    """All tensors on one device (the kernels never move data between devices behind the caller's back)."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"`{n}` on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}; move them with .to(device)")


def check_gqa(op: str, q: torch.Tensor, k_cache: torch.Tensor) -> None:
    """Batch, head-dim and head-count agreement between ``q [B, Hq, T, D]`` and ``k_cache [B, Hkv, S, D]``."""
    if q.shape[0] != k_cache.shape[0]:
        raise ValueError(
            f"{op}: `q` has batch {q.shape[0]} but `k_cache` has batch {k_cache.shape[0]}; they must match"
        )
    if q.shape[3] != k_cache.shape[3]:
        raise ValueError(f"{op}: `q` has head dim {q.shape[3]} but `k_cache` has {k_cache.shape[3]}; they must match")
    if k_cache.shape[1] == 0 or q.shape[1] % k_cache.shape[1]:
        raise ValueError(
            f"{op}: `q` has {q.shape[1]} heads, not a multiple of the {k_cache.shape[1]} KV heads of `k_cache`; "
            "pass the cache un-repeated ([B, Hkv, S, D]) and all query heads ([B, Hq, T, D])"
        )


def check_seq_lens(op: str, seq_lens: torch.Tensor, batch: int, rows: int, capacity: int) -> None:
    """``seq_lens [B]`` integer, and ``seq_lens + rows`` fits the cache; one host sync (eager only)."""
    check_tensor(op, "seq_lens", seq_lens, 1, "[B]", INDEX_DTYPES)
    if seq_lens.shape[0] != batch:
        raise ValueError(f"{op}: `seq_lens` has {seq_lens.shape[0]} entries but the batch is {batch}")
    if batch == 0:
        return
    low, high = int(seq_lens.min()), int(seq_lens.max())
    if low < 0 or high + rows > capacity:
        raise ValueError(
            f"{op}: `seq_lens` + {rows} new rows must lie in [0, {capacity}] (the cache length); got seq_lens in "
            f"[{low}, {high}]; grow the cache or shorten the context"
        )


def check_window(op: str, window: object) -> None:
    """``window``: 0 (none) or a positive sliding-window length."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"{op}: `window` must be an int >= 0 (0 = no sliding window), got {window!r}")
