from __future__ import annotations

import typer

from toolchain.core.registry import TARGETS, get_target


def command() -> None:
    """Each target, and whether it can build here (or why not)."""
    for name in TARGETS:
        why = get_target(name).unavailable_reason()
        typer.echo(f"{name:10s} {'available' if why is None else 'unavailable: ' + why}")
