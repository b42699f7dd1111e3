"""The `edgesmith` command: thin wiring of one module per command over the library."""

from __future__ import annotations

from typing import Annotated

import typer

from toolchain.cli import (
    _errors,
    bench,
    build,
    distill,
    export,
    inspect,
    quantize,
    run,
    targets,
    validate,
)

app = typer.Typer(
    name="edgesmith",
    help="From a fine-tuned model to a validated edge engine, with an accuracy gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Exit codes: 0 ok, 1 accuracy gate or check failed, 2 bad input, 3 target unavailable."""
    _errors.debug["on"] = debug


COMMANDS = {
    "export": export.command,
    "distill": distill.command,
    "quantize": quantize.command,
    "build": build.command,
    "validate": validate.command,
    "bench": bench.command,
    "run": run.command,
    "targets": targets.command,
    "inspect": inspect.command,
}
for _name, _fn in COMMANDS.items():
    app.command(_name)(_errors.guarded(_fn))


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="edgesmith")
