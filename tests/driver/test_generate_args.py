"""``generate``'s arguments mean what they mean in transformers 5.23's ``target.generate``, and ``dustin.compile``
leaves a pair it refuses untouched.

transformers merges, per field: an explicit keyword (``None`` included: ``eos_token_id=None`` disables stopping) >
the ``generation_config`` passed (its ``None`` fields count as unset) > the model's own ``generation_config`` >
the library defaults (``do_sample=False``, ``temperature=1.0``, ``top_k=50``, ``top_p=1.0``). Every greedy row below
runs ``target.generate`` and dustin with the same arguments on the same left-padded ragged batch and compares the
sequences token for token; the sampling rows compare the warpers transformers builds with the ``Sampling`` dustin
resolves (plus end-to-end checks that dustin really samples, and with those warpers).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import itertools
import json

import pytest
import torch
from transformers import GenerationConfig, LlamaModel, LogitsProcessorList
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import dustin
from dustin.profile import default_profile
from dustin.sampling import Sampling
from helpers import left_padded, random_prompts, tiny_model, word_tokenizer

IDS, MASK = left_padded(random_prompts([5, 12, 7], seed=21))
WIDTH = IDS.shape[1]
N = 10  # max_new_tokens of most rows
E = "early eos"  # stands for a token the target emits early in row 1 (found at run time)
QWEN_LIKE = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8)  # as real Qwen generation_config.json files


def gc(**fields):
    """A GenerationConfig built once ``E`` is known."""
    return ("GenerationConfig", fields)


def _bind(value, eos: int):
    if isinstance(value, str) and value == E:
        return eos
    if isinstance(value, tuple) and value and value[0] == "GenerationConfig":
        return GenerationConfig(**_bind(value[1], eos))
    if isinstance(value, dict):
        return {k: _bind(v, eos) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_bind(v, eos) for v in value)
    if callable(value) and not isinstance(value, type):
        return value(eos)
    return value


@contextlib.contextmanager
def model_generation_config(model, **fields):
    """Set fields of ``model.generation_config`` for one row (as a checkpoint's generation_config.json would)."""
    saved = copy.deepcopy(model.generation_config)
    for key, value in fields.items():
        setattr(model.generation_config, key, value)
    try:
        yield
    finally:
        model.generation_config = saved


@pytest.fixture(scope="module")
def target():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def model(target):
    return dustin.compile(target, tiny_model("llama", seed=1, num_hidden_layers=1), gamma=3, backend="eager")


@pytest.fixture(scope="module")
def early(target):
    """A token row 1 emits as its 3rd new token (the model's eos is 2; this one is not)."""
    with torch.no_grad():
        free = target.generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=False, eos_token_id=None)
    token = int(free[1, WIDTH + 2])
    assert token not in (0, 2) and token not in free[1, WIDTH:WIDTH + 2].tolist()
    return token


