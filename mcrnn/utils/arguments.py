"""argparse types and actions that the sub-commands share (``mcrnn train|eval|bench|...``).

Every list option takes its items space- or comma-separated and may be repeated:
``--lengths 512 1024``, ``--lengths 512,1024`` and ``--lengths 512 --lengths 1024`` are the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def list_of(item: Callable[[str], Any], choices: Sequence[str] | None = None) -> Callable[[str], list]:
    """argparse type of a list option (use with :class:`ExtendList`): comma-separated items, each
    converted by ``item`` and, when ``choices`` is given, one of them."""

    def parse(text: str) -> list:
        values = [item(part) for part in text.split(",") if part]
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one item, got {text!r}")
        if choices is not None:
            for value in values:
                if value not in choices:
                    raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(choices)}")
        return values

    return parse


class ExtendList(argparse.Action):
    """``nargs="+"`` list option whose items may also be comma-separated; repeating it extends the list,
    and the first use replaces the default."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        for value in values:
            items.extend(value)
        setattr(namespace, self.dest, items)
