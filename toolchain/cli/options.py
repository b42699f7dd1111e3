"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.core.errors import InvalidInput

Out = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Output directory (written atomically).", rich_help_panel="Output"
    ),
]
PrintRecipe = Annotated[
    bool,
    typer.Option(
        "--print-recipe",
        help="Print the equivalent recipe TOML and exit.",
        rich_help_panel="Output",
    ),
]
Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="Target: see `edgesmith targets` (default ort-cpu).",
        rich_help_panel="Target",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="Intra-op threads (default: one per physical core).",
        rich_help_panel="Target",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="safetensors weights for a package.module:factory.",
        rich_help_panel="Input",
    ),
]
# A package.module:factory source without EDGESMITH_SPEC declares its inputs with these (every
# command that takes a factory: export, distill, prune ...).
InputDecls = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="Input of a factory model: NAME:DIMS[:DTYPE], e.g. x:1x1x8x8.",
        rich_help_panel="Input",
    ),
]
DynamicAxes = Annotated[
    list[str] | None,
    typer.Option(
        "--dynamic",
        help="Dynamic axes of a factory input: NAME:AXIS[,AXIS], e.g. x:0.",
        rich_help_panel="Input",
    ),
]
Task = Annotated[
    str | None,
    typer.Option(
        "--task", help="Hugging Face task (default: from config.json).", rich_help_panel="Input"
    ),
]
Metric = Annotated[
    list[str] | None,
    typer.Option(
        "--metric",
        help="Gated metric (repeatable): accuracy, agreement, cosine, max_abs_diff.",
        rich_help_panel="Accuracy gate",
    ),
]
MaxDrop = Annotated[
    list[str] | None,
    typer.Option(
        "--max-drop",
        help="Budget: 0.01, or METRIC=VALUE (fractions: 0.005 = 0.5 points).",
        rich_help_panel="Accuracy gate",
    ),
]
GateOutput = Annotated[
    str | None,
    typer.Option("--output", help="Gate this output only.", rich_help_panel="Accuracy gate"),
]


def parse_budget(items: list[str] | None) -> float | dict[str, float] | None:
    """--max-drop 0.01 (every gated metric) or --max-drop accuracy=0.005 (repeatable); None
    when not given (the config's default applies)."""
    if not items:
        return None
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            raise InvalidInput(f"--max-drop '{item}': expected a number or METRIC=NUMBER") from None
        if not sep and len(items) == 1:
            return v
        out[name or "default"] = v
    return out


def int_list(flag: str, text: str | None) -> list[int] | None:
    """A list option's value as every command writes lists: integers joined by commas."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidInput(
            f"{flag} '{text}': expected integers joined by commas, e.g. 1,8"
        ) from None
