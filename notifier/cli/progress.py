"""Progress of long CLI work: a bar on a terminal, nothing when piped or with ``--json``.

A person at a terminal sees how far ``notifier publish``, ``notifier replay
dead-letters`` and ``notifier purge`` have come; a script (stdout not a terminal, or
``--json``) gets no bar, only the command's summary at the end. The bar goes to stderr,
so even on a terminal stdout holds nothing but the results.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


def on_terminal(as_json: bool = False) -> bool:
    """Whether to draw progress: stdout is a terminal and JSON was not asked for."""
    return not as_json and sys.stdout.isatty()


@contextlib.contextmanager
def progress(total: int, label: str, *, as_json: bool = False) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for work of ``total`` steps: moves a bar on a terminal, else does
    nothing."""
    if total <= 0 or not on_terminal(as_json):
        yield lambda _done: None
        return
    with click.progressbar(
        length=total, label=label, file=sys.stderr, show_pos=True, show_eta=True
    ) as bar:
        yield bar.update


def counted(items: list[T], label: str, *, as_json: bool = False) -> Iterator[T]:
    """``items``, advancing a bar as each is taken (for work that consumes an iterable)."""
    with progress(len(items), label, as_json=as_json) as advance:
        for item in items:
            yield item
            advance(1)
