"""The `edgesmith` command: thin wiring of one module per command over the library."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Annotated

import typer
from typer.core import TyperGroup

from edgesmith.toolchain.cli import _errors, inspect, run, targets
from edgesmith.toolchain.cli._errors import INTERRUPTED, INTERRUPTED_LINE
from edgesmith.toolchain.core.registry import load_object
from edgesmith.toolchain.core.stage import Stage, stages


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        print(f"edgesmith {metadata.version('edgesmith')}")
        raise typer.Exit(0)


class _Group(TyperGroup):
    """The root command: `--debug` is taken anywhere before `--` (`edgesmith export --debug
    ...` as well as `edgesmith --debug export ...`), and without it third-party warnings
    (torch's FutureWarnings, onnxruntime's notes) are not printed."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        asked = "--debug" in args[:end]
        env = os.environ.get("EDGESMITH_DEBUG", "") not in ("", "0")
        _errors.debug["on"] = asked or env
        if asked:
            args = [a for i, a in enumerate(args) if i >= end or a != "--debug"]
        if not _errors.debug["on"]:
            warnings.filterwarnings("ignore")
        return super().parse_args(ctx, args)

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """A usage error (an unknown option, a value of the wrong type or outside its
        choices, a missing argument) is one line on stderr, exit 2, like every other bad
        input: `edgesmith: error: prune: invalid value for '--method': ...`."""
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # click's ClickException, which typer vendors
            usage = e.exit_code == 2 and hasattr(e, "ctx")
            if not usage or type(e).__name__ == "NoArgsIsHelpError":  # `edgesmith prune`: help
                e.show()
                sys.exit(2 if e.exit_code == 1 else e.exit_code)  # a bad file: bad input
            where = e.ctx.command_path if e.ctx is not None else "edgesmith"
            message = " ".join(e.format_message().replace("Value error, ", "").split())
            message = message[:1].lower() + message[1:].rstrip(".")
            command = where.removeprefix("edgesmith").strip()
            print(f"edgesmith: error: {command + ': ' if command else ''}{message} (see "
                  f"'{where} --help')", file=sys.stderr)  # fmt: skip
            sys.exit(e.exit_code)
        except typer.Abort:
            print(INTERRUPTED_LINE, file=sys.stderr)
            sys.exit(INTERRUPTED)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show tracebacks and warnings; anywhere on the line (also EDGESMITH_DEBUG=1).",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Exit codes: 0 ok, 1 accuracy gate or check failed, 2 bad input, 3 target unavailable,
    70 internal error (a bug in edgesmith), 130 interrupted."""
    _errors.debug["on"] = _errors.debug["on"] or debug  # _Group.parse_args set it first


# Commands that are not stages; every stage's command comes from its registration.
TOOL_COMMANDS = {"run": run.command, "targets": targets.command, "inspect": inspect.command}
TOOL_EXAMPLES = {
    "run": "edgesmith run recipes/digits.toml",
    "targets": "edgesmith targets --options trt-gpu",
    "inspect": "edgesmith inspect build/engine",
}
EXIT_CODES = (
    "Exit codes: 0 ok, 1 accuracy gate or check failed (the report is written), 2 bad input, "
    "3 target unavailable here, 70 internal error, 130 interrupted."
)


def _epilog(example: str) -> str:
    return (f"Example: {example}\n\n" if example else "") + EXIT_CODES


def stage_command(stage: Stage):
    """The stage's own command, or one derived from its config (cli/derived.py)."""
    if stage.command is None:
        from edgesmith.toolchain.cli.derived import derived_command

        return derived_command(stage)
    return load_object(stage.command) if isinstance(stage.command, str) else stage.command


def make_app() -> typer.Typer:
    """The CLI as the registry stands now: one command per registered stage, then the tools."""
    cli = typer.Typer(
        cls=_Group,
        name="edgesmith",
        help="From a fine-tuned model to a validated edge engine, with an accuracy gate.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    cli.callback()(_root)
    for kind, stage in stages().items():
        # a stage's own command documents itself (its docstring); a derived one has stage.help
        helptext = None if stage.command else stage.help or None
        epilog = _epilog(stage.example)
        cli.command(kind, help=helptext, epilog=epilog)(_errors.guarded(stage_command(stage)))
    for name, fn in TOOL_COMMANDS.items():
        cli.command(name, epilog=_epilog(TOOL_EXAMPLES[name]))(_errors.guarded(fn))
    return cli


app = make_app()


def main(argv: list[str] | None = None) -> None:
    """The console script.

    When the command is done the process ends with os._exit: the interpreter's teardown of
    the ~3,300 modules that torch, transformers and optimum load takes about a second and does
    nothing for us (every output is already complete: atomic directories, closed files).
    Logging and the standard streams are flushed first. An exception that escapes the
    command (none should: `guarded` turns them into exit codes) still ends Python's way.
    """
    try:
        app(args=argv, prog_name="edgesmith")
        code: object = 0
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # outside a command (its own handler says the same)
        print(INTERRUPTED_LINE, file=sys.stderr)
        code = INTERRUPTED
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
