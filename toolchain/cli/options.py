"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgesmith.toolchain.core.errors import InvalidInput

Out = Annotated[Path, typer.Option("--out", "-o", help="Output directory (written atomically).")]
PrintRecipe = Annotated[
    bool, typer.Option("--print-recipe", help="Print the equivalent recipe TOML and exit.")
]
Target = Annotated[
    str | None,
    typer.Option("--target", "-t", help="Target: see `edgesmith targets` (default ort-cpu)."),
]
Threads = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads (default: one per physical core).")
]
Weights = Annotated[
    Path | None, typer.Option("--weights", help="safetensors weights for a package.module:factory.")
]
# A package.module:factory source without EDGESMITH_SPEC declares its inputs with these (every
# command that takes a factory: export, distill, prune ...).
InputDecls = Annotated[
    list[str] | None,
    typer.Option("--input", help="Input of a factory model: NAME:DIMS[:DTYPE], e.g. x:1x1x8x8."),
]
DynamicAxes = Annotated[
    list[str] | None,
    typer.Option("--dynamic", help="Dynamic axes of a factory input: NAME:AXIS[,AXIS], e.g. x:0."),
]
Task = Annotated[
    str | None, typer.Option("--task", help="Hugging Face task (default: from config.json).")
]
Metric = Annotated[
    list[str] | None,
    typer.Option(
        "--metric", help="Gated metric (repeatable): accuracy, agreement, cosine, max_abs_diff."
    ),
]
MaxDrop = Annotated[
    list[str] | None,
    typer.Option(
        "--max-drop", help="Budget: 0.01, or METRIC=VALUE (fractions: 0.005 = 0.5 points)."
    ),
]
GateOutput = Annotated[str | None, typer.Option("--output", help="Gate this output only.")]


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
