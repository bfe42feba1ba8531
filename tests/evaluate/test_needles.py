"""Needle prompts: the needle at the right depth in tokens, the question at the end, the scoring (no models)."""

from __future__ import annotations

import pytest

from dustin.needles import DEPTHS, FACTS, SENTENCE_SEARCH, correct, fact_for, frame, needle_prompt
from dustin.tiny import char_tokenizer, synthetic_text

CONTEXT = 1000
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return tokenizer(synthetic_text(3 * CONTEXT, seed=4), add_special_tokens=False).input_ids


@pytest.mark.parametrize("depth", DEPTHS)
def test_the_needle_sits_at_its_depth_after_a_sentence_end(tokenizer, haystack, depth):
    fact = FACTS[0]
    p = needle_prompt(tokenizer, haystack, fact, depth, CONTEXT)
    assert len(p.ids) == CONTEXT
    ids = p.ids.tolist()
    assert tokenizer.decode(ids[p.needle_start : p.needle_start + p.needle_length]) == f" {fact.statement} "
    offset = p.needle_start - p.haystack_start  # haystack tokens before the needle
    target = round(depth * p.haystack_length)
    assert target - SENTENCE_SEARCH < offset <= target
    assert tokenizer.decode(ids[p.needle_start - 1 : p.needle_start]) == "."  # synthetic sentences end with "."
    # the haystack is the text's first tokens, in order, around the needle
    hay = ids[p.haystack_start : p.needle_start] + ids[p.needle_start + p.needle_length : p.question_start]
    assert hay == haystack[: p.haystack_length]


def test_the_question_ends_the_plain_text_prompt(tokenizer, haystack):
    fact = FACTS[3]
    p = needle_prompt(tokenizer, haystack, fact, 0.5, CONTEXT)
    tail = tokenizer.decode(p.ids[p.question_start :].tolist())
    assert tail.endswith(f"Question: {fact.question}\nAnswer:")
    # plain text: what the tokenizer itself puts first (this one adds nothing), then the haystack
    assert p.ids[: p.haystack_start].tolist() == tokenizer("").input_ids == []


def test_a_chat_template_frames_the_document_and_the_question(haystack):
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT
    before, after = frame(tokenizer, FACTS[1].question)
    assert tokenizer.decode(before) == "<s>user: " and before[0] == tokenizer.bos_token_id  # a special token
    p = needle_prompt(tokenizer, haystack, FACTS[1], 0.9, CONTEXT)
    text = tokenizer.decode(p.ids.tolist())
    assert text.startswith("<s>user: ") and text.endswith(f"Question: {FACTS[1].question}\nassistant: ")
    assert p.haystack_start == len(before)
    assert tokenizer.decode(p.ids[p.question_start :].tolist()).startswith("\n\nAnswer the question")


def test_facts_are_distinct_within_a_round_and_deterministic():
    for r in range(3):
        facts = [fact_for(i, r) for i in range(len(DEPTHS))]
        assert len(set(facts)) == len(DEPTHS)
        assert facts == [fact_for(i, r) for i in range(len(DEPTHS))]
    assert {f.answer for f in FACTS} == {f.answer for f in (fact_for(i, r) for r in range(8) for i in range(5))}
    assert all(f.answer.lower() in f.statement.lower() and f.answer.lower() not in f.question.lower()
               for f in FACTS)


def test_scoring_is_a_case_insensitive_substring():
    assert correct("The secret ingredient is Cardamom.", "cardamom")
    assert correct("admiral biscuit!", "Admiral Biscuit")
    assert not correct("cinnamon", "cardamom")


def test_refusals(tokenizer, haystack):
    with pytest.raises(ValueError, match="use a context of at least"):
        needle_prompt(tokenizer, haystack, FACTS[0], 0.5, 200)
    with pytest.raises(ValueError, match="the haystack has 300 tokens"):
        needle_prompt(tokenizer, haystack[:300], FACTS[0], 0.5, CONTEXT)
    with pytest.raises(ValueError, match="depth must be in"):
        needle_prompt(tokenizer, haystack, FACTS[0], 1.5, CONTEXT)
