"""``dustin::packed_linear``: ``F.linear`` against a weight packed once by MKL (``cblas_sgemm_pack``).

The packed copy comes from ``pack_weight`` (``torch.ops.mkl._mkl_reorder_linear_weight``) and serves any number of
rows (``_mkl_linear`` is told the rows of each call). This op is what Inductor graphs call: Inductor's own lowering
of ``mkl._mkl_linear`` wants the packed weight as a frozen constant, while dustin hands it in at each call
(passes/linear.py). Eager graphs call ``mkl._mkl_linear``
directly (``packed_linear_reference``), which skips the custom-op dispatch (~13 us per call).
"""

from __future__ import annotations

import torch

__all__ = ["PACK_ROWS", "pack_weight", "packed_linear", "packed_linear_reference", "packed_linear_cat",
           "packed_linear_cat_reference"]

# MKL packs for a row count; the copy is correct for any, but its speed is not: packed for 1 row, 2-8 rows run
# 1.5-2x slower than packed for 2-8 (measured on the real pair's shapes, benchmarks/linear.py). 8 is within a few
# per cent of the best layout for every row count from 2 to 8.
PACK_ROWS = 8


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """MKL's packed copy of an fp32 CPU ``weight [out, in]`` (an opaque mkldnn-layout tensor)."""
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        raise ValueError(f"pack_weight needs a 2-D float32 CPU weight, got {weight.dtype} {tuple(weight.shape)} "
                         f"on {weight.device}")
    with torch.no_grad():
        return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), PACK_ROWS)


def packed_linear_reference(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the packed copy; any leading shape of ``x``."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkl._mkl_linear(flat, packed, weight, bias, flat.shape[0])
    return out.reshape(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("dustin::packed_linear", mutates_args=())
def _packed_linear_op(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    return packed_linear_reference(x, packed, weight, bias)


@_packed_linear_op.register_fake
def _(x, packed, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def packed_linear(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.dustin.packed_linear(x, packed, weight, bias)


def packed_linear_cat_reference(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                                out_features: int) -> torch.Tensor:
    """``F.linear`` through the packed copy of a weight that is not kept in plain form: sibling linears' weights
    concatenated along their outputs (passes/linear.py, fusion). ``_mkl_linear`` reads its plain-weight argument only
    to fall back to ``F.linear`` when a call's rows differ from the rows it is told; told the call's own rows, it
    never does, so a zero-stride stand-in of the plain weight's shape serves (no copy of the concatenation)."""
    flat = x.reshape(-1, x.shape[-1])
    shape_only = flat.new_zeros(()).expand(out_features, flat.shape[1])
    out = torch.ops.mkl._mkl_linear(flat, packed, shape_only, bias, flat.shape[0])
    return out.reshape(*x.shape[:-1], out_features)


@torch.library.custom_op("dustin::packed_linear_cat", mutates_args=())
def _packed_linear_cat_op(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                          out_features: int) -> torch.Tensor:
    return packed_linear_cat_reference(x, packed, bias, out_features)


@_packed_linear_cat_op.register_fake
def _(x, packed, bias, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


def packed_linear_cat(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                      out_features: int) -> torch.Tensor:
    return torch.ops.dustin.packed_linear_cat(x, packed, bias, out_features)
