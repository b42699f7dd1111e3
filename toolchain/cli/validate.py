from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolchain.cli._run import execute, one_stage, path_str
from toolchain.cli.options import GateOutput, MaxDrop, Metric, PrintRecipe, Task, Weights
from toolchain.core.errors import InvalidInput


def parse_budget(items: list[str]) -> float | dict[str, float]:
    """--max-drop 0.01 (every gated metric) or --max-drop accuracy=0.005 (repeatable)."""
    if not items:
        return 0.01
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


def command(
    candidate: Annotated[
        str, typer.Argument(help="Model to validate: engine dir, .onnx, or a source.")
    ],
    reference: Annotated[
        str, typer.Option(help="The fp32 original: PyTorch source, .onnx or engine dir.")
    ],
    data: Annotated[
        Path, typer.Option(help=".npz, a folder of .npy, or text lines (+ tokenizer).")
    ],
    metric: Metric = None,
    max_drop: MaxDrop = None,
    output: GateOutput = None,
    reference_weights: Annotated[
        Path | None, typer.Option(help="safetensors for a factory reference.")
    ] = None,
    weights: Weights = None,
    task: Task = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Tokenizer folder for text data.")] = None,
    seq_len: Annotated[int, typer.Option(help="Token sequence length for text data.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Samples per inference call.")] = 32,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")] = Path(
        "build/validate"
    ),
    print_recipe: PrintRecipe = False,
) -> None:
    """Validate a candidate against the fp32 original on real data; exit 1 if over budget."""
    recipe = one_stage(
        {"model": candidate, "weights": path_str(weights), "task": task},
        {
            "kind": "validate",
            "out": str(out),
            "data": str(data),
            "reference": reference,
            "reference_weights": path_str(reference_weights),
            "metrics": metric or [],
            "max_drop": parse_budget(max_drop or []),
            "output": output,
            "tokenizer": path_str(tokenizer),
            "seq_len": seq_len,
            "batch_size": batch_size,
            "limit": limit,
        },
        "validate",
    )
    execute(recipe, print_recipe)
