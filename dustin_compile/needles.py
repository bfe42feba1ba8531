"""Needle retrieval: an invented fact planted at a depth of a long haystack, a question about it at the end.

The facts are made up here (no model saw them in training), so a correct answer must come from the prompt. A prompt
is ``frame prefix + haystack with the needle + frame suffix`` in tokens, exactly ``context`` long: the haystack is
cut so that the whole fits. The needle goes at ``depth`` (a share of the haystack's tokens), moved back to just
after the nearest sentence end within ``SENTENCE_SEARCH`` tokens, so that it does not split a sentence. The frame is
the tokenizer's chat template when it has one (the question in the user turn after the document, and the
generation prompt), else plain text ``Question: ... Answer:``. An answer is correct when it contains the expected
string, case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
SENTENCE_SEARCH = 64  # tokens searched back from the depth for a sentence end
MARK = "@@DOCUMENT@@"  # stands for the document while the chat template is rendered
INSTRUCTION = "Answer the question using the document above, in a few words."


@dataclass(frozen=True)
class Fact:
    statement: str
    question: str
    answer: str


FACTS = (
    Fact("The secret ingredient in Grandma Lindqvist's plum cake is cardamom.",
         "What is the secret ingredient in Grandma Lindqvist's plum cake?", "cardamom"),
    Fact("The lighthouse keeper of Varnholm Island named his parrot Admiral Biscuit.",
         "What did the lighthouse keeper of Varnholm Island name his parrot?", "Admiral Biscuit"),
    Fact("The password to the archive of the Tessaly Observatory is tangerine-47.",
         "What is the password to the archive of the Tessaly Observatory?", "tangerine-47"),
    Fact("Professor Okonkwo keeps her spare keys inside a hollowed-out copy of Moby-Dick.",
         "Inside which book does Professor Okonkwo keep her spare keys?", "Moby-Dick"),
    Fact("The Quillbury chess tournament is always held in the month of October.",
         "In which month is the Quillbury chess tournament held?", "October"),
    Fact("Captain Marisol Vega painted her sailboat turquoise.",
         "What colour did Captain Marisol Vega paint her sailboat?", "turquoise"),
    Fact("The village of Elderbrook elects its mayor by counting acorns.",
         "What does the village of Elderbrook count to elect its mayor?", "acorns"),
    Fact("Doctor Hamid Rahimi's favourite cheese is smoked gouda.",
         "What is Doctor Hamid Rahimi's favourite cheese?", "gouda"),
)


def fact_for(depth_index: int, round_index: int) -> Fact:
    """Deterministic and distinct within a round: round r, depth i takes fact (i + r * len(DEPTHS)) mod len(FACTS)."""
    return FACTS[(depth_index + round_index * len(DEPTHS)) % len(FACTS)]


@dataclass
class NeedlePrompt:
    ids: torch.Tensor  # [context] token ids
    fact: Fact
    depth: float
    needle_start: int  # token index of the needle in ``ids``
    needle_length: int
    haystack_start: int  # token index where the haystack begins (after the frame prefix)
    haystack_length: int  # haystack tokens, needle excluded
    question_start: int  # token index where the frame suffix (with the question) begins


def frame(tokenizer, question: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the document: the chat template's user turn, or plain text."""
    if getattr(tokenizer, "chat_template", None):
        content = f"{MARK}\n\n{INSTRUCTION}\nQuestion: {question}"
        text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
        if text.count(MARK) != 1:
            raise ValueError("the tokenizer's chat template does not keep the user message as it is; cannot place "
                             "the document in it")
        before, after = text.split(MARK)
        prefix = tokenizer(before, add_special_tokens=False).input_ids  # the template wrote its special tokens
    else:
        after = f"\n\n{INSTRUCTION}\nQuestion: {question}\nAnswer:"
        prefix = tokenizer("", add_special_tokens=True).input_ids  # the tokenizer's own bos, if it adds one
    return list(prefix), list(tokenizer(after, add_special_tokens=False).input_ids)


def insertion_point(tokenizer, haystack: list[int], depth: float) -> int:
    """Index in ``haystack`` where a needle at ``depth`` goes: after the last sentence end at or before
    ``round(depth * len)`` within ``SENTENCE_SEARCH`` tokens, else exactly there."""
    at = round(depth * len(haystack))
    for j in range(at, max(at - SENTENCE_SEARCH, 0), -1):
        if tokenizer.decode(haystack[j - 1 : j]).rstrip().endswith((".", "!", "?")):
            return j
    return at


def needle_prompt(tokenizer, haystack: list[int], fact: Fact, depth: float, context: int) -> NeedlePrompt:
    """The ``context``-token prompt of ``fact`` planted at ``depth`` of (a prefix of) ``haystack`` token ids."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    prefix, suffix = frame(tokenizer, fact.question)
    needle = list(tokenizer(" " + fact.statement + " ", add_special_tokens=False).input_ids)
    room = context - len(prefix) - len(suffix) - len(needle)
    if room < 2 * SENTENCE_SEARCH:
        raise ValueError(f"context {context} leaves {room} haystack tokens around the needle and the question; use "
                         f"a context of at least {context - room + 2 * SENTENCE_SEARCH}")
    if len(haystack) < room:
        raise ValueError(f"the haystack has {len(haystack)} tokens, the context {context} needs {room}: use a longer "
                         "haystack text or a smaller context")
    hay = list(haystack[:room])
    at = insertion_point(tokenizer, hay, depth)
    ids = prefix + hay[:at] + needle + hay[at:] + suffix
    return NeedlePrompt(torch.tensor(ids), fact, depth, len(prefix) + at, len(needle), len(prefix), room,
                        len(ids) - len(suffix))


def correct(answer: str, expected: str) -> bool:
    return expected.lower() in answer.lower()