# ---- the greedy table: (model generation_config fields, generate kwargs) -> same sequences as target.generate --
EARLY = dict(eos_token_id=E)  # a checkpoint whose generation_config eos is a token the target emits early
ROWS = {
    # eos_token_id
    "eos not passed: the model's eos stops": (EARLY, dict(max_new_tokens=N)),
    "eos=None passed: no stopping (the bug)": (EARLY, dict(max_new_tokens=N, eos_token_id=None)),
    "eos int": ({}, dict(max_new_tokens=N, eos_token_id=E)),
    "eos list": ({}, dict(max_new_tokens=N, eos_token_id=[2, E])),
    "eos tensor": ({}, dict(max_new_tokens=N, eos_token_id=lambda e: torch.tensor([e]))),
    "eos 0-d tensor": ({}, dict(max_new_tokens=N, eos_token_id=lambda e: torch.tensor(e))),
    "eos [] passed: no stopping": (EARLY, dict(max_new_tokens=N, eos_token_id=[])),
    "eos from a passed generation_config": ({}, dict(generation_config=gc(max_new_tokens=N, eos_token_id=E))),
    "generation_config eos=None is unset: the model's eos": (EARLY, dict(generation_config=gc(max_new_tokens=N,
                                                                                             eos_token_id=None))),
    "eos=None passed beats a generation_config eos": ({}, dict(generation_config=gc(max_new_tokens=N, eos_token_id=E),
                                                             eos_token_id=None)),
    # pad_token_id (what finished rows are padded with)
    "pad not passed: the model's pad": (EARLY, dict(max_new_tokens=N)),
    "pad int": (EARLY, dict(max_new_tokens=N, pad_token_id=5)),
    "pad=None passed: eos[0]": (EARLY, dict(max_new_tokens=N, pad_token_id=None)),
    "pad=None passed, eos list: eos[0]": ({}, dict(max_new_tokens=N, eos_token_id=[E, 2], pad_token_id=None)),
    "model without pad: eos[0]": (dict(eos_token_id=E, pad_token_id=None), dict(max_new_tokens=N)),
    "pad from a passed generation_config": (EARLY, dict(generation_config=gc(max_new_tokens=N, pad_token_id=7))),
    # max_new_tokens / max_length
    "generation_config max_new_tokens": ({}, dict(generation_config=gc(max_new_tokens=7), eos_token_id=None)),
    "generation_config max_length counts the prompt": ({}, dict(generation_config=gc(max_length=WIDTH + 6),
                                                                eos_token_id=None)),
    "generation_config max_new_tokens beats its max_length": ({}, dict(
        generation_config=gc(max_length=WIDTH + 3, max_new_tokens=7), eos_token_id=None)),
    "max_new_tokens passed beats generation_config max_length": ({}, dict(
        generation_config=gc(max_length=WIDTH + 3), max_new_tokens=7, eos_token_id=None)),
    "max_new_tokens=None passed: generation_config max_length": ({}, dict(
        generation_config=gc(max_length=WIDTH + 5, max_new_tokens=9), max_new_tokens=None, eos_token_id=None)),
    "model max_new_tokens": (dict(max_new_tokens=6), dict(eos_token_id=None)),
    "model max_length": (dict(max_length=WIDTH + 5), dict(eos_token_id=None)),
    "model max_new_tokens beats generation_config max_length": (dict(max_new_tokens=6), dict(
        generation_config=gc(max_length=WIDTH + 3), eos_token_id=None)),
    "max_new_tokens=None passed: model max_length": (dict(max_new_tokens=6, max_length=WIDTH + 4), dict(
        max_new_tokens=None, eos_token_id=None)),
    # do_sample against a checkpoint that samples by default
    "model samples, do_sample=False passed": (QWEN_LIKE, dict(max_new_tokens=N, do_sample=False)),
    "model samples, do_sample=None passed": (QWEN_LIKE, dict(max_new_tokens=N, do_sample=None)),
    "model samples, generation_config do_sample=False": (QWEN_LIKE, dict(generation_config=gc(max_new_tokens=N,
                                                                                             do_sample=False))),
    "plain model, generation_config do_sample=False": ({}, dict(generation_config=gc(max_new_tokens=N,
                                                                                     do_sample=False))),
    # Sampling rows whose outcome is deterministic (top_k=1): dustin must sample with the model's warpers.
    "model top_k=1 + temperature, do_sample=True passed": (dict(top_k=1, temperature=5.0), dict(
        max_new_tokens=N, do_sample=True, eos_token_id=None)),
    "model samples with top_k=1 by default": (dict(do_sample=True, top_k=1, temperature=5.0), dict(
        max_new_tokens=N, eos_token_id=None)),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_greedy_rows_match_transformers(target, model, early, row):
    model_fields, kwargs = _bind(ROWS[row], early)
    with model_generation_config(target, **model_fields), torch.no_grad():
        expected = target.generate(IDS, attention_mask=MASK, **kwargs)
        out = model.generate(IDS, MASK, **kwargs)
    assert out.sequences.shape == expected.shape, (out.sequences.tolist(), expected.tolist())
    assert torch.equal(out.sequences, expected), (out.sequences.tolist(), expected.tolist())


def test_explicit_eos_none_does_not_stop(target, model, early):
    """The reported bug: a checkpoint whose eos the target emits early; ``eos_token_id=None`` passed explicitly."""
    with model_generation_config(target, eos_token_id=early), torch.no_grad():
        expected = target.generate(IDS, attention_mask=MASK, max_new_tokens=N, eos_token_id=None)
        out = model.generate(IDS, MASK, max_new_tokens=N, eos_token_id=None)
        stopped = model.generate(IDS, MASK, max_new_tokens=N)
    assert expected.shape[1] == WIDTH + N and early in expected[1, WIDTH:].tolist()  # transformers did not stop
    assert out.stats.new_tokens == [N] * 3 and torch.equal(out.sequences, expected)
    assert stopped.stats.new_tokens[1] == 3  # not passed: the model's eos stops row 1 at its 3rd token


# ---- the sampling table: the Sampling dustin resolves == the warpers transformers builds -------------------------
SAMPLING_ROWS = {
    "plain model, do_sample=True: library top_k=50": ({}, dict(do_sample=True)),
    "plain model, do_sample=True, top_p": ({}, dict(do_sample=True, top_p=0.9, temperature=0.5)),
    "plain model, do_sample=True, top_k=0 disables top-k": ({}, dict(do_sample=True, top_k=0)),
    "plain model, do_sample=True, top_k=None disables top-k": ({}, dict(do_sample=True, top_k=None)),
    "plain model, nothing passed: greedy": ({}, dict()),
    "model samples, nothing passed": (QWEN_LIKE, dict()),
    "model samples, do_sample=False": (QWEN_LIKE, dict(do_sample=False)),
    "model samples, do_sample=None": (QWEN_LIKE, dict(do_sample=None)),
    "model samples, temperature passed": (QWEN_LIKE, dict(temperature=1.3)),
    "model samples, temperature=None: no temperature warper": (QWEN_LIKE, dict(temperature=None)),
    "model samples, top_k=None and top_p=None": (QWEN_LIKE, dict(top_k=None, top_p=None)),
    "model samples, empty generation_config: the model's": (QWEN_LIKE, dict(generation_config=gc())),
    "model samples, generation_config temperature": (QWEN_LIKE, dict(generation_config=gc(temperature=1.3))),
    "model samples, generation_config do_sample=False": (QWEN_LIKE, dict(generation_config=gc(do_sample=False))),
    "generation_config samples": ({}, dict(generation_config=gc(do_sample=True, temperature=0.5))),
    "generation_config top_k, top_k=None passed": ({}, dict(generation_config=gc(do_sample=True, top_k=5),
                                                           top_k=None)),
    "model top_k only, do_sample=True passed": (dict(top_k=7), dict(do_sample=True)),
}


class _Resolved(Exception):
    pass


def _dustin_sampling(model, monkeypatch, kwargs) -> Sampling:
    """The Sampling ``model.generate(IDS, MASK, **kwargs)`` resolves (the call stops right after resolving)."""
    module = importlib.import_module("dustin.model")
    real = module.resolve
    seen = {}

    def spy(*args):
        seen["args"] = real(*args)
        raise _Resolved

    monkeypatch.setattr(module, "resolve", spy)
    with pytest.raises(_Resolved):
        model.generate(IDS, MASK, **kwargs)
    monkeypatch.setattr(module, "resolve", real)
    return seen["args"].sampling


def _transformers_sampling(target, kwargs) -> Sampling:
    """What ``target.generate(IDS, attention_mask=MASK, **kwargs)`` samples with: its merged generation config and
    the warpers its logits processor holds (nothing else may be in it: dustin implements these three)."""
    kwargs = dict(kwargs)
    config, _ = target._prepare_generation_config(kwargs.pop("generation_config", None), **kwargs)
    if config.get_generation_mode() != "sample":
        return Sampling()
    processors = target._get_logits_processor(config, input_ids_seq_length=WIDTH, encoder_input_ids=IDS,
                                              logits_processor=LogitsProcessorList(), device="cpu",
                                              model_kwargs={"attention_mask": MASK})
    found = {type(p): p for p in processors}
    assert set(found) <= {TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper}, found
    return Sampling(True,
                    found[TemperatureLogitsWarper].temperature if TemperatureLogitsWarper in found else 1.0,
                    found[TopKLogitsWarper].top_k if TopKLogitsWarper in found else 0,
                    found[TopPLogitsWarper].top_p if TopPLogitsWarper in found else 1.0)


@pytest.mark.parametrize("row", list(SAMPLING_ROWS))
def test_sampling_rows_match_transformers_warpers(target, model, early, monkeypatch, row):
    model_fields, kwargs = _bind(SAMPLING_ROWS[row], early)
    if "generation_config" in kwargs:
        kwargs["generation_config"].max_new_tokens = N
    else:
        kwargs["max_new_tokens"] = N
    with model_generation_config(target, **model_fields):
        expected = _transformers_sampling(target, kwargs)
        got = _dustin_sampling(model, monkeypatch, kwargs)
    assert got == expected


def test_model_sampling_defaults_end_to_end(target, model):
    """A checkpoint that samples by default: dustin samples with its warpers when nothing is passed (the same
    draws as passing them explicitly, with the same generator), and greedy decoding is something else."""
    with model_generation_config(target, **QWEN_LIKE):
        by_default = model.generate(IDS, MASK, max_new_tokens=N, eos_token_id=None,
                                    generator=torch.Generator().manual_seed(3)).sequences
        explicit = model.generate(IDS, MASK, max_new_tokens=N, eos_token_id=None,
                                  generator=torch.Generator().manual_seed(3), **QWEN_LIKE).sequences
        greedy = model.generate(IDS, MASK, max_new_tokens=N, eos_token_id=None, do_sample=False).sequences
    assert torch.equal(by_default, explicit)
    assert not torch.equal(by_default, greedy)


# ---- where dustin deliberately differs, and invalid values ----------------------------------------------------
def test_no_length_anywhere_is_an_error(target, model):
    """transformers falls back to its library default (20 new tokens, with a warning); dustin asks for a length.
    An explicit ``max_new_tokens=None`` clears a generation_config's, as in transformers."""
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an integer >= 1, got None"):
        model.generate(IDS, MASK)
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be an integer >= 1, got None"):
        model.generate(IDS, MASK, generation_config=GenerationConfig(max_new_tokens=5), max_new_tokens=None)
    with model_generation_config(target, max_new_tokens=5), pytest.raises(ValueError, match=r"got None"):
        model.generate(IDS, MASK, max_new_tokens=None)


@pytest.mark.parametrize("model_fields, kwargs, match", [
    (QWEN_LIKE, dict(temperature=0.0), r"`temperature` must be > 0"),
    (QWEN_LIKE, dict(top_p=1.5), r"`top_p` must be in \(0, 1\]"),
    (QWEN_LIKE, dict(top_k=-1), r"`top_k` must be an integer >= 0"),
    ({}, dict(generation_config=GenerationConfig(do_sample=True, temperature=0.0)), r"`temperature` must be > 0"),
    ({}, dict(eos_token_id=[2, 500]), r"`eos_token_id` \[500\] outside the vocabulary"),
    ({}, dict(generation_config={"max_new_tokens": 4}), r"`generation_config` must be a transformers.GenerationConfig"),
])
def test_invalid_values_keep_their_errors(target, model, model_fields, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with model_generation_config(target, **model_fields), pytest.raises((ValueError, TypeError), match=match):
        model.generate(IDS, MASK, **kwargs)


def test_unimplemented_arguments_are_type_errors(model):
    with pytest.raises(TypeError, match=r"repetition_penalty"):
        model.generate(IDS, MASK, max_new_tokens=4, repetition_penalty=1.1)


def test_unimplemented_model_settings_warn(target, model):
    """A checkpoint's generation_config with a logits processor dustin does not implement (Qwen2.5-Instruct sets
    repetition_penalty=1.05): transformers applies it, dustin cannot, and says so."""
    with model_generation_config(target, repetition_penalty=1.05):
        with pytest.warns(UserWarning, match=r"ignoring repetition_penalty=1.05 \(the target's generation_config\)"):
            model.generate(IDS, MASK, max_new_tokens=2)


def test_unimplemented_settings_passed_by_the_caller_are_refused(model):
    """Passed explicitly, a setting dustin cannot honour is an error, not a warning: nothing is generated."""
    from transformers import GenerationConfig

    with pytest.raises(ValueError, match=r"`generation_config` sets repetition_penalty, num_beams, which dustin"):
        model.generate(IDS, MASK, generation_config=GenerationConfig(max_new_tokens=2, repetition_penalty=1.2,
                                                                     num_beams=2))


# ---- dustin.compile refuses before it changes anything -----------------------------------------------------------
def _snapshot(model):
    if not isinstance(model, torch.nn.Module):
        return model
    tensors = {name: (t.dtype, t.device, None if t.device.type == "meta" else t.detach().clone())
               for name, t in itertools.chain(model.named_parameters(), model.named_buffers())}
    gen = getattr(model, "generation_config", None)
    return dict(tensors=tensors, training={name: m.training for name, m in model.named_modules()},
                config=model.config.to_dict(), generation_config=gen.to_dict() if gen is not None else None)


def _assert_untouched(before, model):
    after = _snapshot(model)
    if not isinstance(model, torch.nn.Module):
        assert after is before
        return
    assert after["training"] == before["training"]
    assert after["config"] == before["config"] and after["generation_config"] == before["generation_config"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (dtype, device, value) in before["tensors"].items():
        got = after["tensors"][name]
        assert (got[0], got[1]) == (dtype, device), name
        assert value is None or torch.equal(got[2], value), name


def _bad_profile(target, draft):
    return dataclasses.replace(default_profile(target, draft, warn=False), target_hash="0" * 16)


def _old_profile_file(target, draft, tmp_path):
    path = tmp_path / "profile.json"
    default_profile(target, draft, warn=False).save(str(path))
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "version": 0}))
    return str(path)


