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
        if kind is bool:
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
