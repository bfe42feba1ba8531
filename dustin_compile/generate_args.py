"""Resolve and validate ``generate``'s arguments the way transformers 5.23's ``generate`` merges them.

Per field, the first of (``_prepare_generation_config``):

1. the argument passed to ``generate``, ``None`` included (``eos_token_id=None`` disables stopping,
   ``top_k=None`` disables top-k, ``max_new_tokens=None`` clears a ``generation_config``'s);
2. the ``generation_config`` passed, where not ``None`` (its ``None`` fields count as unset);
3. the target's own ``generation_config`` (a checkpoint's ``generation_config.json``: Qwen's sample by default),
   where not ``None``;
4. transformers' library defaults: ``do_sample=False``, ``temperature=1.0``, ``top_k=50``, ``top_p=1.0``.

``UNSET``, the default of those arguments in ``DustinModel.generate``, marks "not passed". Then, as in transformers:
``max_new_tokens`` beats ``max_length`` (which counts the padded prompt); sampling happens iff ``do_sample is True``;
a ``None`` (or neutral) temperature/top-k/top-p applies no warper; a missing pad token is the first eos token.

One deliberate difference: with no length anywhere transformers falls back to its library ``max_length=20`` (20 new
tokens, with a warning); dustin asks for ``max_new_tokens``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .sampling import Sampling


class _Unset:
    """The type of ``UNSET``: an argument not passed to ``generate`` (as opposed to one passed as ``None``)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()

# transformers' library defaults for the fields dustin reads (GenerationConfig._get_default_generation_params()).
_LIBRARY_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
_FIELDS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id")

