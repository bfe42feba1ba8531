"""``pipeline("text-generation", model=target, assistant_model=draft, tokenizer=tok)`` with
``custom_generate=dustin.generate``: chats in, chats out, equal to the stock pipeline's greedy output.

The tokenizer is a byte-level BPE trained here with the ``tokenizers`` library on a synthetic text (nothing is
downloaded), with a small chat template; the pair is ``dustin.tiny.tiny_pair`` sized to its vocabulary.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import PreTrainedTokenizerFast, pipeline

import dustin
from dustin.tiny import TINY_CONFIG, synthetic_text, tiny_pair

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHATS = [
    [{"role": "user", "content": "The old bridge near the river"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "A quiet morning"}],
]
OPTIONS = {"dense": dict(mode="dense"), "exact": dict(mode="exact", budget=16, n_sink=2, window=4, exact_every=4)}
GENERATE = dict(max_new_tokens=8, do_sample=False, batch_size=2)
pytestmark = pytest.mark.filterwarnings("ignore:dustin. no calibration profile")


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([synthetic_text(3000, seed=s) for s in range(4)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


@pytest.fixture(scope="module")
def setup():
    tok = bpe_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<pad>", "<s>", "</s>")}
    config = dict(TINY_CONFIG, vocab_size=len(tok), pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                  eos_token_id=ids["</s>"])
    target, draft = tiny_pair(config=config)
    stock = pipeline("text-generation", model=target, tokenizer=tok)
    with torch.no_grad():
        expected = stock(CHATS, **GENERATE)
    return tok, target, draft, expected


def test_the_tokenizer_and_template_are_real(setup):
    tok, target, _, expected = setup
    text = tok.apply_chat_template(CHATS[1], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|system|>Answer") and text.endswith("<|assistant|>")
    assert len(tok("The old bridge near the river").input_ids) < 20  # merges, not bytes
    assert [len(e[0]["generated_text"]) for e in expected] == [2, 3]  # each chat + the assistant's answer
    assert all(e[0]["generated_text"][-1]["role"] == "assistant" for e in expected)


@pytest.mark.parametrize("mode", OPTIONS)
def test_call_time_custom_generate_equals_the_stock_pipeline(setup, mode):
    tok, target, draft, expected = setup
    pipe = pipeline("text-generation", model=target, assistant_model=draft, tokenizer=tok)
    with torch.no_grad():
        out = pipe(CHATS, custom_generate=dustin.generate, backend="eager", gamma=3, **OPTIONS[mode], **GENERATE)
    assert out == expected


def test_pipeline_level_custom_generate_and_stop_sequence(setup):
    tok, target, draft, expected = setup
    custom = dustin.generate.with_options(backend="eager", gamma=3, **OPTIONS["exact"])
    pipe = pipeline("text-generation", model=target, assistant_model=draft, tokenizer=tok, custom_generate=custom)
    with torch.no_grad():
        assert pipe(CHATS, **GENERATE) == expected
        # stop_sequence: the pipeline passes stop_strings with its tokenizer, which transformers drops before
        # calling dustin.generate; dustin finds the pipeline's. Stop inside the second chat's answer.
        answer = expected[1][0]["generated_text"][-1]["content"]
        stop = re.search(r"[a-z]{2}", answer[1:]).group()  # plain letters: a random model also emits odd bytes
        stock = pipeline("text-generation", model=target, tokenizer=tok)
        stopped = stock(CHATS, stop_sequence=stop, **GENERATE)
        assert len(stopped[1][0]["generated_text"][-1]["content"]) < len(answer)
        assert pipe(CHATS, stop_sequence=stop, **GENERATE) == stopped
