"""How a model takes its attention mask, and the masks the driver builds for it.

Every compiled step builds its mask inside the graph with ``dustin::causal_mask(seq_lens, rows, capacity, window)``:
row t of sequence b sees positions <= seq_lens[b] + t, and in a sliding-window layer only the last ``window`` of
them (transformers' convention). The graph pass rewrites exactly the SDPA calls masked by that op, taking the
window from it, so sliding-window layers are honoured in every role (prefill, drafts, dense and sparse
verification) and a mask the pass cannot prove is never replaced.

transformers 5.23 models take their mask in one of two ways, which decides what the driver passes:
- a mapping by layer type (``{"full_attention": ..., "sliding_attention": ...}``; Qwen2/3, Gemma 2/3, gpt-oss, ...),
  for configs with per-layer ``layer_types``;
- one mask for every layer (Llama, Mistral, Phi3, OLMo2, ...), sliding when the config has ``sliding_window``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from dustin.kernels import causal_mask

from .errors import ModelPairError

SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class MaskSpec:
    """``windows``: (layer type, sliding window or 0) pairs; ``mapping``: the model takes a dict by layer type
    (else one mask, ``windows`` holding a single pair)."""

    windows: tuple[tuple[str, int], ...] = (("full_attention", 0),)
    mapping: bool = False

    def build(self, seq_lens: torch.Tensor, rows: int, capacity: int):
        """The ``attention_mask`` argument for a step of ``rows`` rows over a cache of ``capacity`` positions."""
        masks = {kind: causal_mask(seq_lens, rows, capacity, window) for kind, window in self.windows}
        return masks if self.mapping else next(iter(masks.values()))

    @property
    def sliding_window(self) -> int:
        """The largest sliding window (0 when no layer has one)."""
        return max(window for _, window in self.windows)


def mask_spec(model: torch.nn.Module, name: str = "model") -> MaskSpec:
    """How ``model`` takes its mask; refuses layer kinds dustin cannot run (naming the layer and its kind) and
    models whose mask handling it cannot read."""
    cfg = model.config
    window = getattr(cfg, "sliding_window", None) or 0
    if not (isinstance(window, int) and window >= 0):
        raise ModelPairError(f"`{name}` has config.sliding_window={window!r}; expected a positive int or None")
    source = _forward_source(model)
    kinds = list(getattr(cfg, "layer_types", None) or [])
    if source is None and (window or any(kind != "full_attention" for kind in kinds)):
        raise ModelPairError(f"`{name}` ({type(model).__name__}) has sliding-window settings, but the source of its "
                             "forward is unavailable, so dustin cannot tell which layers use them")
    if kinds and "causal_mask_mapping" in (source or ""):  # the forward takes a mapping by layer type
        for layer, kind in enumerate(kinds):
            if kind not in SUPPORTED_LAYER_TYPES:
                raise ModelPairError(
                    f"`{name}` layer {layer} is a {kind!r} layer; dustin runs {' and '.join(SUPPORTED_LAYER_TYPES)} "
                    "layers (full causal and sliding-window attention). Use a model without such layers"
                )
        if "sliding_attention" in kinds and not window:
            raise ModelPairError(f"`{name}` has sliding_attention layers but config.sliding_window={window!r}")
        present = [kind for kind in SUPPORTED_LAYER_TYPES if kind in kinds]
        return MaskSpec(tuple((kind, window if kind == "sliding_attention" else 0) for kind in present), True)
    # One mask for every layer: sliding when the forward builds a sliding-window mask from config.sliding_window.
    if window and "create_sliding_window_causal_mask" not in (source or ""):
        window = 0  # the config carries a window this model's forward never applies
    return MaskSpec((("sliding_attention" if window else "full_attention", window),), False)


def _forward_source(model: torch.nn.Module) -> str | None:
    """The source of the base model's forward (transformers 5.x names the per-layer-type mask dict
    ``causal_mask_mapping`` and the windowed mask builder ``create_sliding_window_causal_mask`` in it)."""
    try:
        return inspect.getsource(type(model.base_model).forward)
    except (OSError, TypeError):
        return None
