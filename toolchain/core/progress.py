"""Progress for long work: a rich bar on a terminal, plain lines otherwise (CI logs)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """One plain status line on stderr (stdout is for results and --print-recipe)."""
    print(message, file=sys.stderr, flush=True)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track as rich_track

        yield from rich_track(
            items,
            total=total,
            description=description,
            console=Console(stderr=True),
            transient=True,
        )
        return
    log(f"{description}: {total} steps")
    yield from items
