from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.cli._run import execute, one_stage
from edgesmith.toolchain.cli.options import Out, PrintRecipe, Target, Threads
from edgesmith.toolchain.core.errors import InvalidInput


def parse_options(items: list[str]) -> dict:
    """--option key=value (value parsed as int, float or true/false when it looks like one; a
    list or table as a TOML inline value, as a recipe would write it: ["a", "b"], {k = 1})."""
    import tomllib

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--option '{item}': expected KEY=VALUE")
        if value.lstrip()[:1] in ("[", "{"):
            try:
                out[key] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError as e:
                raise InvalidInput(f"--option {key}: not a TOML list or table ({e})") from None
            continue
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def command(
    model: Annotated[Path, typer.Argument(help="The ONNX model (or a directory an export wrote).")],
    out: Out,
    target: Target = None,
    opt_level: Annotated[
        str | None, typer.Option(help="ort-cpu offline level: disable, basic, extended, all.")
    ] = None,
    ort_format: Annotated[
        bool, typer.Option("--ort-format", help="Also save .ort + required operators config.")
    ] = False,
    threads: Threads = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Target option KEY=VALUE.")
    ] = None,
    print_recipe: PrintRecipe = False,
) -> None:
    """Build an engine for a target from an ONNX model."""
    options = parse_options(option or [])
    if opt_level:
        options["opt_level"] = opt_level
    if ort_format:
        options["ort_format"] = True
    if threads is not None:
        options["threads"] = threads
    recipe = one_stage(
        {"model": str(model)},
        {"kind": "build", "out": str(out), "target": target, "options": options},
        "build",
    )
    execute(recipe, print_recipe)