REFUSALS = {  # name: (build (target, draft, compile kwargs), error, message)
    "target not a causal LM": (lambda t, d, p: (LlamaModel(t.config), d, {}), dustin.ModelPairError,
                               r"`target` must be a Hugging Face causal LM"),
    "draft not a model": (lambda t, d, p: (t, "not a model", {}), dustin.ModelPairError,
                          r"`draft` must be a Hugging Face causal LM"),
    "eager attention": (lambda t, d, p: (t, tiny_model("llama", seed=1, attn_implementation="eager"), {}),
                        dustin.ModelPairError, r"attn_implementation='eager'"),
    "vocabulary": (lambda t, d, p: (t, tiny_model("llama", seed=1, vocab_size=256), {}), dustin.ModelPairError,
                   r"draft vocabulary \(256\) is larger"),
    "special tokens": (lambda t, d, p: (t, tiny_model("llama", seed=1, eos_token_id=7), {}), dustin.ModelPairError,
                       r"disagree on special tokens"),
    "tokenizers": (lambda t, d, p: (t, d, dict(tokenizer=word_tokenizer("abc"), draft_tokenizer=word_tokenizer("xyz"))),
                   dustin.ModelPairError, r"different vocabularies"),
    "device": (lambda t, d, p: (t, d.to("meta"), {}), dustin.ModelPairError, r"target is on cpu but draft on meta"),
    "dtype (no cast asked)": (lambda t, d, p: (t, d.to(torch.bfloat16), {}), dustin.ModelPairError,
                              r"target dtype torch.float32 differs"),
    "unknown config field": (lambda t, d, p: (t, d, dict(gama=3)), TypeError, r"unknown DustinConfig field"),
    "bad config value": (lambda t, d, p: (t, d, dict(gamma=0)), ValueError, r"DustinConfig.gamma"),
    "profile of another pair": (lambda t, d, p: (t, d, dict(profile=_bad_profile(t, d))), dustin.ProfileError,
                                r"profile was calibrated for target"),
    "profile file of another version": (lambda t, d, p: (t, d, dict(profile=_old_profile_file(t, d, p))),
                                        dustin.ProfileError, r"has version 0"),
    "dense_layers out of range": (lambda t, d, p: (t, d, dict(mode="sparse", dense_layers=(5,))), ValueError,
                                  r"dense_layers \[5\] out of range"),
    "profile dense_layers out of range": (
        lambda t, d, p: (t, d, dict(mode="sparse", profile=dataclasses.replace(default_profile(t, d, warn=False),
                                                                              dense_layers=(7,)))),
        ValueError, r"dense_layers \[7\] out of range"),
}


