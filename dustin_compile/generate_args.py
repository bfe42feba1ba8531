"""Resolve and validate ``generate``'s sampling arguments (explicit values, a ``GenerationConfig``, model defaults)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Sampling

_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": None,
             "eos_token_id": None, "pad_token_id": None}


@dataclass
class GenerateArgs:
    max_new_tokens: int
    sampling: Sampling
    eos_ids: list[int]
    pad_token_id: int
    generator: torch.Generator | None


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def resolve(model, given: dict) -> GenerateArgs:
    values = {k: given[k] for k in _DEFAULTS}
    gc = given.get("generation_config")
    if gc is not None:
        from transformers import GenerationConfig

        if not isinstance(gc, GenerationConfig):
            raise TypeError(f"`generation_config` must be a transformers.GenerationConfig, got {type(gc).__name__}")
        for key, default in _DEFAULTS.items():
            if values[key] == default and getattr(gc, key, None) is not None:
                values[key] = getattr(gc, key)
        if values["max_new_tokens"] is None and getattr(gc, "max_length", None) is not None:
            # transformers' max_length counts the (padded) prompt too.
            width = given["input_ids"].shape[-1] if isinstance(given.get("input_ids"), torch.Tensor) else 0
            if gc.max_length <= width:
                raise ValueError(
                    f"`generation_config.max_length` ({gc.max_length}) leaves no room after the prompt ({width} "
                    "tokens): raise it, or set max_new_tokens"
                )
            values["max_new_tokens"] = gc.max_length - width
    max_new = values["max_new_tokens"]
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
        raise ValueError(f"`max_new_tokens` must be an integer >= 1, got {max_new!r}")
    do_sample = bool(values["do_sample"])
    temperature, top_k, top_p = values["temperature"], values["top_k"], values["top_p"]
    if do_sample:
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 when sampling, got {temperature!r} (use do_sample=False for greedy)")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0 disables it), got {top_k!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1] (1 disables it), got {top_p!r}")
    gen_cfg = getattr(model.target, "generation_config", None)
    eos = values["eos_token_id"]
    if eos is None:
        eos = getattr(gen_cfg, "eos_token_id", None)
    eos_ids = _as_list(eos)
    bad = [e for e in eos_ids if not 0 <= e < model.vocab_size]
    if bad:
        raise ValueError(f"`eos_token_id` {bad} outside the vocabulary [0, {model.vocab_size})")
    pad = values["pad_token_id"]
    if pad is None:
        pad = getattr(gen_cfg, "pad_token_id", None)
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    generator = given.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != model.device.type:
        raise ValueError(
            f"`generator` is on {generator.device} but the models on {model.device}: create it with "
            f"torch.Generator(device='{model.device}')"
        )
    sampling = Sampling(do_sample, float(temperature), int(top_k), float(top_p))
    return GenerateArgs(max_new, sampling, eos_ids, int(_as_list(pad)[0]), generator)