# generation_config settings with which transformers' generate adds a logits processor or stopping rule (or another
# decoding strategy) dustin does not implement, each with the test of "inactive". ``_SAMPLING_ONLY`` act when sampling.
_UNSUPPORTED = {
    "repetition_penalty": lambda v: v == 1.0,
    "no_repeat_ngram_size": lambda v: v == 0,
    "bad_words_ids": lambda v: False,
    "min_length": lambda v: v == 0,
    "min_new_tokens": lambda v: v == 0,
    "forced_bos_token_id": lambda v: False,
    "forced_eos_token_id": lambda v: False,
    "suppress_tokens": lambda v: False,
    "begin_suppress_tokens": lambda v: False,
    "sequence_bias": lambda v: False,
    "exponential_decay_length_penalty": lambda v: False,
    "guidance_scale": lambda v: v == 1,
    "num_beams": lambda v: v == 1,
    "num_return_sequences": lambda v: v == 1,
    "penalty_alpha": lambda v: v == 0,
    "stop_strings": lambda v: not v,
    "max_time": lambda v: False,
    "watermarking_config": lambda v: False,
    "min_p": lambda v: False,
    "top_h": lambda v: False,
    "typical_p": lambda v: v >= 1.0,
    "epsilon_cutoff": lambda v: not 0.0 < v < 1.0,
    "eta_cutoff": lambda v: not 0.0 < v < 1.0,
}
_SAMPLING_ONLY = {"min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}


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


def _configured(configs, key: str):
    """The first non-None ``key`` among the generation configs (the one passed, then the target's), and where."""
    for name, config in configs:
        value = getattr(config, key, None)
        if value is not None:
            return value, name
    return None, None


def resolve(model, given: dict) -> GenerateArgs:
    """``given``: ``generate``'s arguments by name (its ``locals()``); a missing key or ``UNSET`` is "not passed"."""
    passed = given.get("generation_config", UNSET)
    if passed is UNSET:
        passed = None
    if passed is not None:
        from transformers import GenerationConfig

        if not isinstance(passed, GenerationConfig):
            raise TypeError(
                f"`generation_config` must be a transformers.GenerationConfig, got {type(passed).__name__}"
            )
    own = getattr(model, "generation_config", None)
    configs = [(name, c) for name, c in (("`generation_config`", passed), ("the target's generation_config", own))
               if c is not None]
    values = {}
    for key in _FIELDS:
        value = given.get(key, UNSET)
        if value is UNSET:
            value = _configured(configs, key)[0]
            if value is None:
                value = _LIBRARY_DEFAULTS.get(key)
        values[key] = value

    max_new = values["max_new_tokens"]
    if max_new is None:
        max_length, source = _configured(configs, "max_length")
        if max_length is not None:
            # transformers' max_length counts the (padded) prompt too.
            width = given["input_ids"].shape[-1] if isinstance(given.get("input_ids"), torch.Tensor) else 0
            if max_length <= width:
                where = "`generation_config" if source == "`generation_config`" else "`target.generation_config"
                raise ValueError(
                    f"{where}.max_length` ({max_length}) leaves no room after the prompt ({width} tokens): raise "
                    "it, or set max_new_tokens"
                )
            max_new = max_length - width
    if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
        hint = "" if max_new is not None else (
            ": pass max_new_tokens (or set it, or max_length, in a generation_config); dustin has no default length "
            "(transformers would fall back to its library default max_length=20)"
        )
        raise ValueError(f"`max_new_tokens` must be an integer >= 1, got {max_new!r}{hint}")

    do_sample = values["do_sample"] is True  # transformers samples iff do_sample is True (None, 1: greedy)
    sampling = Sampling()
    if do_sample:
        temperature = 1.0 if values["temperature"] is None else values["temperature"]
        top_k = 0 if values["top_k"] is None else values["top_k"]
        top_p = 1.0 if values["top_p"] is None else values["top_p"]
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"`temperature` must be > 0 when sampling, got {temperature!r} (use do_sample=False for greedy)")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0 disables it), got {top_k!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1] (1 disables it), got {top_p!r}")
        sampling = Sampling(True, float(temperature), int(top_k), float(top_p))
    _warn_unsupported(configs, do_sample)

    eos_ids = _as_list(values["eos_token_id"])
    bad = [e for e in eos_ids if not 0 <= e < model.vocab_size]
    if bad:
        raise ValueError(f"`eos_token_id` {bad} outside the vocabulary [0, {model.vocab_size})")
    pad = values["pad_token_id"]
    if pad is None:
        # transformers pads with the first eos token; without eos every row runs to max_new_tokens: no padding.
        pad = eos_ids[0] if eos_ids else 0
    generator = given.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != model.device.type:
        raise ValueError(
            f"`generator` is on {generator.device} but the models on {model.device}: create it with "
            f"torch.Generator(device='{model.device}')"
        )
    return GenerateArgs(max_new, sampling, eos_ids, int(_as_list(pad)[0]), generator)


def _warn_unsupported(configs, do_sample: bool) -> None:
    """Settings of the generation configs that transformers' generate would act on and dustin cannot: refused when
    the caller passed them (an explicit request dustin would not honour), a warning when they come from the
    checkpoint's own generation_config (e.g. Qwen2.5-Instruct's repetition_penalty=1.05, which would otherwise make
    every call fail)."""
    active, requested = [], []
    for key, inactive in _UNSUPPORTED.items():
        if key in _SAMPLING_ONLY and not do_sample:
            continue
        value, source = _configured(configs, key)
        if value is not None and not inactive(value):
            active.append(f"{key}={value!r} ({source})")
            if source == "`generation_config`":
                requested.append(key)
    if requested:
        raise ValueError(
            f"`generation_config` sets {', '.join(requested)}, which dustin does not implement (its output would "
            "differ from transformers' generate): unset them or set neutral values"
        )
    if active:
        warnings.warn(
            f"dustin: ignoring {', '.join(active)}: not implemented by dustin, so its output differs from "
            "transformers' generate, which applies them. Unset them (or set neutral values) to silence this",
            UserWarning, stacklevel=4,
        )
