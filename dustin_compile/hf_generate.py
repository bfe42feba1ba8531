"""``dustin.generate``: dustin as a transformers decoding strategy.

    out = target.generate(input_ids, assistant_model=draft, custom_generate=dustin.generate, max_new_tokens=64)
    out = target.generate(..., custom_generate=dustin.generate, mode="exact", budget=1024)      # dustin's options
    exact = dustin.generate.with_options(mode="exact", budget=1024)                            # bound defaults

transformers 5.23's ``generate`` prepares the generation config, the logits processors and the stopping criteria,
then calls a callable ``custom_generate`` as ``custom_generate(model, input_ids, logits_processor=...,
stopping_criteria=..., generation_config=..., **mode_kwargs, **model_kwargs)``, where ``mode_kwargs`` are the
keywords of the ``generate`` call that the callable declares and ``GenerationMixin._sample`` does not. So this
callable declares every ``DustinConfig`` field (``max_length``, transformers' own, is ``dustin_max_length`` here),
``profile``, ``draft``, ``generator`` and ``stop_strings``.

What transformers does not hand over, and where it comes from instead (``_extract_generation_mode_kwargs``
*replaces* the mode kwargs by the callable's own keys, after popping ``tokenizer`` out of the call's kwargs):

- ``assistant_model`` and ``streamer``, named parameters of ``generate``: read from the calling
  ``GenerationMixin.generate`` frame (its code object and its ``self`` are checked); ``draft=`` also works.
  ``generate`` already streamed the prompt, so it is not streamed again.
- ``tokenizer`` (stop strings): lost. ``stop_strings`` is declared here so that transformers does not fail for
  want of it; the tokenizer then comes from ``with_options(tokenizer=...)``, or from the calling pipeline.

Logits processors and stopping criteria run as transformers' own objects, applied exactly: every one accepted is a
function of a row's prefix (and its position), so each verification row, each draft step and each exact-mode check
row gets the processor output of its own prefix (``_PrefixRules``; rows of one length are batched). With sampling,
acceptance compares the processed distributions of both models. Anything else (classifier-free guidance,
watermarking, ``max_time``, custom processors or criteria) is refused by name.

The compiled ``DustinModel`` is kept on the target (one per draft and option set; siblings share the KV caches):
a second call compiles nothing and reuses the caches (and the prefill of a repeated prompt).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from dataclasses import dataclass

import torch

from .config import DustinConfig, field_names
from .generate_args import GenerateArgs
from .model import DustinModel, compile, decode
from .sampling import Sampling
from .stats import GenerateStats

# DustinConfig.max_length is a KV-cache capacity; as a keyword of ``generate`` it would swallow transformers'
# max_length (the generated length), so it travels under another name.
_RENAMED = {"max_length": "dustin_max_length"}
CONFIG_OPTIONS = tuple(_RENAMED.get(name, name) for name in field_names())
OPTIONS = CONFIG_OPTIONS + ("profile", "draft", "generator", "stop_strings")
_BOUND_ONLY = ("tokenizer",)  # with_options only: transformers drops a `tokenizer=` before calling us

# generation_config settings that select another decoding strategy; none of them reaches a logits processor.
_STRATEGIES = {
    "num_beams": lambda v: v in (None, 1),
    "num_beam_groups": lambda v: v in (None, 1),
    "diversity_penalty": lambda v: not v,
    "penalty_alpha": lambda v: not v,
    "dola_layers": lambda v: v is None,
    "constraints": lambda v: not v,
    "force_words_ids": lambda v: not v,
}
# What produced a refused processor or criterion, for the error message.
_REFUSED_WHY = {
    "UnbatchedClassifierFreeGuidanceLogitsProcessor": "guidance_scale (it runs the model on an unconditional prompt "
                                                      "with a cache of its own, one step at a time)",
    "ClassifierFreeGuidanceLogitsProcessor": "guidance_scale",
    "WatermarkLogitsProcessor": "watermarking_config",
    "SynthIDTextWatermarkLogitsProcessor": "watermarking_config (it keeps state across steps)",
    "MaxTimeCriteria": "max_time (where it stops depends on the speed, not on the text)",
    "ConfidenceCriteria": "assistant_confidence_threshold",
}


@functools.cache
def _processor_kinds() -> tuple[frozenset, frozenset]:
    """(scores-only processors, prefix processors): the transformers classes dustin applies, matched by exact type
    (a subclass may keep state). Scores-only ones read no input_ids; prefix ones are pure functions of each row's
    prefix (its length included) and its scores, with at most per-row constants indexed by batch position."""
    from transformers.generation import logits_process as lp

    scores_only = frozenset({
        lp.TemperatureLogitsWarper, lp.TopKLogitsWarper, lp.TopPLogitsWarper, lp.TopHLogitsWarper,
        lp.MinPLogitsWarper, lp.TypicalLogitsWarper, lp.EpsilonLogitsWarper, lp.EtaLogitsWarper,
        lp.SuppressTokensLogitsProcessor, lp.InfNanRemoveLogitsProcessor, lp.LogitNormalization,
    })
    prefix = frozenset({
        lp.RepetitionPenaltyLogitsProcessor, lp.EncoderRepetitionPenaltyLogitsProcessor,
        lp.MinLengthLogitsProcessor, lp.MinNewTokensLengthLogitsProcessor, lp.NoRepeatNGramLogitsProcessor,
        lp.EncoderNoRepeatNGramLogitsProcessor, lp.NoBadWordsLogitsProcessor, lp.SequenceBiasLogitsProcessor,
        lp.SuppressTokensAtBeginLogitsProcessor, lp.ForcedBOSTokenLogitsProcessor, lp.ForcedEOSTokenLogitsProcessor,
        lp.ExponentialDecayLengthPenalty, lp.PrefixConstrainedLogitsProcessor,
    })
    return scores_only, prefix


@functools.cache
def _generate_code():
    from transformers.generation.utils import GenerationMixin

    return inspect.unwrap(GenerationMixin.generate).__code__


def _calling_generate(model) -> dict | None:
    """The locals of the ``GenerationMixin.generate`` call that called us for ``model``; None when there is none."""
    code, frame = _generate_code(), sys._getframe(2)  # 0: here, 1: DustinGenerate.__call__
    try:
        for _ in range(8):  # a wrapper or two between generate and us at most
            if frame is None:
                return None
            if frame.f_code is code:
                if frame.f_locals.get("self") is not model:
                    raise RuntimeError(
                        "dustin.generate was called by GenerationMixin.generate of another model than the one it "
                        "decodes: call target.generate(..., custom_generate=dustin.generate), or pass draft= and "
                        "call it with the target"
                    )
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


def _pipeline_tokenizer(model):
    """The tokenizer of a ``transformers.Pipeline`` of ``model`` up the stack (it passed ``tokenizer=`` with its
    stop strings; transformers dropped it). None if there is none."""
    from transformers import Pipeline

    frame = sys._getframe(1)
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Pipeline) and owner.model is model:
                return owner.tokenizer
            frame = frame.f_back
        return None
    finally:
        del frame


class _PairModels:
    """The ``DustinModel``s compiled for one target, stored on it: the models live as long as the target, without a
    global registry keeping it alive. A deep copy or a pickle of the target starts with none (a copy is another
    model: ``tiny_pair`` builds its draft with ``copy.deepcopy(target)``)."""

    def __init__(self) -> None:
        self.entries: list[tuple[object, object, DustinConfig, DustinModel]] = []  # (draft, profile key, config, m)

    def __deepcopy__(self, memo) -> _PairModels:
        return _PairModels()

    def __reduce__(self):
        return (_PairModels, ())


_ATTRIBUTE = "_dustin_generate_models"


def _profile_key(profile):
    return os.fspath(profile) if isinstance(profile, (str, os.PathLike)) else profile


def _same(a, b) -> bool:
    return a is b or (isinstance(a, str) and isinstance(b, str) and a == b)


def cached_models(target) -> list[DustinModel]:
    """The ``DustinModel``s ``dustin.generate`` compiled for ``target`` so far (every draft and option set)."""
    holder = target.__dict__.get(_ATTRIBUTE)
    return [entry[3] for entry in holder.entries] if holder is not None else []


def forget_models(target) -> None:
    """Drop the ``DustinModel``s (graphs, KV caches) ``dustin.generate`` keeps for ``target``."""
    target.__dict__.pop(_ATTRIBUTE, None)


def _dustin_model(target, draft, config: DustinConfig, profile) -> DustinModel:
    """The cached model for (target, draft, config, profile); compiled on first use. A new option set for a known
    (draft, profile) is a ``with_config`` sibling of the first: it shares the KV caches."""
    holder = target.__dict__.get(_ATTRIBUTE)
    if holder is None:
        holder = _PairModels()
        object.__setattr__(target, _ATTRIBUTE, holder)  # a plain attribute, outside nn.Module's registries
    key = _profile_key(profile)
    sibling = None
    for entry_draft, entry_key, entry_config, model in holder.entries:
        if _same(entry_draft, draft) and _same(entry_key, key):
            if entry_config == config:
                return model
            sibling = sibling or model
    model = sibling.with_config(config) if sibling is not None else compile(target, draft, config, profile=profile)
    holder.entries.append((draft, key, config, model))
    return model


class _PrefixRules:
    """Transformers' logits processors and stopping criteria applied to any row of a speculative iteration, exactly
    as transformers' own loop would apply them to that row's prefix (see ``Generation.rules``).

    Prefixes are laid out as transformers' ``input_ids`` are: the prompt as passed (left padding included), then
    the row's generated tokens. A processor sees ``[B, L]`` ids and ``[B, V]`` scores; rows of other lengths are
    called in other groups, and each group holds every batch row (a processor may index per-row constants by batch
    position, like the repetition penalty's padding lengths); rows not in the group carry filler, never read."""

    def __init__(self, processors: list, criteria: list, prompt: torch.Tensor, pad: int) -> None:
        scores_only, _ = _processor_kinds()
        self.processors = [(p, type(p) in scores_only) for p in processors]
        self.criteria, self.prompt, self.pad = criteria, prompt.long(), pad

    def _text(self, gen, base: torch.Tensor, extra: torch.Tensor):
        """Each row's padded prompt + seq[b, prompt_len:base] + extra[b] (right-padded), and the length before
        ``extra``."""
        prompt = self.prompt.to(gen.seq.device)
        made = base - gen.prompt_lens  # tokens generated before ``extra``
        k = extra.shape[1]
        steps = torch.arange(int(made.max()) + k, device=prompt.device)
        from_seq = gen.seq.gather(1, (gen.prompt_lens[:, None] + steps).clamp_max(gen.seq.shape[1] - 1))
        body = torch.where(steps < made[:, None], from_seq, self.pad)
        if k:
            from_extra = extra.gather(1, (steps - made[:, None]).clamp(0, k - 1))
            body = torch.where((steps >= made[:, None]) & (steps < made[:, None] + k), from_extra, body)
        return torch.cat([prompt, body], 1), prompt.shape[1] + made

    @staticmethod
    def _by_length(lengths: torch.Tensor, valid: torch.Tensor, text: torch.Tensor, call, out: torch.Tensor):
        """``out[b, r] = call(text[:, :L], r_per_row)[b]`` for every valid (b, r) of length L; at most one r per
        row has a given length (lengths grow along r)."""
        every = torch.arange(lengths.shape[0], device=lengths.device)
        for length in lengths[valid].unique().tolist():
            member = (lengths == length) & valid
            rows, at = member.any(1), member.long().argmax(1)
            result = call(text[:, :length], at)
            out[every[rows], at[rows]] = result[rows]
        return out

    def process(self, gen, logits: torch.Tensor, base: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        if not self.processors:
            return logits
        batch, rows, vocab = logits.shape
        text, before = self._text(gen, base, extra)
        lengths = before[:, None] + (extra.shape[1] - rows + 1) + torch.arange(rows, device=before.device)
        valid = torch.ones_like(lengths, dtype=torch.bool)
        every = torch.arange(batch, device=logits.device)
        for processor, scores_only in self.processors:
            if scores_only:  # reads the scores only: one call over every row
                flat = processor(text.new_empty(batch * rows, 0), logits.reshape(batch * rows, vocab))
                logits = flat.view(batch, rows, vocab)
            else:
                current = logits
                logits = self._by_length(lengths, valid, text, lambda ids, at: processor(ids, current[every, at]),
                                         current.clone())
        return logits

    def stops(self, gen, start: torch.Tensor, tokens: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: token k (prefix seq[:start] + tokens[:k + 1]) completes a stopping criterion."""
        out = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        if not self.criteria or not bool((count > 0).any()):
            return out
        text, before = self._text(gen, start, tokens)
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        lengths = before[:, None] + 1 + steps

        def done(ids, _):
            hit = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            for criterion in self.criteria:
                hit = hit | criterion(ids, None).to(hit.device)
            return hit

        return self._by_length(lengths, steps[None, :] < count[:, None], text, done, out)


def _classify(logits_processor, stopping_criteria, generation_config) -> tuple[list, list, list[int], int | None]:
    """(processors, prefix criteria, eos ids, max_length) from what transformers prepared; refuses the rest."""
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StopStringCriteria

    scores_only, prefix = _processor_kinds()
    processors, refused = [], []
    for processor in logits_processor or []:
        if type(processor) in scores_only or type(processor) in prefix:
            processors.append(processor)
        else:
            refused.append(type(processor).__name__)
    criteria, eos, lengths = [], [], []
    for criterion in stopping_criteria or []:
        if type(criterion) is MaxLengthCriteria:
            lengths.append(criterion.max_length)
        elif type(criterion) is EosTokenCriteria:
            eos += [int(e) for e in criterion.eos_token_id.flatten().tolist()]
        elif type(criterion) is StopStringCriteria:
            criteria.append(criterion)
        else:
            refused.append(type(criterion).__name__)
    if refused:
        named = [f"{name} (from {_REFUSED_WHY[name]})" if name in _REFUSED_WHY else name for name in refused]
        raise ValueError(
            f"dustin.generate cannot apply {', '.join(named)}: it applies only the logits processors and stopping "
            "criteria that are functions of each row's own prefix (transformers' repetition, n-gram, bad-words, "
            "sequence-bias, min-length, suppress/forced-token and sampling processors; max length, eos and stop "
            "strings), which it can apply exactly to every speculative row. Unset the setting, or decode with "
            "transformers' own generate"
        )
    max_length = min(lengths) if lengths else getattr(generation_config, "max_length", None)
    return processors, criteria, list(dict.fromkeys(eos)), max_length


def _check_config(generation_config) -> None:
    wrong = [f"{key}={getattr(generation_config, key)!r}" for key, ok in _STRATEGIES.items()
             if not ok(getattr(generation_config, key, None))]
    if wrong:
        raise ValueError(
            f"dustin.generate is speculative greedy decoding or sampling; {', '.join(wrong)} selects another "
            "decoding strategy (beam search, contrastive search, DoLa, constrained beams): unset it"
        )
    if generation_config.return_dict_in_generate:
        asked = [key for key in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
                 if getattr(generation_config, key, False)]
        if asked:
            raise ValueError(
                f"dustin.generate does not return {', '.join(asked)}: the target scores a row's tokens in batched "
                "verification passes (not numerically transformers' one-token steps; in the sparse modes not even "
                "dense attention), and never scores the padding after a row's end, so they could not be exact. "
                "return_dict_in_generate=True without them returns `sequences` and dustin's `stats`"
            )


def _attention_mask(input_ids: torch.Tensor, model_kwargs: dict) -> torch.Tensor | None:
    """The attention mask transformers prepared (None when it had no padding); refuses other model inputs."""
    mask = model_kwargs.pop("attention_mask", None)
    positions = model_kwargs.pop("position_ids", None)
    if positions is not None:
        if mask is not None:
            expected = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        else:
            expected = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        if positions.shape[-1] != input_ids.shape[1] or not bool((positions == expected).all()):
            raise ValueError("dustin.generate computes positions from the attention mask; custom `position_ids` "
                             "are not supported")
    cache = model_kwargs.pop("past_key_values", None)
    if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
        raise ValueError("dustin.generate keeps its own KV caches (reused across calls); a filled "
                         "`past_key_values` cannot be continued: pass the whole text as input_ids")
    for key in ("use_cache", "logits_to_keep", "cache_position", "output_attentions", "output_hidden_states"):
        model_kwargs.pop(key, None)  # how transformers' own loop would run the model: nothing dustin needs
    other = sorted(key for key, value in model_kwargs.items() if value is not None)
    if other:
        raise ValueError(f"dustin.generate decodes token ids; model inputs {other} are not supported")
    return mask


class DustinGenerate:
    """The ``custom_generate`` callable (``dustin.generate``); ``with_options`` binds dustin's options."""

    def __init__(self, **options) -> None:
        unknown = sorted(set(options) - set(OPTIONS) - set(_BOUND_ONLY))
        if unknown:
            hint = " (DustinConfig.max_length is `dustin_max_length` here)" if "max_length" in unknown else ""
            raise TypeError(f"unknown dustin.generate option(s) {unknown}{hint}; valid: {', '.join(OPTIONS)}, "
                            f"tokenizer")
        _config(options)  # validate now, not at the first generate
        self.options = options
        # transformers forwards a generate keyword to a custom_generate callable only if its signature names it
        # (an instance attribute: inspect.signature reads it; the class keeps its own).
        self.__signature__ = self._signature()

    def with_options(self, **options) -> DustinGenerate:
        """A ``dustin.generate`` with these defaults (any ``OPTIONS``, plus ``tokenizer`` for stop strings); the
        keywords of a ``generate`` call still override them."""
        return DustinGenerate(**{**self.options, **options})

    def _signature(self) -> inspect.Signature:
        kind, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        defaults = DustinConfig()
        params = [inspect.Parameter(name, kind) for name in ("model", "input_ids")]
        params += [inspect.Parameter(name, kind, default=None)
                   for name in ("logits_processor", "stopping_criteria", "generation_config")]
        for name in OPTIONS:
            field = next((f for f, renamed in _RENAMED.items() if renamed == name), name)
            default = self.options.get(name, getattr(defaults, field, None))
            params.append(inspect.Parameter(name, keyword, default=default))
        params.append(inspect.Parameter("model_kwargs", inspect.Parameter.VAR_KEYWORD))
        return inspect.Signature(params)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k not in ("draft", "tokenizer"))
        return f"dustin.generate.with_options({shown})" if shown else "dustin.generate"

    cached = staticmethod(cached_models)
    forget = staticmethod(forget_models)

    def __call__(self, model, input_ids: torch.Tensor, logits_processor=None, stopping_criteria=None,
                 generation_config=None, **kwargs):
        options = {**self.options, **{key: kwargs.pop(key) for key in OPTIONS if key in kwargs}}
        caller = _calling_generate(model)
        if caller is None and generation_config is None:
            raise TypeError("dustin.generate is a decoding strategy for transformers: call "
                            "target.generate(input_ids, assistant_model=draft, custom_generate=dustin.generate, ...)")
        draft = _draft(options.pop("draft", None), caller)
        if caller is not None:
            streamer, stream_prompt = caller.get("streamer"), False  # generate streamed the prompt already
        else:
            streamer, stream_prompt = kwargs.pop("streamer", None), True
        _check_config(generation_config)
        mask = _attention_mask(input_ids, kwargs)
        processors, criteria, eos, max_length = _classify(logits_processor, stopping_criteria, generation_config)
        criteria += _stop_strings(options.pop("stop_strings", None), options.pop("tokenizer", None), model)
        if criteria and not any(hasattr(c, "eos_token_id") for c in stopping_criteria or []) and len(input_ids) > 1:
            raise ValueError(
                "stop strings without an eos token in a batch: transformers then keeps generating real tokens in "
                "the rows that stopped (it pads only with an eos criterion) until every row stops, which dustin "
                "does not reproduce. Set eos_token_id (or pad_token_id and eos_token_id), or decode one row at a time"
            )
        width = input_ids.shape[-1]
        max_new = max_length - width if max_length is not None else None
        if max_new is None or max_new < 1:
            raise ValueError(f"max_length ({max_length}) leaves no room after the prompt ({width} tokens): set "
                             "max_new_tokens")
        generator = options.pop("generator", None)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator, got {type(generator).__name__}")
        profile = options.pop("profile", None)
        dustin_model = _dustin_model(model, draft, _config(options), profile)
        pad = getattr(generation_config, "_pad_token_tensor", generation_config.pad_token_id)
        pad = int(pad.flatten()[0]) if isinstance(pad, torch.Tensor) else (pad if pad is not None else 0)
        # The processors carry temperature / top-k / top-p themselves: dustin's own warpers stay neutral.
        sampling = Sampling(do_sample=True) if generation_config.do_sample is True else Sampling()
        args = GenerateArgs(max_new, sampling, eos, pad, generator)
        rules = _PrefixRules(processors, criteria, input_ids, pad) if processors or criteria else None
        out = decode(dustin_model, args, input_ids, mask, streamer, False, True, rules=rules,
                     stream_prompt=stream_prompt)
        if generation_config.return_dict_in_generate:
            return output_class()(sequences=out.sequences, stats=out.stats)
        return out.sequences


def _config(options: dict) -> DustinConfig:
    renamed = {field: options[name] for field, name in zip(field_names(), CONFIG_OPTIONS) if name in options}
    return DustinConfig(**renamed)


def _draft(draft, caller: dict | None):
    assistant = caller.get("assistant_model") if caller is not None else None
    if draft is not None and assistant is not None and draft is not assistant:
        raise ValueError("both `assistant_model` and `draft` were given, and they differ: pass one")
    draft = draft if draft is not None else assistant
    if draft is not None:
        return draft
    if caller is None:
        raise RuntimeError(
            "dustin.generate found no calling GenerationMixin.generate to read `assistant_model` from (transformers "
            "does not pass it to a custom_generate callable): pass the draft explicitly, "
            "custom_generate=dustin.generate, draft=draft_model (or draft='self' for self-speculation)"
        )
    raise ValueError("dustin.generate needs a draft model: target.generate(..., assistant_model=draft, "
                     "custom_generate=dustin.generate) (or draft=draft_model; draft='self' for self-speculation)")


def _stop_strings(stop_strings, tokenizer, model) -> list:
    if not stop_strings:
        return []
    tokenizer = tokenizer if tokenizer is not None else _pipeline_tokenizer(model)
    if tokenizer is None:
        raise ValueError(
            "stop_strings need the tokenizer, and transformers drops `tokenizer=` before calling a custom_generate "
            "callable: bind it, custom_generate=dustin.generate.with_options(tokenizer=tok), or pass "
            "stopping_criteria=[StopStringCriteria(tok, stop_strings)] instead of stop_strings"
        )
    from transformers.generation.stopping_criteria import StopStringCriteria

    return [StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings)]


@functools.cache
def output_class():
    """``DustinGenerateOutput``: transformers' ``GenerateDecoderOnlyOutput`` (``sequences``; ``scores``, ``logits``,
    ``attentions``, ``hidden_states`` and ``past_key_values`` stay None) plus dustin's ``stats``. Built on first
    use: importing transformers' generation module costs seconds."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    @dataclass
    class DustinGenerateOutput(GenerateDecoderOnlyOutput):
        stats: GenerateStats | None = None

    DustinGenerateOutput.__module__ = __name__
    DustinGenerateOutput.__qualname__ = "DustinGenerateOutput"
    return DustinGenerateOutput


def __getattr__(name: str):
    if name == "DustinGenerateOutput":  # pickling finds the lazily built class here
        return output_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


generate = DustinGenerate()
