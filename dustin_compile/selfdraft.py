"""Self-speculation: the target drafts for itself (no draft model), as SpecPV, MagicDec and TriForce do.

The self-draft is a view of the target: the same modules and weights (nothing copied), optionally running only
some decoder layers (``DustinConfig.draft_layers``, LayerSkip/SWIFT style), and by default attending only to a
StreamingLLM window of the cache (``n_sink`` first + ``draft_window`` recent positions: ``draft_kv="auto"`` means
``"window"`` here in every mode, since a full-attention, all-layer self-draft is the target itself).

Both roles use **one KV cache**: the draft reads the K/V the target wrote and writes its own guesses only at and
past the pending position, which the next verification overwrites before any attention reads them (every layer
writes its new K/V before its attention). So the driver never re-runs the draft below the pending position
(``draft_need`` stays 1) and skips the draft's prefill. Layer indices of the draft's score taps count its kept
layers (layer i of the view is ``draft_layers[i]`` of the target).
"""

from __future__ import annotations

import copy

import torch

SELF_MARK = "_dustin_self_draft"


def is_self_draft(draft: torch.nn.Module) -> bool:
    return bool(getattr(draft, SELF_MARK, False))


def self_draft(target: torch.nn.Module, layers: tuple[int, ...] = ()) -> torch.nn.Module:
    """A view of ``target`` that runs ``layers`` (all when empty) and shares every parameter and buffer."""
    base = target.base_model
    total = len(base.layers)
    keep = tuple(layers) or tuple(range(total))
    bad = [i for i in keep if not 0 <= i < total]
    if bad or list(keep) != sorted(set(keep)):
        raise ValueError(f"draft_layers must be increasing, distinct target layers in [0, {total}), got {layers!r}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    view_base = copy.copy(base)  # shallow: the new module dicts below are the view's own, the modules are shared
    view_base.__dict__["_modules"] = dict(base._modules)
    view_base.layers = torch.nn.ModuleList([base.layers[i] for i in keep])
    view_base.config = config
    view = copy.copy(target)
    view.__dict__["_modules"] = dict(target._modules)
    prefix = getattr(target, "base_model_prefix", "model")
    setattr(view, prefix, view_base)
    view.config = config
    object.__setattr__(view, SELF_MARK, True)
    return view
