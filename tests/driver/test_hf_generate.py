"""``dustin.generate`` as transformers' ``custom_generate``: the output is ``target.generate``'s.

Every comparison runs stock ``target.generate`` (greedy, or sampling with ``top_k=1``, whose outcome is
deterministic) and ``target.generate(..., assistant_model=draft, custom_generate=dustin.generate)`` with the same
arguments on the same ragged, left-padded batch, in ``dense`` mode and in ``exact`` mode with a budget small enough
that verification is sparse. The pair is ``dustin.tiny.tiny_pair`` (its draft agrees with the target often, so
drafts are accepted and rejected).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TextIteratorStreamer
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.streamers import BaseStreamer

import dustin
from dustin.config import field_names
from dustin.hf_generate import CONFIG_OPTIONS, OPTIONS
from dustin.tiny import char_tokenizer, tiny_pair
from helpers import left_padded, random_prompts

IDS, MASK = left_padded(random_prompts([5, 12, 7], vocab=256, seed=3))
WIDTH, N = IDS.shape[1], 12
MODES = {"dense": dict(mode="dense"), "exact": dict(mode="exact", budget=16, n_sink=2, window=4, exact_every=4)}
EAGER = dict(backend="eager", gamma=3)
pytestmark = pytest.mark.filterwarnings("ignore:dustin. no calibration profile")


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def stock(pair):
    """The stock free-running greedy output (no eos): where to find tokens each row emits."""
    with torch.no_grad():
        return pair[0].generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=False, eos_token_id=None,
                                pad_token_id=0)


def both(pair, mode: str, ids=IDS, mask=MASK, custom=dustin.generate, **kwargs):
    """(stock target.generate, dustin through custom_generate) with the same generate arguments."""
    target, draft = pair
    kwargs = {"max_new_tokens": N, "do_sample": False, "pad_token_id": 0, **kwargs}
    with torch.no_grad():
        expected = target.generate(ids, attention_mask=mask, **kwargs)
        out = target.generate(ids, attention_mask=mask, assistant_model=draft, custom_generate=custom,
                              **MODES[mode], **EAGER, **kwargs)
    return expected, out


def assert_same(expected, out):
    assert out.shape == expected.shape, (out.tolist(), expected.tolist())
    assert torch.equal(out, expected), (out.tolist(), expected.tolist())


def captures(target) -> int:
    """Graph captures of every DustinModel dustin.generate compiled for ``target`` (one pass report each)."""
    return sum(len(g.backend.reports) for m in dustin.generate.cached(target) for g in m._graphs.values())


def new_tokens(stock, row: int) -> list[int]:
    return stock[row, WIDTH:].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_equals_stock_and_dustin_model(pair, mode):
    expected, out = both(pair, mode)
    assert_same(expected, out)
    model = next(m for m in dustin.generate.cached(pair[0]) if m.config.mode == mode)
    with torch.no_grad():
        direct = model.generate(IDS, MASK, max_new_tokens=N, do_sample=False, pad_token_id=0)
    assert_same(expected, direct.sequences)
    if mode == "exact":
        assert model.config.budget == 16 and direct.stats.sparse_passes > 0  # verification really was sparse


@pytest.mark.parametrize("mode", MODES)
def test_eos_list_and_min_new_tokens(pair, stock, mode):
    # eos: row 0's 2nd new token and row 2's 4th: rows stop at different points, row 1 may run on.
    eos = [new_tokens(stock, 0)[1], new_tokens(stock, 2)[3]]
    expected, out = both(pair, mode, eos_token_id=eos)
    assert (expected[0, WIDTH + 2:] == 0).all()  # transformers stopped row 0 by its 2nd token, then padded
    assert_same(expected, out)
    # min_new_tokens suppresses the eos ids for the first 5 tokens (a processor of the prefix's length).
    expected, out = both(pair, mode, eos_token_id=eos, min_new_tokens=5)
    assert expected[0, WIDTH + 1] not in eos and (expected[0, WIDTH:WIDTH + 5] != 0).all()
    assert_same(expected, out)


@pytest.mark.parametrize("mode", MODES)
def test_stop_strings(pair, stock, mode):
    tok = char_tokenizer()
    text = tok.decode(new_tokens(stock, 1)[3:5])  # two tokens row 1 emits: it stops there, or earlier
    target, draft = pair
    with torch.no_grad():
        expected = target.generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=False, pad_token_id=0,
                                   stop_strings=[text], tokenizer=tok)
        bound = dustin.generate.with_options(tokenizer=tok, **MODES[mode], **EAGER)
        out = target.generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=False, pad_token_id=0,
                              assistant_model=draft, custom_generate=bound, stop_strings=[text])
    assert (expected[1, WIDTH + 5:] == 0).all()  # row 1 stopped at the stop string (or before), then padded
    assert_same(expected, out)


def test_stop_strings_need_a_tokenizer(pair):
    target, draft = pair
    with pytest.raises(ValueError, match=r"with_options\(tokenizer=tok\)"):
        target.generate(IDS, attention_mask=MASK, max_new_tokens=N, assistant_model=draft,
                        custom_generate=dustin.generate, stop_strings=["ab"], **EAGER)


PROCESSORS = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=1),
    "suppress_tokens + bad_words_ids": dict(suppress_tokens=[7, 9], bad_words_ids=[[11], [5, 6]]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PROCESSORS)
def test_prefix_processors(pair, stock, mode, name):
    expected, out = both(pair, mode, **PROCESSORS[name])
    assert_same(expected, out)
    if name != "suppress_tokens + bad_words_ids":
        assert not torch.equal(expected, stock)  # the processor changed the text (here: the draft's proposals too)


@pytest.mark.parametrize("mode", MODES)
def test_sampling_uses_processed_distributions(pair, mode):
    # top_k=1 makes sampling deterministic: it must equal stock greedy under the same penalty, which holds only if
    # both the draft's and the target's distributions are the processed ones (the penalty moves the argmax).
    expected, out = both(pair, mode, do_sample=True, top_k=1, temperature=0.7, repetition_penalty=1.5)
    greedy, _ = both(pair, mode, repetition_penalty=1.5)
    assert_same(greedy, expected)
    assert_same(expected, out)
    target, draft = pair
    with torch.no_grad():  # real sampling, seeded by dustin's generator= option
        runs = [target.generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=True, top_p=0.9,
                                temperature=1.5, eos_token_id=None, pad_token_id=0, assistant_model=draft,
                                custom_generate=dustin.generate, generator=torch.Generator().manual_seed(5),
                                **MODES[mode], **EAGER) for _ in range(2)]
    assert runs[0].shape == (3, WIDTH + N) and torch.equal(runs[0], runs[1])


def test_return_dict_in_generate(pair):
    expected, out = both(pair, "dense", return_dict_in_generate=True)
    assert isinstance(out, GenerateDecoderOnlyOutput) and isinstance(out, dustin.hf_generate.DustinGenerateOutput)
    assert_same(expected.sequences, out.sequences)
    assert out.scores is None and out.logits is None and out.past_key_values is None
    assert sum(out.stats.new_tokens) == int((out.sequences[:, WIDTH:] != 0).sum()) and out.stats.tau >= 1
    with pytest.raises(ValueError, match="does not return output_scores"):
        both(pair, "dense", return_dict_in_generate=True, output_scores=True)


class Collect(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.flatten().tolist())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("mode", ["exact"])  # exact mode streams confirmed tokens only; dense streams all it commits
def test_streamer_gets_what_transformers_streams(pair, mode):
    tok = char_tokenizer()
    ids = IDS[1:2]  # one row (transformers' streamers take one)
    streams = {}
    for name in ("stock", "dustin"):
        collect, text = Collect(), TextIteratorStreamer(tok, skip_prompt=True)
        custom = dustin.generate if name == "dustin" else None
        for streamer in (collect, text):
            target, draft = pair
            extra = dict(assistant_model=draft, custom_generate=custom, **MODES[mode], **EAGER) if custom else {}
            with torch.no_grad():
                target.generate(ids, max_new_tokens=N, do_sample=False, streamer=streamer, **extra)
        streams[name] = (collect, "".join(text))
    (stock_collect, stock_text), (collect, text) = streams["stock"], streams["dustin"]
    assert collect.puts[0] == stock_collect.puts[0] == ids[0].tolist()  # the prompt, once
    assert sum(collect.puts[1:], []) == sum(stock_collect.puts[1:], [])  # the same tokens, in chunks
    assert collect.ended == stock_collect.ended == 1
    assert text == stock_text and text


def test_second_call_compiles_nothing_and_reuses_the_caches(pair):
    target, draft = pair
    custom = dustin.generate.with_options(mode="exact", budget=16, n_sink=2, window=4, exact_every=4, **EAGER)
    kwargs = dict(attention_mask=MASK, max_new_tokens=N, do_sample=False, pad_token_id=0, assistant_model=draft,
                  custom_generate=custom, return_dict_in_generate=True)
    with torch.no_grad():
        first = target.generate(IDS, **kwargs)
        models, graphs = len(dustin.generate.cached(target)), captures(target)
        second = target.generate(IDS, **kwargs)
        third = target.generate(IDS, **{**kwargs, "repetition_penalty": 1.2})  # processors change no graph
    assert graphs > 0 and captures(target) == graphs and len(dustin.generate.cached(target)) == models
    assert torch.equal(first.sequences, second.sequences)
    assert second.stats.prefill_passes == 0 and third.stats.prefill_passes == 0  # the prompt's KV cache is reused


def test_options(pair):
    target, draft = pair
    bound = dustin.generate.with_options(**MODES["exact"], backend="eager", gamma=2)
    assert repr(bound).startswith("dustin.generate.with_options(mode='exact', budget=16")
    with torch.no_grad():  # a keyword of the call beats the bound default; draft= works without assistant_model
        out = target.generate(IDS, attention_mask=MASK, max_new_tokens=N, do_sample=False, pad_token_id=0,
                              custom_generate=bound, draft=draft, gamma=3, return_dict_in_generate=True)
    assert all(m.config.gamma == 3 for m in dustin.generate.cached(target)) and out.stats.draft_passes
    assert dustin.hf_generate._config(bound.with_options(dustin_max_length=256).options).max_length == 256
    params = inspect.signature(dustin.generate).parameters
    assert set(CONFIG_OPTIONS) | {"profile", "draft", "stop_strings"} <= set(params)
    assert len(CONFIG_OPTIONS) == len(field_names()) and "max_length" not in params  # transformers' own
    assert not set(OPTIONS) & set(GenerationConfig().__dict__) - {"stop_strings"}  # would be swallowed otherwise
    with pytest.raises(TypeError, match="dustin_max_length"):
        dustin.generate.with_options(max_length=64)
    with pytest.raises(ValueError, match="budget"):
        dustin.generate.with_options(budget=0)
    with pytest.raises(ValueError, match="needs a draft model"):
        target.generate(IDS, max_new_tokens=2, custom_generate=dustin.generate, **EAGER)
    with pytest.raises(ValueError, match="differ"):
        target.generate(IDS, max_new_tokens=2, assistant_model=draft, custom_generate=dustin.generate,
                        draft=tiny_pair(seed=1)[1], **EAGER)


class Custom(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores


REFUSED = {
    "guidance_scale": (dict(guidance_scale=1.5), "UnbatchedClassifierFreeGuidanceLogitsProcessor"),
    "max_time": (dict(max_time=60.0), r"MaxTimeCriteria \(from max_time"),
    "custom processor": (dict(logits_processor=LogitsProcessorList([Custom()])), "cannot apply Custom"),
    "num_beams": (dict(num_beams=2), "num_beams=2"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_settings_are_refused_by_name(pair, name):
    kwargs, message = REFUSED[name]
    target, draft = pair
    with pytest.raises(ValueError, match=message), torch.no_grad():
        target.generate(IDS, attention_mask=MASK, max_new_tokens=4, assistant_model=draft,
                        custom_generate=dustin.generate, **EAGER, **kwargs)
