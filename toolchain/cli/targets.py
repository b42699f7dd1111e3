from __future__ import annotations

from typing import Annotated

import typer

from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.registry import TARGETS, get_target, load_object


def command(
    options: Annotated[
        str | None,
        typer.Option(
            "--options",
            metavar="NAME",
            help="List this target's build options (--option KEY=VALUE).",
        ),
    ] = None,
) -> None:
    """Each target, and whether it can build here (or why not); --options NAME: its options."""
    if options is not None:
        print_options(options)
        return
    for name in TARGETS:
        why = get_target(name).unavailable_reason()
        typer.echo(f"{name:10s} {'available' if why is None else 'unavailable: ' + why}")


def print_options(name: str) -> None:
    """The target's declared build options as a table: key, type, default, help."""
    if name not in TARGETS:
        raise InvalidInput(f"unknown target '{name}'; available: {', '.join(TARGETS)}")
    declared = getattr(load_object(TARGETS[name]), "OPTIONS", ())
    if not declared:
        typer.echo(f"{name} takes no build options")
        return
    rows = [("key", "type", "default", "help")]
    rows += [(o.name, o.type_label(), o.default_label(), o.help) for o in declared]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:3], widths, strict=True)]
        typer.echo("  ".join([*cells, row[3]]))