# Every refusal, also with a dtype cast requested (except the dtype mismatch itself, which the cast reconciles).
CASES = [pytest.param(case, cast, id=f"{case}, {'cast to ' + str(cast) if cast else 'no cast'}")
         for case in REFUSALS for cast in (None, torch.bfloat16) if not (cast and case.startswith("dtype"))]


@pytest.mark.parametrize("case, cast", CASES)
def test_refused_pair_is_untouched(case, cast, tmp_path):
    build, error, match = REFUSALS[case]
    target, draft, kwargs = build(tiny_model("llama", seed=0), tiny_model("llama", seed=1), tmp_path)
    for m in (target, draft):
        if isinstance(m, torch.nn.Module):
            m.train()  # so that an .eval() before the refusal shows
    if cast is not None:
        kwargs["dtype"] = cast
    before = _snapshot(target), _snapshot(draft)
    with pytest.raises(error, match=match):
        dustin.compile(target, draft, **kwargs)
    _assert_untouched(before[0], target)
    _assert_untouched(before[1], draft)


def test_dtype_cast_reconciles_the_pair():
    """Validated as the pair will be after the cast: different dtypes are fine when ``dtype`` casts both."""
    target, draft = tiny_model("llama", seed=0).train(), tiny_model("llama", seed=1, dtype=torch.bfloat16)
    model = dustin.compile(target, draft, dtype=torch.float16, backend="eager")
    assert {p.dtype for p in [*target.parameters(), *draft.parameters()]} == {torch.float16}
    assert not target.training and model.target is target
