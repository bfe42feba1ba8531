"""Command-line flags built from ``DustinConfig``'s fields: one source for every default, help text and choice.

A flag left out of the command line is left out of the overrides, so ``DustinConfig`` supplies the default.
Used by the CLI and by ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import DustinConfig

# Fields a command line does not set: the CLI loads models in its own --dtype; strict is for library users.
NOT_FLAGS = ("dtype", "strict")


def add_config_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add ``--<field>`` for each ``DustinConfig`` field in ``names`` (default: every field but ``NOT_FLAGS``)."""
    group = parser.add_argument_group("configuration (DustinConfig fields; defaults in brackets)")
    hints = typing.get_type_hints(DustinConfig)
    for f in dataclasses.fields(DustinConfig):
        if (names is None and f.name in NOT_FLAGS) or (names is not None and f.name not in names):
            continue
        kind = hints[f.name]
        options = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} [{f.default}]")
        if f.metadata.get("choices"):
            options["choices"] = f.metadata["choices"]
        if f.metadata.get("choices") and type(None) in typing.get_args(kind):  # a word, or "none" for None
            words = (*f.metadata["choices"], "none")
            del options["choices"]  # checked by the type below, so that an error lists "none", not None
            options.update(type=_word_or_none(words), metavar="{%s}" % ",".join(words))
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(nargs="*", type=int, metavar="N")
        elif set(typing.get_args(kind)) == {int, str}:  # an integer or a word (gamma: 4 or auto)
            options["type"] = _int_or_word
        else:
            options["type"] = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
        group.add_argument("--" + f.name.replace("_", "-"), **options)


def config_overrides(args: argparse.Namespace) -> dict:
    """The ``DustinConfig`` fields given on the command line."""
    fields = {f.name for f in dataclasses.fields(DustinConfig)} - set(NOT_FLAGS)
    return {name: value for name, value in vars(args).items() if name in fields}


def _int_or_word(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _word_or_none(words: tuple[str, ...]):
    """An argparse type: one of ``words``, with ``"none"`` read as ``None``."""
    def parse(text: str) -> str | None:
        if text not in words:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(words)})")
        return None if text == "none" else text
    parse.__name__ = "choice"  # what argparse names in its message if parse raises something else
    return parse
